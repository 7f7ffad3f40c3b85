//! Limit ids name counters in memory and in Redis keys, so they are pinned: a
//! refactor that changes the id of an unchanged definition would silently reset
//! every counter of every deployment. If a test here fails, the change resets
//! counters; make it only on purpose, with a new encoding version.

use std::path::Path;

use tollgate::config::load_str;
use tollgate::snapshot::Snapshot;

/// One rule per limit, named by the test, on one upstream.
fn load(rules: &[(&str, &str)]) -> Snapshot {
    let mut text = String::from("upstreams: { api: { servers: [\"127.0.0.1:9\"] } }\nrules:\n");
    for (i, (rule, body)) in rules.iter().enumerate() {
        text.push_str(&format!(
            "  - {{ name: {rule}, match: {{ path: /r{i} }}, upstream: api, {body} }}\n"
        ));
    }
    load_str(&text, Path::new("ids.yaml")).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// The id of the only limit of `rule` (its message limit when it has no
/// request limit).
fn id_of(runtime: &Snapshot, rule: &str) -> u64 {
    let rule = runtime.rules.iter().find(|r| r.name == rule).unwrap();
    rule.all_limits().next().unwrap().id.0
}

/// Every algorithm, with and without burst, debt and delay, and every kind of
/// key, composite ones included, with the id each has had since encoding v1
/// (in hex, as Redis keys show it).
const PINNED: &[(&str, &str, u64)] = &[
    (
        "gcra",
        "limits: [{ name: l, key: ip, rate: 100/second }]",
        0xf1ec_dd13_026b_1ee5,
    ),
    (
        "gcra-burst",
        "limits: [{ name: l, key: ip, rate: 10/second, burst: 20 }]",
        0x9edc_6d28_f626_b0b8,
    ),
    (
        "token-bucket",
        "limits: [{ name: l, key: api_key, rate: 100/minute, algorithm: token_bucket }]",
        0x41c5_2031_68d6_3962,
    ),
    (
        "token-bucket-debt",
        "limits: [{ name: l, key: api_key, rate: 100/minute, algorithm: token_bucket, burst: 50, debt: 10 }]",
        0x847f_7832_1232_a62a,
    ),
    (
        "leaky-bucket",
        "limits: [{ name: l, key: ip, rate: 10/second, algorithm: leaky_bucket }]",
        0xe674_4123_378f_6d56,
    ),
    (
        "leaky-bucket-delay",
        "limits: [{ name: l, key: ip, rate: 10/second, algorithm: leaky_bucket, burst: 5, delay: true }]",
        0xba3d_4532_56d7_85b7,
    ),
    (
        "leaky-bucket-no-delay",
        "limits: [{ name: l, key: ip, rate: 10/second, algorithm: leaky_bucket, burst: 5, delay: false }]",
        0x9194_4e85_9523_ef30,
    ),
    (
        "fixed-window",
        "limits: [{ name: l, key: global, rate: 1000/hour, algorithm: fixed_window }]",
        0xf440_c8c8_aaea_0a48,
    ),
    (
        "sliding-log",
        "limits: [{ name: l, key: { header: x-tenant }, rate: 10/minute, algorithm: sliding_window_log }]",
        0xc1b5_f340_282b_5d5a,
    ),
    (
        "sliding-counter",
        "limits: [{ name: l, key: ip, rate: 500/hour, algorithm: sliding_window_counter }]",
        0x5c90_7f21_0214_62e0,
    ),
    (
        "concurrent",
        "limits: [{ name: l, key: ip, concurrent: 5 }]",
        0xdde7_26d3_bb0c_36dc,
    ),
    (
        "composite",
        "limits: [{ name: l, key: [api_key, ip], rate: 100/second }]",
        0xfaeb_e00f_83cd_7ecd,
    ),
    (
        "composite-header",
        "limits: [{ name: l, key: [{ header: x-tenant }, ip, global], rate: 100/minute, algorithm: token_bucket }]",
        0xcdd5_4244_ded3_b18f,
    ),
    (
        "default-name",
        "limits: [{ key: ip, rate: 100/second }]",
        0x862a_89d9_c772_5298,
    ),
    (
        "messages",
        "websocket: { messages: { key: ip, rate: 10/second } }",
        0x5af8_20a3_363c_94ba,
    ),
    (
        "per-connection",
        "websocket: { messages: { key: connection, rate: 10/second } }",
        0x1059_d52a_422c_11bf,
    ),
];

#[test]
fn known_limit_definitions_keep_their_pinned_ids() {
    let rules: Vec<(&str, &str)> = PINNED.iter().map(|(r, body, _)| (*r, *body)).collect();
    let runtime = load(&rules);
    let got: Vec<(&str, u64)> = PINNED
        .iter()
        .map(|(rule, _, _)| (*rule, id_of(&runtime, rule)))
        .collect();
    let pinned: Vec<(&str, u64)> = PINNED.iter().map(|(rule, _, id)| (*rule, *id)).collect();
    assert_eq!(got, pinned);
}

#[test]
fn every_pinned_definition_has_an_id_of_its_own() {
    let mut ids: Vec<u64> = PINNED.iter().map(|(_, _, id)| *id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), PINNED.len());
}

