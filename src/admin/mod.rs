//! The admin listener: health, readiness, metrics, reload and the running
//! config, on its own (loopback by default) address, never on the public one.

use std::sync::Arc;

use async_trait::async_trait;
use http::{header, HeaderMap, Method, Response, StatusCode};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use serde_json::{json, Value};

use crate::limit::store::redis::redact_url;
use crate::policy::OnError;
use crate::reload::{self, ReloadOutcome};
use crate::schema::ConfigInput;
use crate::snapshot::Snapshot;
use crate::state::Shared;
use crate::state::{rfc3339, Trigger};

mod limits;
pub(crate) use limits::share_top_keys;
mod live;

/// An admin answer, whole.
type Reply = Response<Vec<u8>>;

pub(crate) struct AdminApp {
    shared: Arc<Shared>,
}

/// Shown instead of secrets in `GET /-/config`.
const REDACTED: &str = "<redacted>";

impl AdminApp {
    pub fn new(shared: Arc<Shared>) -> Self {
        AdminApp { shared }
    }

    /// Routes an admin request; plain (no socket) so it is testable.
    pub(crate) async fn handle(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Response<Vec<u8>> {
        // Probes stay open so orchestrators need no secret, and so does the
        // dashboard page (it holds no data; it asks for the token); the rest
        // may not.
        let open = matches!(path, "/healthz" | "/readyz" | "/");
        if !open && !self.authorized(headers) {
            let mut r = json(
                StatusCode::UNAUTHORIZED,
                json!({ "error": "unauthorized", "message": "this endpoint needs the admin bearer token" }),
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"tollgate-admin\""),
            );
            return r;
        }
        match (method, path) {
            (&Method::GET, "/healthz") => json(StatusCode::OK, json!({ "status": "ok" })),
            (&Method::GET, "/") => live::dashboard(),
            (&Method::GET, "/-/stats") => json(StatusCode::OK, live::stats(&self.shared).await),
            (&Method::GET, "/readyz") => self.ready().await,
            (&Method::GET, "/metrics") => {
                self.shared
                    .metrics
                    .tracked_keys
                    .set(self.shared.limits.memory.len() as i64);
                respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.shared.metrics.encode(),
                )
            }
            (&Method::POST, "/-/reload") => self.reload().await,
            (&Method::GET, "/-/config") => json(StatusCode::OK, self.config()),
            (
                _,
                "/" | "/healthz" | "/readyz" | "/metrics" | "/-/config" | "/-/reload" | "/-/stats"
                | "/-/events",
            ) => method_not_allowed(if path == "/-/reload" { "POST" } else { "GET" }),
            _ => match limits::handle(&self.shared, method, path, query).await {
                Some(reply) => reply,
                None => json(
                    StatusCode::NOT_FOUND,
                    json!({
                        "error": "not_found",
                        "message": "admin endpoints: GET / (dashboard), GET /healthz, GET /readyz, GET /metrics, GET /-/config, POST /-/reload, GET /-/limits, GET /-/bans, GET /-/stats, GET /-/events",
                    }),
                ),
            },
        }
    }

    /// Edits to the file are applied as they happen: the watcher is up and
    /// `server.watch` is on (it is read at each event, so a reload may turn
    /// it either way).
    fn follows_edits(&self) -> bool {
        self.shared.reloader.watching() && self.shared.snapshot.load().server.watch
    }

    fn token(&self) -> Option<String> {
        self.shared
            .admin_token_env
            .clone()
            .or_else(|| self.shared.snapshot.load().server.admin_token.clone())
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = self.token() else {
            return true;
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        constant_time_eq(presented.as_bytes(), token.as_bytes())
    }

    /// Ready when a config is loaded (it always is once serving).
    /// Ready unless Redis is down while `store.on_error: deny` refuses what it
    /// cannot decide: then a balancer should prefer another gateway. With
    /// `allow` or `local` the gateway still serves, and says it is degraded.
    async fn ready(&self) -> Response<Vec<u8>> {
        let store = self.shared.limits.health().await;
        let rt = self.shared.snapshot.load();
        let now = self.shared.clock.now();
        let upstreams_down: Vec<&str> = rt
            .upstreams
            .iter()
            .filter(|u| !u.any_left(&[], now))
            .map(|u| u.name.as_str())
            .collect();
        let refusing = (!store.healthy && rt.store.on_error == OnError::Deny)
            || (rt.server.ready_needs_upstreams && !upstreams_down.is_empty());
        json(
            if refusing {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            },
            json!({
                "status": match (store.healthy && upstreams_down.is_empty(), refusing) {
                    (true, _) => "ready",
                    (false, false) => "degraded",
                    (false, true) => "unavailable",
                },
                "generation": rt.source.generation,
                "watching": self.follows_edits(),
                "signals": self.shared.reloader.watching(),
                "store": store,
                "upstreams_down": upstreams_down,
            }),
        )
    }

    async fn reload(&self) -> Response<Vec<u8>> {
        match reload::reload(&self.shared, Trigger::Admin).await {
            ReloadOutcome::Reloaded(summary) => json(
                StatusCode::OK,
                json!({ "status": "reloaded", "summary": summary }),
            ),
            ReloadOutcome::Unchanged => {
                // The watcher may have applied the edit already: show what it did.
                let rt = self.shared.snapshot.load();
                json(
                    StatusCode::OK,
                    json!({
                        "status": "unchanged",
                        "generation": rt.source.generation,
                        "summary": self.shared.reloader.summary_of(&rt.source.sha256),
                    }),
                )
            }
            ReloadOutcome::Failed(error) => json(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({
                    "status": "failed",
                    "message": "the file was not loaded; the running config is unchanged",
                    "file": error.file,
                    "problems": error.problems,
                }),
            ),
        }
    }

    fn config(&self) -> Value {
        let rt = self.shared.snapshot.load();
        let source = &rt.source;
        json!({
            "generation": source.generation,
            "loaded_at": rfc3339(source.loaded_at),
            "watching": self.follows_edits(),
            "restart_required": reload::restart_required(&self.shared.startup, &rt),
            "file": source.file,
            "sha256": source.sha256,
            "warnings": rt.warnings,
            "last_reload": self.shared.reloader.last(),
            "config": shown(&rt),
        })
    }
}

