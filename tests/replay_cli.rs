//! `tollgate replay` as an operator runs it: the real binary, a candidate
//! config and synthetic JSON access logs in a temporary directory. A bad line
//! is reported with its file and line and skipped; gzip and stdin read like a
//! plain file; several logs merge in time order; `--since`/`--until` keep a
//! window; the report counts the refusals, keys and rule changes a candidate
//! brings; hostile input never panics; an invalid candidate is refused as
//! `tollgate check` refuses it.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

/// The candidate's `server` and `upstreams`: replay binds and connects to
/// nothing, so the addresses only have to parse.
const HEAD: &str = "\
server:
  listen: [\"127.0.0.1:1\"]
  admin: \"127.0.0.1:2\"
upstreams: { api: { servers: [\"127.0.0.1:3\"] } }
";

/// A candidate of [`HEAD`] and `rules` (a YAML `rules:` list).
fn candidate(rules: &str) -> String {
    format!("{HEAD}rules:\n{rules}")
}

/// One catch-all rule `api` with a per-IP limit `per-ip` of `rate`.
fn per_ip(rate: &str) -> String {
    candidate(&format!(
        "  - name: api\n    match: {{ path: \"/**\" }}\n    upstream: api\n    limits: [{{ name: per-ip, key: ip, rate: {rate} }}]\n"
    ))
}

/// `seconds` after 2026-12-01T10:00:00Z, as the access log writes times.
fn at(seconds: u64) -> String {
    let base = humantime::parse_rfc3339("2026-12-01T10:00:00Z").unwrap();
    humantime::format_rfc3339_millis(base + Duration::from_secs(seconds)).to_string()
}

/// A logged request.
struct Line<'a> {
    seconds: u64,
    ip: &'a str,
    path: &'a str,
    /// The rule that served it (`None`: no rule matched).
    rule: Option<&'a str>,
    outcome: &'a str,
    /// The deciding limit's name.
    limit: Option<&'a str>,
}

/// A request to `/x` from `ip` at `seconds`, allowed by `api`'s `per-ip`.
fn allowed(seconds: u64, ip: &str) -> Line<'_> {
    Line {
        seconds,
        ip,
        path: "/x",
        rule: Some("api"),
        outcome: "allowed",
        limit: Some("per-ip"),
    }
}

/// The same request, refused by `api`'s `per-ip`.
fn limited(seconds: u64, ip: &str) -> Line<'_> {
    Line {
        outcome: "limited",
        ..allowed(seconds, ip)
    }
}

impl Line<'_> {
    /// The line as the gateway writes it (zero duration: `time` is when the
    /// store decided; a `decided_at` would say the same).
    fn json(&self) -> String {
        let status = match self.outcome {
            "limited" => 429,
            "no_route" => 404,
            _ => 200,
        };
        let mut line = json!({
            "time": at(self.seconds),
            "decided_at": at(self.seconds),
            "client_ip": self.ip,
            "method": "GET",
            "host": "api.example.com",
            "path": self.path,
            "protocol": "HTTP/1.1",
            "tls": false,
            "status": status,
            "outcome": self.outcome,
            "upstream": "api",
            "bytes_in": 0,
            "bytes_out": 15,
            "duration_ms": 0.0,
        });
        if let Some(rule) = self.rule {
            line["rule"] = json!(rule);
        }
        if let Some(limit) = self.limit {
            let refused = self.outcome == "limited";
            line["limit"] = json!({ "name": limit, "allowed": !refused, "remaining": 0 });
        }
        line.to_string()
    }
}

/// The lines of a log file, each ending in a newline.
fn log(lines: &[Line<'_>]) -> String {
    lines.iter().map(|l| l.json() + "\n").collect()
}

/// What a run of the binary left.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `tollgate replay -c candidate.yaml ARGS` in `dir` with `stdin`, and
/// checks that it did not panic whatever it was given.
fn replay_with_stdin(dir: &Path, args: &[&str], stdin: &[u8]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["replay", "-c", "candidate.yaml"])
        .args(args)
        .current_dir(dir)
        .env_remove("TOLLGATE_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    // Written from a thread: a replay that exits before reading all of stdin
    // must not leave this test waiting on a full pipe.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !run.stderr.contains("panicked"),
        "replay {args:?} panicked: {}",
        run.stderr
    );
    run
}

