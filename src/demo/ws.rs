//! `GET /ws/vehicles`: every accepted event as JSON text, optionally only one
//! vehicle's (`?id=`). Each client reads from its own position in a bounded
//! ring: a slow client loses its oldest messages (and is told how many), and
//! never holds up the publisher or the other clients.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::Demo;

/// A client that accepts nothing for this long is gone, whatever its TCP says.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
pub struct Filter {
    id: Option<String>,
}

pub async fn upgrade(
    State(demo): State<Arc<Demo>>,
    Query(filter): Query<Filter>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.on_upgrade(move |socket| serve(demo, socket, filter.id))
}

async fn serve(demo: Arc<Demo>, mut socket: WebSocket, only: Option<String>) {
    // Counted while this function runs, however it ends.
    let _connected = demo.metrics.client_connected();
    let mut events = demo.fanout.subscribe();
    loop {
        let outgoing = tokio::select! {
            received = events.recv() => match received {
                Ok(event) if only.as_ref().is_none_or(|id| *id == event.id) => Message::Text(event.json.clone()),
                Ok(_) => continue,
                Err(RecvError::Lagged(dropped)) => {
                    demo.metrics.dropped(dropped);
                    Message::Text(format!(r#"{{"type":"lagged","dropped":{dropped}}}"#).into())
                }
                Err(RecvError::Closed) => break,
            },
            incoming = socket.recv() => match incoming {
                // Pings are answered by the socket itself; clients have nothing to say.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => continue,
            },
        };
        match tokio::time::timeout(SEND_TIMEOUT, socket.send(outgoing)).await {
            Ok(Ok(())) => demo.metrics.sent(),
            _ => break,
        }
    }
}