/// The config in effect as JSON, secrets redacted: the core's sections, and
/// each part's as the part shows it.
fn shown(rt: &Snapshot) -> Value {
    let mut value = redacted(&rt.source.input);
    if let Value::Object(sections) = &mut value {
        for part in &rt.parts {
            sections.insert(part.name.to_string(), part.shown.clone());
        }
    }
    value
}

/// The config as JSON with its secrets replaced: the admin token, the values
/// of header exemptions (which are often shared secrets) and Redis passwords.
pub(crate) fn redacted(input: &ConfigInput) -> Value {
    let mut value = serde_json::to_value(input).unwrap_or(Value::Null);
    if let Some(token) = value.pointer_mut("/server/admin_token") {
        if !token.is_null() {
            *token = Value::from(REDACTED);
        }
    }
    if let Some(Value::String(url)) = value.pointer_mut("/store/redis/url") {
        *url = redact_url(url);
    }
    for list in ["/store/redis/urls", "/store/redis/sentinel/nodes"] {
        if let Some(Value::Array(urls)) = value.pointer_mut(list) {
            for url in urls {
                if let Value::String(u) = url {
                    *u = redact_url(u);
                }
            }
        }
    }
    if let Some(Value::Array(rules)) = value.get_mut("rules") {
        for rule in rules {
            if let Some(Value::Array(exempt)) = rule.get_mut("exempt") {
                for exemption in exempt {
                    if let Some(v) = exemption.pointer_mut("/header/value") {
                        *v = Value::from(REDACTED);
                    }
                }
            }
        }
    }
    value
}

/// Compares secrets without leaking where they differ through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn respond(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Vec<u8>> {
    let length = body.len();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(length));
    response
}

fn method_not_allowed(allow: &'static str) -> Reply {
    let mut r = json(
        StatusCode::METHOD_NOT_ALLOWED,
        json!({ "error": "method_not_allowed", "message": format!("use {allow}") }),
    );
    r.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    r
}

fn json(status: StatusCode, body: Value) -> Response<Vec<u8>> {
    respond(status, "application/json", body.to_string().into_bytes())
}

/// Pingora's `ServeHttp` answers with a whole body; the event stream needs
/// to write as it goes, so the admin app serves HTTP itself: read the head,
/// stream `/-/events`, answer everything else whole.
#[async_trait]
impl HttpServerApp for AdminApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match session.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::debug!("admin: cannot read a request: {e}");
                return None;
            }
        }
        session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        let req = session.req_header();
        let (method, uri, headers) = (req.method.clone(), req.uri.clone(), req.headers.clone());
        if method == Method::GET && uri.path() == "/-/events" && self.authorized(&headers) {
            live::stream(&self.shared, &mut session, shutdown).await;
            return None;
        }
        let answer = self
            .handle(&method, uri.path(), uri.query(), &headers)
            .await;
        let (parts, body) = answer.into_parts();
        let header: pingora::http::ResponseHeader = parts.into();
        if let Err(e) = session.write_response_header(Box::new(header)).await {
            tracing::debug!("admin: cannot write a response: {e}");
            return None;
        }
        if !body.is_empty()
            && session
                .write_response_body(body.into(), true)
                .await
                .is_err()
        {
            return None;
        }
        let persistent = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(stream) => stream.map(|s| ReusedHttpStream::from_reusable_stream(s, persistent)),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
        let input: ConfigInput = serde_saphyr::from_str(
            "
server: { admin_token: hunter2 }
store: { backend: redis, redis: { urls: [\"redis://:s3cret@10.0.0.1:6379\"] } }
upstreams: { a: { servers: [\"127.0.0.1:1\"] } }
rules:
  - name: r
    match: { path: /** }
    upstream: a
    exempt: [{ header: { name: x-key, value: \"internal-secret-*\" } }, { ip: [\"10.0.0.0/8\"] }]
",
        )
        .unwrap();
        let text = redacted(&input).to_string();
        assert!(
            !text.contains("hunter2")
                && !text.contains("internal-secret")
                && !text.contains("s3cret"),
            "{text}"
        );
        assert!(text.contains("10.0.0.0/8"), "{text}");
    }

    #[test]
    fn sentinel_passwords_are_redacted() {
        let input: ConfigInput = serde_saphyr::from_str(
            "
store:
  backend: redis
  redis: { sentinel: { master: main, nodes: [\"redis://:s3cret@10.0.0.1:26379\", \"redis://10.0.0.2:26379\"] } }
upstreams: { a: { servers: [\"127.0.0.1:1\"] } }
rules: [{ name: r, match: { path: /** }, upstream: a }]
",
        )
        .unwrap();
        let text = redacted(&input).to_string();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(
            text.contains("redis://<redacted>@10.0.0.1:26379")
                && text.contains("redis://10.0.0.2:26379"),
            "{text}"
        );
    }

    #[test]
    fn token_comparison_needs_equal_bytes() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
