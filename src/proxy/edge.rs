//! What a public listener is, beyond plain HTTP: a TLS listener (its
//! handshake, under a deadline, before the HTTP handling every listener
//! shares) or a plain-HTTP address that redirects to one.
//!
//! All public listeners are one Pingora service, so one set of threads
//! serves them; an accepted stream's role is found by its local address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{header, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::listeners::tls::Acceptor;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;

use super::connection::TimedStream;
use crate::config::compile::overlaps;
use crate::metrics::{ConnectionClose, ConnectionMetrics};
use crate::route::normalize_host;
use crate::state::Shared;
use crate::tls;

/// What a listener does with the connections it accepts.
pub(crate) enum Role {
    Tls(Acceptor),
    Redirect(Arc<RedirectToHttps>),
}

/// The roles of the listeners that are not plain HTTP, by address.
#[derive(Default)]
pub(crate) struct Roles(Vec<(SocketAddr, Role)>);

impl Roles {
    /// The roles of the TLS listeners the gateway starts with, and of their
    /// redirects.
    pub(crate) fn of(shared: &Shared) -> Result<Self, String> {
        let rt = shared.snapshot.load();
        let mut roles = Vec::new();
        for listener in &rt.server.tls {
            let certs = shared
                .certificates
                .iter()
                .find(|(listen, _)| listen == &listener.listen)
                .map(|(_, certs)| certs.clone())
                .ok_or_else(|| format!("no certificates for {}", listener.listen))?;
            let config = tls::server_config(certs, listener.min_version, &listener.alpn)
                .map_err(|e| format!("server.tls {}: {e}", listener.listen))?;
            roles.push((
                listener.addr,
                Role::Tls(Acceptor::from_server_config(config)),
            ));
            let redirect = Arc::new(RedirectToHttps {
                port: listener.addr.port(),
            });
            for from in &listener.redirect_from {
                roles.push((*from, Role::Redirect(redirect.clone())));
            }
        }
        Ok(Roles(roles))
    }

    /// The role of the listener that accepted `stream`; `None`: plain HTTP.
    pub(crate) fn of_stream(&self, stream: &Stream) -> Option<&Role> {
        if self.0.is_empty() {
            return None;
        }
        let local = stream
            .get_socket_digest()?
            .local_addr()?
            .as_inet()
            .copied()?;
        self.0
            .iter()
            .find(|(addr, _)| addr.port() == local.port() && overlaps(addr.ip(), local.ip()))
            .map(|(_, role)| role)
    }
}

/// Performs the TLS handshake within `deadline`; `None` when it fails or
/// takes too long (counted, and the connection closed).
pub(crate) async fn handshake(
    acceptor: &Acceptor,
    stream: Stream,
    deadline: Duration,
    metrics: &ConnectionMetrics,
) -> Option<Stream> {
    let stream = TimedStream::untimed(stream, metrics.clone());
    match tokio::time::timeout(deadline, acceptor.tls_handshake(stream)).await {
        Ok(Ok(tls)) => Some(Box::new(tls)),
        Ok(Err(e)) => {
            tracing::debug!("TLS handshake failed: {e}");
            metrics.closed(ConnectionClose::HandshakeFailed);
            None
        }
        Err(_) => {
            metrics.closed(ConnectionClose::HandshakeTimeout);
            None
        }
    }
}

/// Answers every request with a permanent redirect (308, which keeps the
/// method and body) to the same host and target on a TLS listener's port.
pub(crate) struct RedirectToHttps {
    port: u16,
}

impl RedirectToHttps {
    /// The `Location` for a request to `host` (a `Host` value) and `target`.
    fn location(&self, host: &[u8], target: &str) -> Option<String> {
        let host = normalize_host(host).ok()?;
        if host.name.is_empty() {
            return None;
        }
        let target = if target.starts_with('/') { target } else { "/" };
        Some(match self.port {
            443 => format!("https://{}{target}", host.name),
            port => format!("https://{}:{port}{target}", host.name),
        })
    }
}

#[async_trait]
impl ServeHttp for RedirectToHttps {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        // The head is in (its deadline is over); the client goes elsewhere
        // next, so the connection ends with this answer.
        super::connection::head_received(session);
        session.set_keepalive(None);
        let req = session.req_header();
        let host = req
            .headers
            .get(header::HOST)
            .map(|h| h.as_bytes())
            .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()))
            .unwrap_or_default();
        let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let (status, location, body) = match self.location(host, target) {
            Some(location) => {
                let body = serde_json::json!({
                    "error": "https_required",
                    "message": "this API is served over HTTPS",
                    "location": location,
                });
                (StatusCode::PERMANENT_REDIRECT, Some(location), body)
            }
            None => (
                StatusCode::BAD_REQUEST,
                None,
                serde_json::json!({
                    "error": "bad_request",
                    "reason": "bad_host",
                    "message": "a redirect to HTTPS needs a valid Host header",
                }),
            ),
        };
        let body = body.to_string().into_bytes();
        let mut response = Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, body.len());
        if let Some(location) = location {
            response = response.header(header::LOCATION, location);
        }
        response.body(body).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redirect_keeps_host_and_target_and_names_the_tls_port() {
        let redirect = RedirectToHttps { port: 8443 };
        assert_eq!(
            redirect
                .location(b"API.example.com:8080", "/v1/x?a=1")
                .as_deref(),
            Some("https://api.example.com:8443/v1/x?a=1")
        );
    }

    #[test]
    fn the_redirect_to_port_443_names_no_port() {
        let redirect = RedirectToHttps { port: 443 };
        assert_eq!(
            redirect.location(b"api.example.com", "/").as_deref(),
            Some("https://api.example.com/")
        );
    }

    #[test]
    fn a_host_that_is_not_a_host_gets_no_redirect() {
        let redirect = RedirectToHttps { port: 443 };
        assert_eq!(redirect.location(b"evil.com/@x", "/"), None);
        assert_eq!(redirect.location(b"", "/"), None);
    }
}
