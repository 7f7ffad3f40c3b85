//! `GET /ws/vehicles`: every accepted event as JSON text, optionally only one
//! vehicle's (`?id=`). Each client has its own bounded queue (see `fanout`):
//! a slow client loses its oldest messages, is told how many, and never holds
//! up the publisher or the other clients.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use futures_util::SinkExt;
use serde::Deserialize;
use tokio::time::Instant;

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
    Query(filter): Query<Filter>,
    ws: WebSocketUpgrade,
) -> Response {
    // The read buffer too is sized for those: tungstenite zero-fills it
    // whenever the socket is polled, which here is after every batch sent.
    ws.max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .read_buffer_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| serve(demo, socket, filter.id))
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
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
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
