//! The live side of the admin listener: the dashboard page (`GET /`), the
//! figures it charts (`GET /-/stats`) and their once-a-second stream
//! (`GET /-/events`, server-sent events).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use serde_json::{json, Value};

use super::Reply;
use crate::metrics::Outcome;
use crate::state::Shared;

/// The dashboard, embedded in the binary: no files to ship, no CDN.
const DASHBOARD: &str = include_str!("dashboard.html");

/// How often the stream sends the figures.
const EVERY: Duration = Duration::from_secs(1);
/// The longest one stream runs; the page reconnects. Bounds what a
/// forgotten tab holds open.
const STREAM_FOR: Duration = Duration::from_secs(600);

pub(super) fn dashboard() -> Reply {
    super::respond(
        StatusCode::OK,
        "text/html; charset=utf-8",
        DASHBOARD.as_bytes().to_vec(),
    )
}

/// The live figures: requests per rule by outcome (cumulative, the page takes
/// differences), the store's health, the reloads, the bans running.
pub(super) async fn stats(shared: &Shared) -> Value {
    let rt = shared.snapshot.load();
    let rules: Vec<Value> = rt
        .rules
        .iter()
        .map(|rule| {
            let mut counts = json!({ "rule": rule.name });
            let mut other = 0;
            for (outcome, n) in rule.metrics.totals() {
                match outcome {
                    Outcome::Allowed
                    | Outcome::Limited
                    | Outcome::Exempt
                    | Outcome::ShadowLimited => counts[outcome.label()] = n.into(),
                    _ => other += n,
                }
            }
            counts["other"] = other.into();
            counts
        })
        .collect();
    let mut bans = 0;
    for limit in rt.rules.iter().flat_map(|r| r.all_limits()) {
        if limit.ban.is_some() {
            bans += shared
                .limits
                .bans(limit.id, 1_000)
                .await
                .map_or(0, |b| b.len());
        }
    }
    json!({
        "at_ms": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        "generation": rt.source.generation,
        "rules": rules,
        "store": shared.limits.health().await,
        "reloads": shared.reloader.history(),
        "bans": bans,
    })
}

/// Streams the figures every second until the client goes, the gateway
/// stops, or `STREAM_FOR` has passed. The connection is not reused.
pub(super) async fn stream(shared: &Shared, session: &mut ServerSession, shutdown: &ShutdownWatch) {
    session.set_keepalive(None);
    let mut header = match ResponseHeader::build(StatusCode::OK, Some(4)) {
        Ok(header) => header,
        Err(_) => return,
    };
    for (name, value) in [
        (header::CONTENT_TYPE, "text/event-stream"),
        (header::CACHE_CONTROL, "no-store"),
        (header::CONNECTION, "close"),
    ] {
        let _ = header.insert_header(name, HeaderValue::from_static(value));
    }
    if session
        .write_response_header(Box::new(header))
        .await
        .is_err()
    {
        return;
    }
    let deadline = tokio::time::Instant::now() + STREAM_FOR;
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tick.tick().await;
        // Checked each tick (a second at most): a shutdown's grace period is
        // longer, and a watch whose sender is gone must not end the stream.
        if *shutdown.borrow() || tokio::time::Instant::now() >= deadline {
            break;
        }
        let event = format!("data: {}\n\n", stats(shared).await);
        if session
            .write_response_body(Bytes::from(event), false)
            .await
            .is_err()
        {
            return;
        }
    }
    let _ = session.write_response_body(Bytes::new(), true).await;
}
