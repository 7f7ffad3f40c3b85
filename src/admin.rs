//! The admin listener: health and metrics, on its own (loopback by default)
//! address, never on the public one.

use std::sync::Arc;

use async_trait::async_trait;
use http::{header, Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::proxy::Shared;

pub struct AdminApp {
    shared: Arc<Shared>,
}

impl AdminApp {
    pub fn new(shared: Arc<Shared>) -> Self {
        AdminApp { shared }
    }

    /// Routes an admin request; plain so it is testable without a socket.
    pub fn handle(&self, method: &Method, path: &str) -> Response<Vec<u8>> {
        match (method, path) {
            (&Method::GET, "/healthz") => json(StatusCode::OK, json!({ "status": "ok" })),
            (&Method::GET, "/metrics") => respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.shared.metrics.encode(),
            ),
            (_, "/healthz" | "/metrics") => json(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({ "error": "method_not_allowed", "message": "use GET" }),
            ),
            _ => json(
                StatusCode::NOT_FOUND,
                json!({ "error": "not_found", "message": "admin endpoints: GET /healthz, GET /metrics" }),
            ),
        }
    }
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

fn json(status: StatusCode, body: serde_json::Value) -> Response<Vec<u8>> {
    respond(status, "application/json", body.to_string().into_bytes())
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        self.handle(&req.method, req.uri.path())
    }
}
