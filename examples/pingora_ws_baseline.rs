//! The baseline for tollgate's WebSocket tunnel: Pingora's own proxy loop
//! (a plain `ProxyHttp` that only picks the peer) in front of the built-in
//! demo upstream, and the same sessions `tests/websocket.rs` runs through
//! tollgate. Counts sessions torn down right after their `101`
//! (cloudflare/pingora#946).
//!
//! ```sh
//! cargo run --release --example pingora_ws_baseline -- 10000          # demo feed, ping/pong
//! cargo run --release --example pingora_ws_baseline -- 10000 echo     # echo upstream, text
//! cargo run --release --example pingora_ws_baseline -- 10000 echo 8   # 8 sessions at a time
//! ```
//!
//! Loopback only; bounded by the session count (at most 100,000).

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use pingora::server::Server;
use pingora::services::background::background_service;
use tokio_tungstenite::tungstenite::Message;
use tollgate::demo::{BusSettings, Demo, DemoMetrics, DemoService, DemoSettings};

#[path = "support/plain.rs"]
mod plain;
use plain::Plain;

/// A WebSocket server that echoes every message at once: the fastest
/// upstream there is.
fn echo_upstream(addr: SocketAddr) {
    use axum::extract::ws::{WebSocket, WebSocketUpgrade};
    async fn echo(mut socket: WebSocket) {
        while let Some(Ok(message)) = socket.recv().await {
            if socket.send(message).await.is_err() {
                break;
            }
        }
    }
    let Ok(runtime) = tokio::runtime::Runtime::new() else {
        return;
    };
    runtime.block_on(async move {
        let app = axum::Router::new().route(
            "/echo",
            axum::routing::get(|upgrade: WebSocketUpgrade| async move { upgrade.on_upgrade(echo) }),
        );
        if let Ok(listener) = tokio::net::TcpListener::bind(addr).await {
            let _ = axum::serve(listener, app).await;
        }
    });
}

/// One session: connect, one round trip (a ping, or an echoed text), close.
/// False when the connection died after its 101.
async fn session(url: &str, i: u32, echo: bool) -> bool {
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else {
        return false;
    };
    let ping = i.to_be_bytes().to_vec();
    let text = format!("message {i}");
    let alive = async {
        if echo {
            ws.send(Message::text(text.clone())).await.ok()?;
        } else {
            ws.send(Message::Ping(ping.clone().into())).await.ok()?;
        }
        loop {
            match ws.next().await? {
                Ok(Message::Pong(p)) if p.as_ref() == ping.as_slice() => return Some(()),
                Ok(Message::Text(t)) if echo && t.as_str() == text => return Some(()),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    };
    let ok = tokio::time::timeout(Duration::from_secs(5), alive)
        .await
        .ok()
        .flatten()
        .is_some();
    let _ = ws.close(None).await;
    ok
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn main() -> anyhow::Result<()> {
    let sessions: u32 = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(10_000)
        .min(100_000);
    let echo = std::env::args().nth(2).as_deref() == Some("echo");
    let parallel: u32 = std::env::args()
        .nth(3)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(1)
        .clamp(1, 64);
    let demo_addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let proxy_addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();

    let mut server = Server::new(None)?;
    server.bootstrap();
    let settings = DemoSettings {
        listen: demo_addr,
        bus: BusSettings::Memory,
        client_queue: 1024,
    };
    if echo {
        std::thread::spawn(move || echo_upstream(demo_addr));
    } else {
        let demo = Demo::new(
            &settings,
            DemoMetrics::register(&prometheus::Registry::new())?,
        );
        server.add_service(background_service(
            "demo upstream",
            DemoService { settings, demo },
        ));
    }
    let mut proxy = pingora::proxy::http_proxy_service(
        &server.configuration,
        Plain {
            upstream: demo_addr,
        },
    );
    proxy.add_tcp(&proxy_addr.to_string());
    server.add_service(proxy);
    std::thread::spawn(move || server.run_forever());

    let runtime = tokio::runtime::Runtime::new()?;
    let lost = runtime.block_on(async move {
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(proxy_addr).await.is_ok()
                && tokio::net::TcpStream::connect(demo_addr).await.is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let url = if echo {
            format!("ws://{proxy_addr}/echo")
        } else {
            format!("ws://{proxy_addr}/ws/vehicles")
        };
        let url = std::sync::Arc::new(url);
        let tasks = (0..parallel).map(|task| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut lost = 0u32;
                for i in (task..sessions).step_by(parallel as usize) {
                    if !session(&url, i, echo).await {
                        lost += 1;
                    }
                }
                lost
            })
        });
        let mut lost = 0;
        for task in futures_util::future::join_all(tasks).await {
            lost += task.unwrap_or(0);
        }
        lost
    });
    println!(
        "plain Pingora: {lost} of {sessions} WebSocket sessions lost after the 101 ({:.2} %)",
        f64::from(lost) * 100.0 / f64::from(sessions.max(1))
    );
    Ok(())
}