/// The same limit with one field changed: each change gives another id.
#[test]
fn a_change_to_any_encoded_field_gives_a_new_id() {
    let base = "limits: [{ name: l, key: ip, rate: 10/second, algorithm: token_bucket }]";
    let variants = [
        base,
        "limits: [{ name: m, key: ip, rate: 10/second, algorithm: token_bucket }]",
        "limits: [{ name: l, key: api_key, rate: 10/second, algorithm: token_bucket }]",
        "limits: [{ name: l, key: [ip, api_key], rate: 10/second, algorithm: token_bucket }]",
        "limits: [{ name: l, key: [api_key, ip], rate: 10/second, algorithm: token_bucket }]",
        "limits: [{ name: l, key: ip, rate: 11/second, algorithm: token_bucket }]",
        "limits: [{ name: l, key: ip, rate: 10/minute, algorithm: token_bucket }]",
        "limits: [{ name: l, key: ip, rate: 10/second, algorithm: gcra }]",
        "limits: [{ name: l, key: ip, rate: 10/second, algorithm: token_bucket, burst: 12 }]",
        "limits: [{ name: l, key: ip, rate: 10/second, algorithm: token_bucket, debt: 3 }]",
    ];
    let rules: Vec<(String, &str)> = variants
        .iter()
        .enumerate()
        .map(|(i, body)| (format!("v{i}"), *body))
        .collect();
    // The rule name is part of the id too: each variant in its own rule, and
    // the base once more under another rule name.
    let mut all: Vec<(&str, &str)> = rules.iter().map(|(r, b)| (r.as_str(), *b)).collect();
    all.push(("other-rule", base));
    let runtime = load(&all);
    let mut ids: Vec<u64> = all.iter().map(|(r, _)| id_of(&runtime, r)).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), all.len(), "two definitions share an id");
}

/// What the id leaves out: a limit's place among the rules and the other
/// rules.
#[test]
fn reordering_rules_and_editing_other_rules_keeps_the_id() {
    let limit = "limits: [{ name: l, key: ip, rate: 10/second }]";
    let before = load(&[("kept", limit), ("other", "limits: []")]);
    let after = load(&[
        ("other", "limits: [{ name: x, key: ip, rate: 1/second }]"),
        ("new", "limits: []"),
        ("kept", limit),
    ]);
    assert_eq!(id_of(&before, "kept"), id_of(&after, "kept"));
}

/// Settings that change how a limit is applied, not what its counters mean.
#[test]
fn changing_mode_missing_or_cost_keeps_the_id() {
    let before = load(&[("r", "limits: [{ name: l, key: api_key, rate: 10/second }]")]);
    let after = load(&[(
        "r",
        "limits: [{ name: l, key: api_key, rate: 10/second, mode: shadow, missing: skip, cost: 2 }]",
    )]);
    assert_eq!(id_of(&before, "r"), id_of(&after, "r"));
}

/// `burst` is encoded by its effect: writing the default changes nothing.
#[test]
fn writing_the_default_burst_keeps_the_id() {
    let implicit = load(&[("r", "limits: [{ name: l, key: ip, rate: 10/second }]")]);
    let explicit = load(&[(
        "r",
        "limits: [{ name: l, key: ip, rate: 10/second, burst: 10 }]",
    )]);
    assert_eq!(id_of(&implicit, "r"), id_of(&explicit, "r"));
}
