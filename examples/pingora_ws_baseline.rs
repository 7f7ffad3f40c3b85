//! The baseline for tollgate's WebSocket tunnel: Pingora's own proxy loop
//! (a plain `ProxyHttp` that only picks the peer) in front of the built-in
//! demo upstream, and the same sessions `tests/websocket.rs` runs through
//! tollgate. Counts sessions torn down right after their `101`
//! (cloudflare/pingora#946).
//!
//! ```sh
//! cargo run --release --example pingora_ws_baseline -- 10000
//! ```
//!
//! Loopback only; bounded by the session count (at most 100,000).

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use pingora::prelude::{HttpPeer, ProxyHttp, Session};
use pingora::server::Server;
use pingora::services::background::background_service;
use tokio_tungstenite::tungstenite::Message;
use tollgate::demo::{BusSettings, Demo, DemoService, DemoSettings};
use tollgate::metrics::Metrics;

/// Pingora's proxy with nothing of ours in the way.
struct Plain {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Plain {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
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
    let demo_addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let proxy_addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();

    let mut server = Server::new(None)?;
    server.bootstrap();
    let settings = DemoSettings {
        listen: demo_addr,
        bus: BusSettings::Memory,
        client_queue: 1024,
    };
    let demo = Demo::new(&settings, Metrics::new().demo.clone());
    server.add_service(background_service(
        "demo upstream",
        DemoService { settings, demo },
    ));
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
        let url = format!("ws://{proxy_addr}/ws/vehicles");
        let mut lost = 0u32;
        for i in 0..sessions {
            let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&url).await else {
                lost += 1;
                continue;
            };
            let ping = i.to_be_bytes().to_vec();
            let alive = async {
                ws.send(Message::Ping(ping.clone().into())).await.ok()?;
                loop {
                    match ws.next().await? {
                        Ok(Message::Pong(p)) if p.as_ref() == ping.as_slice() => return Some(()),
                        Ok(_) => continue,
                        Err(_) => return None,
                    }
                }
            };
            if tokio::time::timeout(Duration::from_secs(5), alive)
                .await
                .ok()
                .flatten()
                .is_none()
            {
                lost += 1;
            }
            let _ = ws.close(None).await;
        }
        lost
    });
    println!(
        "plain Pingora: {lost} of {sessions} WebSocket sessions lost after the 101 ({:.2} %)",
        f64::from(lost) * 100.0 / f64::from(sessions.max(1))
    );
    Ok(())
}
