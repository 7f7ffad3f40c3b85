//! The demo's HTTP API: post events, read the latest positions, the map page.

use std::sync::Arc;

use axum::body::to_bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::schema::{self, FieldError, VehicleEvent};
use super::{ws, Demo};

/// Largest body of one event.
const MAX_EVENT_BODY: usize = 16 * 1024;
/// Largest body of a batch (500 events of ordinary size fit easily).
const MAX_BATCH_BODY: usize = 1024 * 1024;

const MAP_PAGE: &str = include_str!("map.html");

pub(crate) fn router(demo: Arc<Demo>) -> Router {
    Router::new()
        .route("/", get(map_page))
        .route("/healthz", get(health))
        .route("/events", post(post_event))
        .route("/events/batch", post(post_batch))
        .route("/vehicles", get(list_vehicles))
        .route("/vehicles/{id}", get(one_vehicle))
        .route("/ws/vehicles", get(ws::upgrade))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(demo)
}

pub(super) fn problem(status: StatusCode, error: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "error": error, "message": message.into() })),
    )
        .into_response()
}

async fn not_found() -> Response {
    problem(StatusCode::NOT_FOUND, "not_found", "no such demo endpoint")
}

async fn method_not_allowed() -> Response {
    problem(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this demo endpoint does not take that method",
    )
}

async fn map_page() -> Html<&'static str> {
    Html(MAP_PAGE)
}

async fn health(State(demo): State<Arc<Demo>>) -> Json<Value> {
    Json(json!({ "status": "ok", "bus": demo.bus.name(), "subscribed": demo.bus.connected() }))
}

/// Reads a JSON body: 415 for another content type, 413 when too large, 400
/// when it is not JSON. The 415 and 413 leave the body unread, so they close
/// the connection.
async fn json_body(request: Request, limit: usize) -> Result<Value, Response> {
    let is_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(closing(problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the event as application/json",
        )));
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_large = || {
        closing(problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is over {limit} bytes"),
        ))
    };
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let bytes = to_bytes(request.into_body(), limit)
        .await
        .map_err(|_| too_large())?;
    serde_json::from_slice(&bytes).map_err(|e| {
        problem(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not valid JSON: {e}"),
        )
    })
}

/// A refusal sent with the request's body unread: the connection cannot
/// carry another request, and it says `Connection: close` before it closes,
/// so that a proxy keeping connections (the gateway) does not send the next
/// request, maybe a POST it may not retry, into the close.
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn invalid(errors: Vec<FieldError>) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({ "error": "validation_failed", "errors": errors })),
    )
        .into_response()
}

async fn accept(demo: &Demo, events: Vec<VehicleEvent>, answer: Value) -> Response {
    let count = events.len();
    match demo.bus.publish(demo, events).await {
        Ok(()) => {
            demo.metrics.accepted(count);
            (StatusCode::ACCEPTED, Json(answer)).into_response()
        }
        Err(e) => {
            demo.metrics.rejected(count);
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "bus_unavailable",
                e.to_string(),
            )
        }
    }
}

async fn post_event(State(demo): State<Arc<Demo>>, request: Request) -> Response {
    let body = match json_body(request, MAX_EVENT_BODY).await {
        Ok(v) => v,
        Err(r) => {
            demo.metrics.rejected(1);
            return r;
        }
    };
    match schema::validate_event(
        &body,
        "",
        DateTime::<Utc>::from(std::time::SystemTime::now()),
    ) {
        Ok(event) => accept(&demo, vec![event], json!({ "status": "received" })).await,
        Err(errors) => {
            demo.metrics.rejected(1);
            invalid(errors)
        }
    }
}

async fn post_batch(State(demo): State<Arc<Demo>>, request: Request) -> Response {
    let body = match json_body(request, MAX_BATCH_BODY).await {
        Ok(v) => v,
        Err(r) => {
            demo.metrics.rejected(1);
            return r;
        }
    };
    match schema::validate_batch(&body, DateTime::<Utc>::from(std::time::SystemTime::now())) {
        Ok(events) => {
            let answer = json!({ "status": "received", "count": events.len() });
            accept(&demo, events, answer).await
        }
        Err(errors) => {
            demo.metrics.rejected(body.as_array().map_or(1, Vec::len));
            invalid(errors)
        }
    }
}

async fn list_vehicles(State(demo): State<Arc<Demo>>) -> Json<Value> {
    Json(json!({ "vehicles": demo.all_latest() }))
}

async fn one_vehicle(
    State(demo): State<Arc<Demo>>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let Path(id) = match id {
        Ok(id) => id,
        Err(rejection) => {
            return problem(StatusCode::BAD_REQUEST, "bad_path", rejection.body_text())
        }
    };
    match demo.latest(&id) {
        Some(event) => Json(event).into_response(),
        None => problem(
            StatusCode::NOT_FOUND,
            "unknown_vehicle",
            "no event from this vehicle yet",
        ),
    }
}