fn replay(dir: &Path, args: &[&str]) -> Run {
    replay_with_stdin(dir, args, b"")
}

/// `replay ARGS --json`, which must succeed, as JSON.
fn report(dir: &Path, args: &[&str]) -> Value {
    let args: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
    let run = replay(dir, &args);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", run.stdout))
}

/// A temporary directory holding `candidate.yaml` and the files named.
fn setup(config: &str, files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("candidate.yaml"), config).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    dir
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// The row of `report.limits` for `rule`/`limit`.
fn limit_row<'a>(report: &'a Value, rule: &str, limit: &str) -> &'a Value {
    report["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["rule"] == rule && l["limit"] == limit)
        .unwrap_or_else(|| panic!("no limit {rule}/{limit} in {report:#}"))
}

/// The row of `report.rules` for `rule`.
fn rule_row<'a>(report: &'a Value, rule: &str) -> &'a Value {
    report["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == rule)
        .unwrap_or_else(|| panic!("no rule {rule} in {report:#}"))
}

/// Ten requests a second apart from each of three clients, all allowed by
/// `per-ip` at 10/hour.
fn three_clients_ten_requests_each() -> String {
    let ips = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];
    let lines: Vec<Line<'_>> = (0..10)
        .flat_map(|s| ips.iter().map(move |ip| allowed(s, ip)))
        .collect();
    log(&lines)
}

#[test]
fn a_log_replayed_under_the_config_that_wrote_it_changes_nothing() {
    let config = candidate(
        "  - name: api\n    match: { path: \"/**\" }\n    upstream: api\n    exempt: [{ ip: [\"10.9.0.0/16\"] }]\n    limits: [{ name: per-ip, key: ip, rate: 2/hour }]\n",
    );
    let text = log(&[
        allowed(0, "10.0.0.1"),
        allowed(1, "10.0.0.1"),
        limited(2, "10.0.0.1"),
        Line {
            outcome: "exempt",
            limit: None,
            ..allowed(3, "10.9.0.1")
        },
        allowed(4, "10.0.0.2"),
    ]);
    let dir = setup(&config, &[("access.log", text.as_bytes())]);
    let report = report(dir.path(), &["access.log"]);
    assert_eq!(report["requests"], 5, "{report:#}");
    let api = rule_row(&report, "api");
    assert_eq!(api["recorded"], api["candidate"], "{report:#}");
    assert_eq!(
        api["candidate"],
        json!({ "requests": 5, "admitted": 3, "limited": 1, "exempt": 1, "refused": 0 })
    );
    let per_ip = limit_row(&report, "api", "per-ip");
    assert_eq!(per_ip["recorded"]["limited"], 1);
    assert_eq!(per_ip["candidate"]["limited"], 1);
    assert_eq!(report["keys_more_limited"], 0);
    assert_eq!(report["keys_less_limited"], 0);
    assert_eq!(report["route_changes"], json!([]));
    let text = replay(dir.path(), &["access.log"]);
    assert!(
        text.stdout
            .contains("no key is refused more or less often than recorded"),
        "{}",
        text.stdout
    );
}

/// A request refused for its shape (no Host: `bad_request`; a head over
/// `max_header_bytes`: `too_large`) names no rule; no config would route it,
/// and it spends nothing a later request could miss.
#[test]
fn a_request_refused_before_any_rule_spends_nothing_in_replay() {
    for outcome in ["bad_request", "too_large"] {
        let mut text = log(&[Line {
            rule: None,
            outcome,
            limit: None,
            ..allowed(0, "10.0.0.1")
        }]);
        text.push_str(&log(&[allowed(1, "10.0.0.1"), limited(2, "10.0.0.1")]));
        let dir = setup(&per_ip("1/hour"), &[("access.log", text.as_bytes())]);
        let report = report(dir.path(), &["access.log"]);
        let per_ip = limit_row(&report, "api", "per-ip");
        assert_eq!(
            per_ip["recorded"], per_ip["candidate"],
            "{outcome}: {report:#}"
        );
        assert_eq!(report["keys_more_limited"], 0, "{outcome}: {report:#}");
    }
}

