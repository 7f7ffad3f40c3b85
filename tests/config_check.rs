//! Config validation as operators meet it: every fixture under
//! `tests/config_errors/` is refused with each expected problem named by line,
//! column and YAML path; `tollgate check` exits 0 for good files and 1 for bad.

use std::path::{Path, PathBuf};
use std::process::Command;

use tollgate::check::{explain, Hypothetical};
use tollgate::config::load_str;
use tollgate::schema::Severity;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("tests/config_errors"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "the fixtures are missing");
    files
}

/// `# expect: LINE:COL PATH :: message fragment` lines of a fixture.
fn expectations(text: &str) -> Vec<(u32, u32, String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .map(|e| {
            let (head, fragment) = e.split_once(" :: ").expect("expect line needs ' :: '");
            let (position, path) = head.split_once(' ').expect("expect line needs a path");
            let (line, column) = position
                .split_once(':')
                .expect("expect line needs LINE:COL");
            (
                line.parse().unwrap(),
                column.parse().unwrap(),
                path.to_string(),
                fragment.to_string(),
            )
        })
        .collect()
}

#[test]
fn every_error_fixture_lists_each_problem_with_line_column_and_path() {
    for file in fixtures() {
        let text = std::fs::read_to_string(&file).unwrap();
        let expected = expectations(&text);
        assert!(
            !expected.is_empty(),
            "{} has no expectations",
            file.display()
        );
        let error = load_str(&text, &file).expect_err(&file.display().to_string());
        let errors: Vec<_> = error
            .problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .collect();
        assert_eq!(
            errors.len(),
            expected.len(),
            "{}: {errors:#?}",
            file.display()
        );
        for (line, column, path, fragment) in expected {
            assert!(
                errors.iter().any(|p| p.line == line
                    && p.column == column
                    && p.path == path
                    && p.message.contains(&fragment)),
                "{}: no problem at {line}:{column} {path} containing {fragment:?} in {errors:#?}",
                file.display()
            );
        }
    }
}

