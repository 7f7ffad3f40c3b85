//! `GET /ws/vehicles`: every accepted event as JSON text, optionally only one
//! vehicle's (`?id=`). Each client has its own bounded queue (see `fanout`):
//! a slow client loses its oldest messages, is told how many, and never holds
//! up the publisher or the other clients.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures_util::SinkExt;
use serde::Deserialize;
use tokio::time::Instant;

use super::http::problem;
use super::Demo;

/// A client that accepts nothing for this long is gone, whatever its TCP says.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Pings find clients that vanished without closing while nothing is sent.
const PING_EVERY: Duration = Duration::from_secs(30);
/// Clients only ever send pongs and closes: small frames.
const MAX_CLIENT_MESSAGE: usize = 4096;

#[derive(Debug, Deserialize)]
pub(crate) struct Filter {
    id: Option<String>,
}

pub(crate) async fn upgrade(
    State(demo): State<Arc<Demo>>,
    filter: Result<Query<Filter>, QueryRejection>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        // RFC 6455 §4.4: the versions the server speaks go with the refusal.
        Err(WebSocketUpgradeRejection::InvalidWebSocketVersionHeader(_)) => {
            let mut refusal = problem(
                StatusCode::UPGRADE_REQUIRED,
                "unsupported_websocket_version",
                "this server speaks WebSocket version 13",
            );
            refusal.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            return refusal;
        }
        Err(rejection) => return problem(rejection.status(), "bad_upgrade", rejection.body_text()),
    };
    if !valid_key(&headers) {
        return problem(
            StatusCode::BAD_REQUEST,
            "bad_upgrade",
            "Sec-WebSocket-Key must be 16 bytes in base64 (RFC 6455 §4.2.1)",
        );
    }
    let Query(filter) = match filter {
        Ok(filter) => filter,
        Err(rejection) => {
            return problem(StatusCode::BAD_REQUEST, "bad_query", rejection.body_text())
        }
    };
    // The read buffer too is sized for those: tungstenite zero-fills it
    // whenever the socket is polled, which here is after every batch sent.
    ws.max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .read_buffer_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| serve(demo, socket, filter.id))
        .into_response()
}

/// The handshake's nonce, which axum answers without looking at.
fn valid_key(headers: &HeaderMap) -> bool {
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return false;
    };
    base64::engine::general_purpose::STANDARD
        .decode(key.as_bytes())
        .is_ok_and(|nonce| nonce.len() == 16)
}

async fn send(socket: &mut WebSocket, message: Message) -> bool {
    send_all(socket, [message]).await
}

/// Sends `messages` and flushes once: a batch of events is one write to the
/// socket, not one per event.
async fn send_all(socket: &mut WebSocket, messages: impl IntoIterator<Item = Message>) -> bool {
    let sent = async {
        for message in messages {
            socket.feed(message).await?;
        }
        socket.flush().await
    };
    matches!(tokio::time::timeout(SEND_TIMEOUT, sent).await, Ok(Ok(())))
}

async fn serve(demo: Arc<Demo>, mut socket: WebSocket, only: Option<String>) {
    let subscription = demo.fanout.subscribe(only);
    // Counted once subscribed, for as long as this function runs, however it ends.
    let _connected = demo.metrics.client_connected();
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            (events, dropped) = subscription.next() => {
                let mut messages = Vec::with_capacity(events.len() + 1);
                if dropped > 0 {
                    let notice = format!(r#"{{"type":"lagged","dropped":{dropped}}}"#);
                    messages.push(Message::Text(notice.into()));
                }
                messages.extend(events.iter().map(|event| Message::Text(event.json.clone())));
                if !send_all(&mut socket, messages).await {
                    return;
                }
                demo.metrics.sent(events.len() as u64);
            }
            incoming = socket.recv() => match incoming {
                // tungstenite has queued the answering close frame (RFC
                // 6455 §5.5.1); it goes out with a flush.
                Some(Ok(Message::Close(_))) => {
                    let _ = tokio::time::timeout(SEND_TIMEOUT, socket.flush()).await;
                    return;
                }
                Some(Err(e)) => {
                    if let Some(frame) = close_for(e) {
                        send(&mut socket, Message::Close(Some(frame))).await;
                    }
                    return;
                }
                None => return,
                // Pongs (and anything else) show the client is still there.
                Some(Ok(_)) => last_heard = Instant::now(),
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > 2 * PING_EVERY || !send(&mut socket, Message::Ping(Default::default())).await {
                    return;
                }
            }
        }
    }
}

/// The close frame that tells a client what it broke (RFC 6455 §7.4.1), or
/// none when the connection itself failed and nothing can be sent.
fn close_for(e: axum::Error) -> Option<CloseFrame> {
    let e = e.into_inner().downcast::<tungstenite::Error>().ok()?;
    let (code, reason) = match *e {
        tungstenite::Error::Capacity(_) => (close_code::SIZE, "message too big"),
        tungstenite::Error::Utf8(_) => (close_code::INVALID, "text message is not UTF-8"),
        tungstenite::Error::Protocol(_) => (close_code::PROTOCOL, "protocol error"),
        // I/O errors and a connection already closed: no one to tell.
        _ => return None,
    };
    Some(CloseFrame {
        code,
        reason: reason.into(),
    })
}
