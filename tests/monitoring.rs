//! The Prometheus alerting rules and the Grafana dashboard in `examples/`
//! parse, and every tollgate metric they name exists on a live gateway's
//! `/metrics` (a renamed metric would otherwise break them silently).

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::{client, eventually, free_port, Gateway, Upstream};

fn example(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `tollgate_...` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("tollgate_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// The metric family a series name belongs to (histograms expose
/// `_bucket`, `_sum` and `_count`).
fn family(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

const CONFIG: &str = "
server:
  listen: [\"{listen}\"]
  admin: \"{admin}\"
  threads: 2
upstreams:
  api: { servers: [\"{upstream}\"] }
  dead: { servers: [\"DEAD\"] }
rules:
  - name: tight
    match: { path: /tight }
    upstream: api
    limits: [ { name: one, key: ip, rate: 1/hour, algorithm: fixed_window } ]
  - name: broken
    match: { path: /broken }
    upstream: dead
";

#[test]
fn the_alerting_rules_and_the_dashboard_parse() {
    let rules: serde_json::Value =
        serde_saphyr::from_str(&example("prometheus-rules.yaml")).unwrap();
    let alerts = rules["groups"][0]["rules"].as_array().unwrap();
    assert!(alerts.len() >= 5);
    for alert in alerts {
        assert!(
            alert["alert"].is_string() && alert["expr"].is_string(),
            "{alert}"
        );
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&example("grafana-dashboard.json")).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels
        .iter()
        .all(|p| p["targets"].as_array().is_some_and(|t| !t.is_empty())));
}

#[tokio::test]
async fn every_metric_the_alerts_and_the_dashboard_use_exists() {
    let upstream = Upstream::start().await;
    let dead: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let yaml = CONFIG.replace("DEAD", &dead.to_string());
    let gw = Gateway::start(&yaml, upstream.addr).await;
    // Traffic that makes the labelled series appear: an admitted and a
    // limited request, an upstream failure, a reload.
    let c = client();
    for path in ["/tight", "/tight", "/broken"] {
        c.get(gw.url(path)).send().await.unwrap();
    }
    gw.rewrite(&format!("{yaml}# edited\n"), upstream.addr);
    eventually(Duration::from_secs(10), "the edit is reloaded", || async {
        gw.metrics().await.contains("tollgate_config_generation 2")
    })
    .await;

    let exposed = gw.metrics().await;
    let used: BTreeSet<String> = metric_names(&example("prometheus-rules.yaml"))
        .into_iter()
        .chain(metric_names(&example("grafana-dashboard.json")))
        .collect();
    assert!(used.len() >= 10, "{used:?}");
    for name in &used {
        let declared = format!("# TYPE {} ", family(name));
        assert!(
            exposed.contains(&declared),
            "{name} is not a metric of tollgate"
        );
    }
}