#[test]
fn malformed_lines_are_reported_by_file_and_line_and_skipped() {
    let mut text = String::new();
    text += &(allowed(0, "10.0.0.1").json() + "\n");
    text += "this is not JSON\n";
    // No client_ip.
    text += r#"{"time":"2026-12-01T10:00:01.000Z","method":"GET","path":"/x","rule":"api","outcome":"allowed","status":200,"duration_ms":0}"#;
    text += "\n";
    text += &(allowed(2, "10.0.0.2").json() + "\n");
    text += &(allowed(3, "10.0.0.3")
        .json()
        .replace(&at(3), "yesterday at noon")
        + "\n");
    text += &(allowed(4, "10.0.0.4").json() + "\n");
    let dir = setup(&per_ip("10/hour"), &[("access.log", text.as_bytes())]);

    let run = replay(dir.path(), &["access.log"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("replayed 3 requests"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("3 lines could not be read and were skipped"),
        "{}",
        run.stdout
    );
    for line in [2, 3, 5] {
        assert!(
            run.stdout.contains(&format!("access.log:{line}: ")),
            "line {line} is not named: {}",
            run.stdout
        );
    }
    for line in [1, 4, 6] {
        assert!(
            !run.stdout.contains(&format!("access.log:{line}: ")),
            "good line {line} is named: {}",
            run.stdout
        );
    }

    let report = report(dir.path(), &["access.log"]);
    assert_eq!(report["requests"], 3, "{report:#}");
    assert_eq!(report["bad_lines"], 3, "{report:#}");
    let examples = report["bad_line_examples"].as_array().unwrap();
    let places: Vec<(&str, u64)> = examples
        .iter()
        .map(|b| (b["file"].as_str().unwrap(), b["line"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        places,
        [("access.log", 2), ("access.log", 3), ("access.log", 5)]
    );
    let error = |i: usize| examples[i]["error"].as_str().unwrap();
    assert!(error(1).contains("client_ip"), "{}", error(1));
    assert!(error(2).contains("time"), "{}", error(2));
}

#[test]
fn a_rule_the_candidate_does_not_have_is_reported_with_its_requests() {
    let legacy = |s| Line {
        rule: Some("legacy"),
        limit: None,
        ..allowed(s, "10.0.0.1")
    };
    let text = log(&[
        legacy(0),
        allowed(1, "10.0.0.1"),
        legacy(2),
        legacy(3),
        allowed(4, "10.0.0.2"),
    ]);
    let dir = setup(&per_ip("10/hour"), &[("access.log", text.as_bytes())]);

    let run = replay(dir.path(), &["access.log"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("rule \"legacy\" is in the log (3 requests) but not in the candidate"),
        "{}",
        run.stdout
    );

    let report = report(dir.path(), &["access.log"]);
    assert_eq!(
        report["unknown_rules"],
        json!([{ "rule": "legacy", "requests": 3 }]),
        "{report:#}"
    );
}

#[test]
fn a_gzipped_log_gives_the_same_report_as_the_plain_one() {
    let text = three_clients_ten_requests_each();
    let packed = gzip(text.as_bytes());
    let dir = setup(
        &per_ip("5/hour"),
        &[
            ("access.log", text.as_bytes()),
            ("access.log.gz", &packed),
            // Rotated without the suffix: the magic bytes tell gzip.
            ("access.log.1", &packed),
        ],
    );
    let plain = report(dir.path(), &["access.log"]);
    assert_eq!(plain["requests"], 30, "{plain:#}");
    assert_eq!(
        limit_row(&plain, "api", "per-ip")["candidate"]["limited"],
        15
    );
    assert_eq!(report(dir.path(), &["access.log.gz"]), plain);
    assert_eq!(report(dir.path(), &["access.log.1"]), plain);
}

#[test]
fn concatenated_gzip_members_are_read_as_one_log() {
    let text = three_clients_ten_requests_each();
    // Split after the 15th of 30 lines.
    let middle = text.match_indices('\n').nth(14).unwrap().0 + 1;
    let (first, second) = text.split_at(middle);
    let mut packed = gzip(first.as_bytes());
    packed.extend(gzip(second.as_bytes()));
    let dir = setup(
        &per_ip("5/hour"),
        &[("access.log", text.as_bytes()), ("access.log.gz", &packed)],
    );
    assert_eq!(
        report(dir.path(), &["access.log.gz"]),
        report(dir.path(), &["access.log"])
    );
}

#[test]
fn a_dash_reads_the_log_from_stdin() {
    let text = three_clients_ten_requests_each();
    let dir = setup(&per_ip("5/hour"), &[("access.log", text.as_bytes())]);
    let plain = report(dir.path(), &["access.log"]);
    let run = replay_with_stdin(dir.path(), &["-", "--json"], text.as_bytes());
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let piped: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(piped, plain);
    // Gzip on stdin too.
    let run = replay_with_stdin(dir.path(), &["-", "--json"], &gzip(text.as_bytes()));
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let piped: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(piped, plain);
}

#[test]
fn several_logs_are_merged_in_time_order_not_file_order() {
    // One request an hour: 10:00:00 is allowed, 10:00:01 refused, 11:00:01
    // allowed again. In time order the candidate agrees with every recorded
    // outcome. In file order (11:00:01 first) it would allow 11:00:01 and
    // then refuse both earlier requests: 2 refusals where the log has 1.
    let later = log(&[allowed(3601, "10.0.0.1")]);
    let earlier = log(&[allowed(0, "10.0.0.1"), limited(1, "10.0.0.1")]);
    let dir = setup(
        &per_ip("1/hour"),
        &[
            ("later.log", later.as_bytes()),
            ("earlier.log", earlier.as_bytes()),
        ],
    );
    let report = report(dir.path(), &["later.log", "earlier.log"]);
    assert_eq!(report["requests"], 3, "{report:#}");
    assert_eq!(report["from"], at(0), "{report:#}");
    assert_eq!(report["until"], at(3601), "{report:#}");
    let per_ip = limit_row(&report, "api", "per-ip");
    assert_eq!(per_ip["recorded"]["limited"], 1, "{report:#}");
    assert_eq!(per_ip["candidate"]["limited"], 1, "{report:#}");
    assert_eq!(
        rule_row(&report, "api")["candidate"],
        json!({ "requests": 3, "admitted": 2, "limited": 1, "exempt": 0, "refused": 0 })
    );
    assert_eq!(report["keys_more_limited"], 0, "{report:#}");
    assert_eq!(report["keys_less_limited"], 0, "{report:#}");
}

#[test]
fn since_and_until_keep_only_the_window_and_count_the_rest() {
    let text = log(&[
        allowed(0, "10.0.0.1"),
        allowed(3600, "10.0.0.2"),
        allowed(5400, "10.0.0.3"),
        allowed(7200, "10.0.0.4"),
        allowed(10800, "10.0.0.5"),
    ]);
    let dir = setup(&per_ip("10/hour"), &[("access.log", text.as_bytes())]);
    // From 11:00 (a date and time in UTC) up to, not including, 12:00.
    let window = [
        "access.log",
        "--since",
        "2026-12-01 11:00:00",
        "--until",
        "2026-12-01T12:00:00Z",
    ];
    let report = report(dir.path(), &window);
    assert_eq!(report["requests"], 2, "{report:#}");
    assert_eq!(report["outside_window"], 3, "{report:#}");
    assert_eq!(report["from"], at(3600));
    assert_eq!(report["until"], at(5400));
    assert_eq!(report["bad_lines"], 0);

    let run = replay(dir.path(), &window);
    assert!(
        run.stdout.contains("3 lines outside --since/--until"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_window_time_that_is_not_a_time_is_refused() {
    let text = log(&[allowed(0, "10.0.0.1")]);
    let dir = setup(&per_ip("10/hour"), &[("access.log", text.as_bytes())]);
    let run = replay(dir.path(), &["access.log", "--since", "last tuesday"]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("--since"), "{}", run.stderr);
    assert!(!run.stdout.contains("replayed"), "{}", run.stdout);
}

#[test]
fn halving_a_limit_reports_the_extra_refusals_per_key() {
    let text = three_clients_ten_requests_each();
    let dir = setup(&per_ip("5/hour"), &[("access.log", text.as_bytes())]);
    let report = report(dir.path(), &["access.log", "--show-keys"]);
    let per_ip = limit_row(&report, "api", "per-ip");
    assert_eq!(per_ip["recorded"]["limited"], 0, "{report:#}");
    assert_eq!(per_ip["candidate"]["limited"], 15, "{report:#}");
    assert_eq!(
        rule_row(&report, "api")["candidate"],
        json!({ "requests": 30, "admitted": 15, "limited": 15, "exempt": 0, "refused": 0 })
    );
    assert_eq!(report["keys_more_limited"], 3, "{report:#}");
    assert_eq!(report["keys_less_limited"], 0, "{report:#}");
    assert_eq!(report["no_longer_limited"], json!([]));
    let newly = report["newly_limited"].as_array().unwrap();
    let mut keys: Vec<&str> = newly.iter().map(|k| k["key"].as_str().unwrap()).collect();
    keys.sort();
    assert_eq!(keys, ["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
    for key in newly {
        assert_eq!(key["rule"], "api");
        assert_eq!(key["limit"], "per-ip");
        assert_eq!(key["recorded_limited"], 0);
        assert_eq!(key["candidate_limited"], 5);
    }
}

#[test]
fn changed_keys_are_digests_unless_show_keys_is_given() {
    let text = three_clients_ten_requests_each();
    let dir = setup(&per_ip("5/hour"), &[("access.log", text.as_bytes())]);
    let report = report(dir.path(), &["access.log"]);
    let newly = report["newly_limited"].as_array().unwrap();
    assert_eq!(newly.len(), 3, "{report:#}");
    for key in newly {
        let key = key["key"].as_str().unwrap();
        assert!(
            key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit()),
            "not a digest: {key}"
        );
    }
    let run = replay(dir.path(), &["access.log"]);
    assert!(!run.stdout.contains("10.0.0."), "{}", run.stdout);
    let run = replay(dir.path(), &["access.log", "--show-keys"]);
    for ip in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
        assert!(run.stdout.contains(ip), "{ip} not shown: {}", run.stdout);
    }
}

#[test]
fn top_bounds_the_keys_listed_but_not_their_count() {
    let text = three_clients_ten_requests_each();
    let dir = setup(&per_ip("5/hour"), &[("access.log", text.as_bytes())]);
    let report = report(dir.path(), &["access.log", "--top", "1"]);
    assert_eq!(report["keys_more_limited"], 3, "{report:#}");
    assert_eq!(report["newly_limited"].as_array().unwrap().len(), 1);
}

#[test]
fn a_rule_added_in_front_shows_the_requests_it_takes_over() {
    let config = candidate(
        "  - name: vehicles\n    match: { path: \"/vehicles/**\" }\n    upstream: api\n  - name: api\n    match: { path: \"/**\" }\n    upstream: api\n    limits: [{ name: per-ip, key: ip, rate: 10/hour }]\n",
    );
    let vehicle = |s| Line {
        path: "/vehicles/1",
        ..allowed(s, "10.0.0.1")
    };
    let text = log(&[
        vehicle(0),
        allowed(1, "10.0.0.1"),
        vehicle(2),
        vehicle(3),
        allowed(4, "10.0.0.1"),
        // The recorded config had no rule for it.
        Line {
            path: "/vehicles/2",
            rule: None,
            outcome: "no_route",
            limit: None,
            ..allowed(5, "10.0.0.1")
        },
    ]);
    let dir = setup(&config, &[("access.log", text.as_bytes())]);
    let report = report(dir.path(), &["access.log"]);
    assert_eq!(
        report["route_changes"],
        json!([
            { "from": "api", "to": "vehicles", "requests": 3 },
            { "from": null, "to": "vehicles", "requests": 1 },
        ]),
        "{report:#}"
    );
    assert_eq!(rule_row(&report, "vehicles")["candidate"]["admitted"], 4);
    assert_eq!(rule_row(&report, "api")["recorded"]["requests"], 5);
    assert_eq!(rule_row(&report, "api")["candidate"]["requests"], 2);

    let run = replay(dir.path(), &["access.log"]);
    assert!(
        run.stdout.contains("requests whose rule changes"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("api -> vehicles"), "{}", run.stdout);
    assert!(
        run.stdout.contains("(no rule) -> vehicles"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_megabyte_line_is_skipped_or_replayed_without_a_panic() {
    let mut text = String::new();
    // A megabyte of nothing JSON.
    text += &"x".repeat(1 << 20);
    text += "\n";
    // A megabyte path and a megabyte host in otherwise good lines.
    let long_path = format!("/{}", "a".repeat(1 << 20));
    text += &(Line {
        path: &long_path,
        ..allowed(0, "10.0.0.1")
    }
    .json()
        + "\n");
    text += &(allowed(1, "10.0.0.1")
        .json()
        .replace("api.example.com", &"h".repeat(1 << 20))
        + "\n");
    // A megabyte of nesting.
    text += &"[".repeat(1 << 20);
    text += "\n";
    text += &(allowed(2, "10.0.0.2").json() + "\n");
    let dir = setup(&per_ip("10/hour"), &[("access.log", text.as_bytes())]);
    let report = report(dir.path(), &["access.log"]);
    assert_eq!(report["bad_lines"], 2, "{report:#}");
    let lines: Vec<u64> = report["bad_line_examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [1, 4]);
    assert_eq!(report["requests"], 3, "{report:#}");
    // The error does not echo the megabyte back.
    let run = replay(dir.path(), &["access.log"]);
    assert!(run.stdout.len() < 64 * 1024, "{} bytes", run.stdout.len());
}

/// `n` bytes of deterministic noise (no two runs differ).
fn noise(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 56) as u8
        })
        .collect()
}

#[test]
fn binary_garbage_is_bad_lines_not_a_panic() {
    let mut garbage = noise(200_000, 7);
    garbage.extend((0..=255u8).cycle().take(4096));
    garbage.extend(b"\n");
    garbage.extend(allowed(0, "10.0.0.1").json().as_bytes());
    garbage.extend(b"\n");
    let dir = setup(&per_ip("10/hour"), &[("garbage.log", &garbage)]);
    let report = report(dir.path(), &["garbage.log"]);
    assert_eq!(report["requests"], 1, "{report:#}");
    let bad = report["bad_lines"].as_u64().unwrap();
    assert!(bad > 0, "{report:#}");
    let examples = report["bad_line_examples"].as_array().unwrap();
    assert!(
        !examples.is_empty() && examples.len() as u64 <= bad,
        "{report:#}"
    );
    assert!(examples.iter().all(|b| b["file"] == "garbage.log"));
}

#[test]
fn bytes_that_start_like_gzip_but_are_not_are_a_bad_line() {
    let mut fake = vec![0x1f, 0x8b];
    fake.extend(noise(5000, 11));
    // A real gzip cut short: the lines before the cut replay.
    let text = three_clients_ten_requests_each();
    let packed = gzip(text.as_bytes());
    let cut = &packed[..packed.len() - 12];
    let dir = setup(
        &per_ip("10/hour"),
        &[("fake.log.gz", &fake), ("cut.log.gz", cut)],
    );
    let report_fake = report(dir.path(), &["fake.log.gz"]);
    assert_eq!(report_fake["requests"], 0, "{report_fake:#}");
    assert_eq!(report_fake["bad_lines"], 1, "{report_fake:#}");
    assert_eq!(report_fake["bad_line_examples"][0]["file"], "fake.log.gz");

    let report_cut = report(dir.path(), &["cut.log.gz"]);
    assert_eq!(report_cut["bad_lines"], 1, "{report_cut:#}");
    let replayed = report_cut["requests"].as_u64().unwrap();
    assert!((1..30).contains(&replayed), "{report_cut:#}");
}

#[test]
fn a_client_ip_that_is_not_an_ip_is_a_bad_line() {
    let text = log(&[allowed(0, "not-an-ip"), allowed(1, "10.0.0.1")]);
    let dir = setup(&per_ip("10/hour"), &[("access.log", text.as_bytes())]);
    let report = report(dir.path(), &["access.log"]);
    assert_eq!(report["requests"], 1, "{report:#}");
    assert_eq!(report["bad_lines"], 1, "{report:#}");
    assert_eq!(report["bad_line_examples"][0]["line"], 1);
    let error = report["bad_line_examples"][0]["error"].as_str().unwrap();
    assert!(error.contains("IP"), "{error}");
}

#[test]
fn an_empty_log_replays_nothing_and_succeeds() {
    let dir = setup(
        &per_ip("10/hour"),
        &[("empty.log", b""), ("blank.log", b"\n\n  \n")],
    );
    for file in ["empty.log", "blank.log"] {
        let report = report(dir.path(), &[file]);
        assert_eq!(report["requests"], 0, "{report:#}");
        assert_eq!(report["bad_lines"], 0, "{report:#}");
        assert_eq!(report["from"], Value::Null);
        let run = replay(dir.path(), &[file]);
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        assert!(run.stdout.contains("replayed 0 requests"), "{}", run.stdout);
    }
}

#[test]
fn a_log_that_does_not_exist_fails_naming_the_file() {
    let text = log(&[allowed(0, "10.0.0.1")]);
    let dir = setup(&per_ip("10/hour"), &[("access.log", text.as_bytes())]);
    let run = replay(dir.path(), &["access.log", "no-such.log"]);
    assert_ne!(run.code, 0, "{}", run.stdout);
    assert!(run.stderr.contains("no-such.log"), "{}", run.stderr);
    assert!(!run.stdout.contains("replayed"), "{}", run.stdout);
    // A directory is no log either.
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let run = replay(dir.path(), &["logs"]);
    assert_ne!(run.code, 0, "{}", run.stdout);
    assert!(run.stderr.contains("logs"), "{}", run.stderr);
}

#[test]
fn a_time_the_clock_cannot_hold_is_a_bad_line() {
    let far = allowed(0, "10.0.0.1")
        .json()
        .replace(&at(0), "9999-12-31T23:59:59.000Z");
    let text = format!("{far}\n{}\n", allowed(1, "10.0.0.1").json());
    let dir = setup(&per_ip("10/hour"), &[("access.log", text.as_bytes())]);
    let report = report(dir.path(), &["access.log"]);
    assert_eq!(report["bad_lines"], 1, "{report:#}");
    assert_eq!(report["requests"], 1, "{report:#}");
    assert_eq!(report["from"], at(1), "{report:#}");
}

#[test]
fn a_duration_longer_than_the_time_since_1970_is_a_bad_line() {
    let long = allowed(0, "10.0.0.1").json();
    let long = long.replace("\"duration_ms\":", "\"duration_ms\":1e300,\"ignored\":");
    let text = format!("{long}\n{}\n", allowed(1, "10.0.0.1").json());
    let dir = setup(&per_ip("10/hour"), &[("access.log", text.as_bytes())]);
    let report = report(dir.path(), &["access.log"]);
    assert_eq!(report["bad_lines"], 1, "{report:#}");
    assert_eq!(report["from"], at(1), "{report:#}");
}

#[test]
fn an_invalid_candidate_exits_1_listing_each_problem_by_line_and_column() {
    let config = candidate(
        "  - name: api\n    match: { path: \"/**\" }\n    upstream: nowhere\n    limits:\n      - { key: ip, rate: 10/fortnight }\n",
    );
    let text = log(&[allowed(0, "10.0.0.1")]);
    let dir = setup(&config, &[("access.log", text.as_bytes())]);
    let run = replay(dir.path(), &["access.log"]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    // HEAD is 4 lines and `rules:` the 5th.
    assert!(
        run.stdout
            .contains("candidate.yaml:8:5: error: rules[0].upstream"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("candidate.yaml:10:20: error: rules[0].limits[0].rate"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("2 error(s)"), "{}", run.stdout);
    assert!(!run.stdout.contains("replayed"), "{}", run.stdout);
}

#[test]
fn a_key_part_no_line_records_is_named_and_replayed_as_absent() {
    let config = candidate(
        "  - name: api\n    match: { path: \"/**\" }\n    upstream: api\n    limits: [{ name: per-tenant, key: { header: x-tenant }, rate: 1/hour, missing: deny }]\n",
    );
    let text = log(&[allowed(0, "10.0.0.1")]);
    let dir = setup(&config, &[("access.log", text.as_bytes())]);
    let report = report(dir.path(), &["access.log"]);
    assert_eq!(
        report["unrecorded"],
        json!(["header:x-tenant"]),
        "{report:#}"
    );
    assert_eq!(report["rules"][0]["candidate"]["refused"], 1, "{report:#}");
}