#[test]
fn a_rule_after_a_catch_all_is_a_warning_not_an_error() {
    let text = "
upstreams: { api: { servers: [\"127.0.0.1:9\"] } }
rules:
  - { name: all, match: { path: /** }, upstream: api }
  - { name: late, match: { path: /late }, upstream: api }
";
    let loaded = load_str(text, Path::new("t.yaml")).unwrap();
    let warning = &loaded.warnings[0];
    assert_eq!(warning.severity, Severity::Warning);
    assert_eq!(warning.path, "rules[1].match.path");
    assert_eq!(warning.line, 5);
    assert!(
        warning.message.contains("can never match"),
        "{}",
        warning.message
    );
}

#[test]
fn a_literal_rule_covered_by_an_earlier_glob_is_a_warning() {
    let text = "
upstreams: { api: { servers: [\"127.0.0.1:9\"] } }
rules:
  - { name: api, match: { path: \"/api/**\" }, upstream: api }
  - { name: item, match: { path: /api/item }, upstream: api }
  - { name: posts, match: { path: /posts, methods: [POST] }, upstream: api }
  - { name: all-posts, match: { path: /posts }, upstream: api }
";
    let loaded = load_str(text, Path::new("t.yaml")).unwrap();
    let paths: Vec<&str> = loaded.warnings.iter().map(|w| w.path.as_str()).collect();
    // `posts` only takes POST, so `all-posts` still matches other methods.
    assert_eq!(paths, vec!["rules[1].match.path"]);
}

/// A valid file with one catch-all rule, after `head`.
fn with_a_rule(head: &str) -> String {
    format!(
        "{head}\nupstreams: {{ api: {{ servers: [\"127.0.0.1:9\"] }} }}\nrules: [{{ name: all, match: {{ path: \"/**\" }}, upstream: api }}]\n"
    )
}

#[test]
fn trusting_every_peer_is_a_warning() {
    let text = with_a_rule("server: { trusted_proxies: [\"0.0.0.0/0\"] }");
    let loaded = load_str(&text, Path::new("t.yaml")).unwrap();
    assert_eq!(loaded.warnings[0].path, "server.trusted_proxies[0]");
    assert!(loaded.warnings[0].message.contains("every peer is trusted"));
}

fn only_problem(text: &str) -> tollgate::schema::Problem {
    let error = load_str(text, Path::new("t.yaml")).unwrap_err();
    assert_eq!(error.problems.len(), 1, "{error}");
    error.problems[0].clone()
}

/// It read as no token at all: the admin API open to anyone, while
/// `/-/config` showed a redacted token.
#[test]
fn an_empty_admin_token_is_refused() {
    let problem = only_problem(&with_a_rule("server: { admin_token: \"\" }"));
    assert_eq!(problem.path, "server.admin_token");
    assert!(problem.message.contains("let anyone in"), "{problem:?}");
}

/// `run` could not open it; `check` must not pass it.
#[test]
fn an_access_log_path_that_is_a_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let text = with_a_rule("access_log: { format: json, path: logs }");
    let error = load_str(&text, &dir.path().join("t.yaml")).unwrap_err();
    assert_eq!(error.problems.len(), 1, "{error}");
    assert_eq!(error.problems[0].path, "access_log.path");
    assert!(
        error.problems[0].message.contains("is a directory"),
        "{error}"
    );
}

const EMPTY_FILE: &str = "the file is empty";

#[test]
fn an_empty_file_is_refused() {
    assert!(only_problem("").message.contains(EMPTY_FILE));
}

#[test]
fn a_file_of_only_comments_is_refused_like_an_empty_one() {
    let text = "# rules will come later\n\n---\n   # indented comment\n";
    assert_eq!(only_problem(text), only_problem(""));
}

#[test]
fn a_file_without_rules_is_refused() {
    let problem = only_problem("upstreams: { api: { servers: [\"127.0.0.1:9\"] } }\n");
    assert_eq!(problem.path, "rules");
    assert!(
        problem.message.contains("no rules are defined"),
        "{problem:?}"
    );
}

#[test]
fn check_refuses_a_0_byte_file_with_the_message_reload_gives() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.yaml");
    std::fs::write(&path, "").unwrap();
    let (code, stdout, _) = tollgate(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains(&only_problem("").message), "{stdout}");
}

/// 10,000 rules, each with a limit, in block or flow style.
fn ten_thousand_rules(flow: bool) -> String {
    let mut text = String::from("upstreams: { api: { servers: [\"127.0.0.1:9\"] } }\nrules:\n");
    for i in 0..10_000 {
        if flow {
            text.push_str(&format!(
                "  - {{ name: r{i}, match: {{ path: /r/{i}/**, methods: [GET, POST] }}, upstream: api, limits: [{{ name: per-ip, key: ip, rate: 10/s, burst: 20 }}] }}\n"
            ));
        } else {
            text.push_str(&format!(
                "  - name: r{i}\n    match:\n      path: /r/{i}/**\n      methods: [GET, POST]\n    upstream: api\n    limits:\n      - name: per-ip\n        key: ip\n        rate: 10/s\n        burst: 20\n"
            ));
        }
    }
    text
}

/// `tollgate check | head -1`: the summary of 10,000 rules is far more than
/// a pipe holds, and the reader is gone before it is written.
#[test]
fn check_into_a_pipe_closed_early_ends_without_a_panic() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.yaml");
    std::fs::write(&path, ten_thousand_rules(true)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["check", "-c", path.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

#[test]
fn ten_thousand_rules_in_block_style_load() {
    let loaded = load_str(&ten_thousand_rules(false), Path::new("big.yaml"));
    assert_eq!(
        loaded.map(|rt| rt.rules.len()).map_err(|e| e.to_string()),
        Ok(10_000)
    );
}

#[test]
fn ten_thousand_rules_in_flow_style_load() {
    let loaded = load_str(&ten_thousand_rules(true), Path::new("big.yaml"));
    assert_eq!(
        loaded.map(|rt| rt.rules.len()).map_err(|e| e.to_string()),
        Ok(10_000)
    );
}

#[test]
fn an_alias_bomb_is_refused() {
    // One rule, repeated by alias a thousand times: each alias replays the
    // rule's events, so aliases far outnumbering anchors are refused.
    let mut text = String::from(
        "upstreams: { api: { servers: [\"127.0.0.1:9\"] } }\nrules:\n  - &r { name: r, match: { path: /r }, upstream: api, limits: [{ name: l, key: ip, rate: 1/s }] }\n",
    );
    for _ in 0..1000 {
        text.push_str("  - *r\n");
    }
    let problem = only_problem(&text);
    assert!(problem.message.contains("budget"), "{problem:?}");
}

#[test]
fn a_huge_name_is_refused_without_being_echoed() {
    let name = "n".repeat(20 * 1024 * 1024);
    let text = format!(
        "upstreams: {{ api: {{ servers: [\"127.0.0.1:9\"] }} }}\nrules: [{{ name: {name}, match: {{ path: /a }}, upstream: api }}]\n"
    );
    let error = load_str(&text, Path::new("t.yaml")).unwrap_err();
    let shown = error.to_string();
    assert!(
        shown.contains("rules[0].name"),
        "{}",
        &shown[..shown.len().min(2000)]
    );
    assert!(shown.len() < 4096, "{} bytes of problems", shown.len());
}

#[test]
fn a_redis_password_never_appears_in_a_problem() {
    let bad_url = with_a_rule(
        "store: { backend: redis, redis: { url: \"redis://app:hunter2-secret@127.0.0.1:notaport/0\" } }",
    );
    let wrong_type = with_a_rule(
        "store: { backend: redis, redis: { urls: redis://:hunter2-secret@10.0.0.1:6379 } }",
    );
    // Generated passwords hold `/` (base64), and a Unix socket's travels in
    // the query.
    let slash = with_a_rule(
        "store: { backend: redis, redis: { url: \"redis://user:hunter2/x@127.0.0.1:1\" } }",
    );
    let socket = with_a_rule(
        "store: { backend: redis, redis: { url: \"redis+unix:///tmp/r.sock?pass=hunter2&db=x\" } }",
    );
    for text in [bad_url, wrong_type, slash, socket] {
        let error = load_str(&text, Path::new("t.yaml")).unwrap_err();
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}

/// `tollgate check` names the master and its sentinels, without passwords.
#[test]
fn check_accepts_a_master_found_through_sentinel_and_hides_its_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sentinel.yaml");
    let config = with_a_rule(
        "store: { backend: redis, redis: { sentinel: { master: main, nodes: [\"redis://:hunter2-secret@10.0.0.1:26379\", \"redis://10.0.0.2:26379\"] } } }",
    );
    std::fs::write(&path, config).unwrap();
    let (code, stdout, stderr) = tollgate(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains(
            "store: redis master \"main\" by sentinel [redis://<redacted>@10.0.0.1:26379, redis://10.0.0.2:26379]"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("hunter2"), "{stdout}");
}

fn tollgate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .current_dir(repo())
        .env_remove("TOLLGATE_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_default_config_and_prints_its_rules() {
    let (code, stdout, _) = tollgate(&["check"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("config.yaml: ok"), "{stdout}");
    assert!(stdout.contains("post-events"), "{stdout}");
    assert!(stdout.contains("upstreams:"), "{stdout}");
}

#[test]
fn check_accepts_every_example_config() {
    let examples = std::fs::read_dir(repo().join("examples")).unwrap();
    let mut checked = 0;
    for entry in examples {
        let path = entry.unwrap().path();
        // A consumers file is checked through the config that names it;
        // Prometheus rules are not a tollgate config (tests/monitoring.rs).
        let not_a_config = path
            .file_name()
            .is_some_and(|n| n == "consumers.yaml" || n == "prometheus-rules.yaml");
        if path.extension().is_some_and(|e| e == "yaml") && !not_a_config {
            let (code, stdout, stderr) = tollgate(&["check", "-c", path.to_str().unwrap()]);
            assert_eq!(code, 0, "{}: {stdout}{stderr}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 2, "examples/ needs at least two configs");
}

#[test]
fn check_exits_1_listing_every_problem_with_file_line_and_column() {
    let (code, stdout, _) = tollgate(&["check", "-c", "tests/config_errors/several_problems.yaml"]);
    assert_eq!(code, 1);
    let located: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("tests/config_errors/several_problems.yaml:"))
        .filter(|l| l.contains(": error: "))
        .collect();
    assert_eq!(located.len(), 5, "{stdout}");
    assert!(
        stdout.contains("several_problems.yaml:7:5: error: rules[0].upstream:"),
        "{stdout}"
    );
    assert!(stdout.contains("5 error(s)"), "{stdout}");
}

#[test]
fn check_exits_1_for_an_unreadable_file() {
    let (code, stdout, _) = tollgate(&["check", "-c", "no/such/file.yaml"]);
    assert_eq!(code, 1);
    assert!(stdout.contains("cannot read the file"), "{stdout}");
}

/// `/dev/zero` says it holds 0 bytes and never ends: read whole, it would
/// take all memory.
#[test]
fn check_refuses_a_device_at_once() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["check", "-c", "/dev/zero"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("check -c /dev/zero still reading after 10 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("not a regular file"), "{stdout}");
}

#[test]
fn check_reads_the_config_path_from_the_environment() {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("check")
        .env("TOLLGATE_CONFIG", "tests/config_errors/bad_rate.yaml")
        .current_dir(repo())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn explain_names_rule_path_limits_keys_and_exemptions() {
    let (code, stdout, _) = tollgate(&[
        "check",
        "--explain",
        "POST //events/./?x=1",
        "--header",
        "x-api-key: k1",
        "--ip",
        "203.0.113.7",
    ]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("normalized   /events/"), "{stdout}");
    let (_, stdout, _) = tollgate(&[
        "check",
        "--explain",
        "POST /events",
        "-H",
        "x-api-key: k1",
        "--ip",
        "203.0.113.7",
    ]);
    assert!(stdout.contains("rule         post-events"), "{stdout}");
    assert!(
        stdout.contains("per-ip") && stdout.contains("key ip = 203.0.113.7"),
        "{stdout}"
    );
    assert!(stdout.contains("key api_key = \"k1\""), "{stdout}");
    assert!(stdout.contains("exemption    none fires"), "{stdout}");
}

#[test]
fn explain_reports_a_firing_exemption() {
    let (_, stdout, _) = tollgate(&["check", "--explain", "POST /events", "--ip", "10.1.2.3"]);
    assert!(
        stdout.contains("exemption    ip in [10.0.0.0/8]: no limits apply"),
        "{stdout}"
    );
}

#[test]
fn explain_reports_paths_that_would_be_refused() {
    let (code, stdout, _) = tollgate(&["check", "--explain", "GET /a/%2Fb"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("result       400 bad_request"), "{stdout}");
}

const HOST_RULES: &str = "
upstreams: { api: { servers: [\"127.0.0.1:9\"] } }
rules:
  - name: billing
    match: { path: /**, host: api.example.com }
    upstream: api
    limits: [{ name: billing, key: ip, rate: 1/minute }]
  - { name: rest, match: { path: /** }, upstream: api }
";

async fn explain_with_host(host: &str) -> String {
    let rt = load_str(HOST_RULES, Path::new("t.yaml")).unwrap();
    let header = format!("host: {host}");
    let req = Hypothetical::parse("GET /x", &[header], "192.0.2.1".parse().unwrap()).unwrap();
    explain(&rt, &req).await
}

#[tokio::test]
async fn explain_matches_host_rules_on_the_normalized_host() {
    let out = explain_with_host("API.example.com.:8080").await;
    assert!(out.contains("rule         billing"), "{out}");
    assert!(
        out.contains("host         api.example.com:8080 (matched; forwarded upstream)"),
        "{out}"
    );
}

#[tokio::test]
async fn explain_takes_the_host_of_an_absolute_form_target_like_the_gateway() {
    let rt = load_str(HOST_RULES, Path::new("t.yaml")).unwrap();
    let req = Hypothetical::parse(
        "GET http://api.example.com/x",
        &[],
        "192.0.2.1".parse().unwrap(),
    )
    .unwrap();
    let out = explain(&rt, &req).await;
    assert!(out.contains("rule         billing"), "{out}");
}

#[tokio::test]
async fn a_host_pattern_with_a_trailing_dot_matches_like_the_name_without_it() {
    let text = HOST_RULES.replace("host: api.example.com", "host: API.example.com.");
    let rt = load_str(&text, Path::new("t.yaml")).unwrap();
    let header = ["host: api.example.com".to_string()];
    let req = Hypothetical::parse("GET /x", &header, "192.0.2.1".parse().unwrap()).unwrap();
    let out = explain(&rt, &req).await;
    assert!(out.contains("rule         billing"), "{out}");
}

#[tokio::test]
async fn explain_reports_hosts_that_would_be_refused() {
    let out = explain_with_host("api.example.com..").await;
    assert!(out.contains("result       400 bad_request"), "{out}");
    assert!(!out.contains("rule "), "{out}");
}

#[tokio::test]
async fn explain_names_no_rule_for_a_request_refused_for_its_shape() {
    let rt = load_str(HOST_RULES, Path::new("t.yaml")).unwrap();
    let cookie = format!("cookie: c={}", "x".repeat(70_000));
    let too_large = Hypothetical::parse("GET /x", &[cookie], "192.0.2.1".parse().unwrap()).unwrap();
    let lower_case = Hypothetical::parse("get /x", &[], "192.0.2.1".parse().unwrap()).unwrap();
    for (req, result) in [
        (too_large, "result       431 header_too_large"),
        (lower_case, "result       400 bad_request"),
    ] {
        let out = explain(&rt, &req).await;
        assert!(out.contains(result), "{out}");
        assert!(!out.contains("rule "), "{out}");
        assert!(!out.contains("limit "), "{out}");
    }
}

#[tokio::test]
async fn explain_refuses_a_repeated_host_like_the_gateway() {
    let rt = load_str(HOST_RULES, Path::new("t.yaml")).unwrap();
    let headers = ["host: elsewhere.org".into(), "host: api.example.com".into()];
    let req = Hypothetical::parse("GET /x", &headers, "192.0.2.1".parse().unwrap()).unwrap();
    let out = explain(&rt, &req).await;
    assert!(
        out.contains("result       400 bad_request: the request carries more than one Host"),
        "{out}"
    );
}

#[test]
fn explain_with_a_malformed_request_is_a_usage_error() {
    let (code, _, stderr) = tollgate(&["check", "--explain", "/events"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--explain takes"), "{stderr}");
}

#[test]
fn version_is_printed() {
    let (code, stdout, _) = tollgate(&["--version"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("tollgate "), "{stdout}");
}

#[test]
fn the_container_config_matches_the_schema() {
    // Its upstream is a compose service name that only resolves inside
    // compose, so only the shape is checked here.
    let text = std::fs::read_to_string(repo().join("docker/config.yaml")).unwrap();
    serde_saphyr::from_str::<tollgate::schema::ConfigInput>(&text).unwrap();
}

#[test]
fn explain_shows_the_consumer_and_plan_of_an_api_key_or_a_token() {
    let explain = |flag: &str, value: &str| {
        let (code, stdout, stderr) = tollgate(&[
            "check",
            "-c",
            "examples/plans.yaml",
            "--explain",
            "GET /vehicles",
            flag,
            value,
        ]);
        assert_eq!(code, 0, "{stdout}{stderr}");
        stdout
    };
    let by_key = explain("--api-key", "pro-key-1");
    assert!(by_key.contains("consumer     acme (plan pro)"), "{by_key}");
    assert!(by_key.contains("pro.per-consumer"), "{by_key}");
    let unknown = explain("--api-key", "nobody");
    assert!(unknown.contains("401 unknown_key"), "{unknown}");
    let bad_token = explain("--token", "eyJhbGciOiJub25lIn0.e30.");
    assert!(bad_token.contains("algorithm_not_allowed"), "{bad_token}");
}
