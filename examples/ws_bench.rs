//! WebSocket message throughput, for `bench/run.sh`: an echo upstream, and a
//! client that keeps every connection busy (send, wait for the echo) for a
//! fixed time and prints messages per second.
//!
//! ```sh
//! cargo run --release --example ws_bench -- serve 127.0.0.1:9500
//! cargo run --release --example ws_bench -- drive ws://127.0.0.1:9500/echo 32 5
//! ```
//!
//! Loopback only (other targets are refused); bounded by its duration.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use futures_util::{SinkExt, StreamExt};
use std::future::IntoFuture;
use tokio::signal::unix::{signal, SignalKind};
use tokio_tungstenite::tungstenite::Message;

async fn echo(mut socket: WebSocket) {
    while let Some(Ok(message)) = socket.recv().await {
        if socket.send(message).await.is_err() {
            break;
        }
    }
}

async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    // Every path echoes, so a gateway may route several paths here.
    let app =
        axum::Router::new().fallback(axum::routing::get(|upgrade: WebSocketUpgrade| async move {
            upgrade.on_upgrade(echo)
        }));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    // Bench scripts start this in the background, where a shell ignores
    // SIGINT for its children: without a handler of its own it would only
    // stop at SIGKILL.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        served = axum::serve(listener, app).into_future() => served?,
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    Ok(())
}

/// Round trips on `connections` sockets for `seconds`; returns messages
/// echoed and rate-limit notices received.
async fn drive(url: &str, connections: usize, seconds: u64) -> anyhow::Result<(u64, u64)> {
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .with_context(|| format!("connection {c}"))?;
        tasks.push(tokio::spawn(async move {
            let (mut echoed, mut notices) = (0u64, 0u64);
            let payload = "x".repeat(64);
            while Instant::now() < until {
                if ws.send(Message::text(payload.clone())).await.is_err() {
                    break;
                }
                match ws.next().await {
                    Some(Ok(Message::Text(t))) if t.as_str() == payload => echoed += 1,
                    Some(Ok(Message::Text(_))) => notices += 1,
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
            let _ = ws.close(None).await;
            (echoed, notices)
        }));
    }
    let mut total = (0, 0);
    for task in tasks {
        let (e, n) = task.await?;
        total.0 += e;
        total.1 += n;
    }
    Ok(total)
}

fn loopback(url: &str) -> anyhow::Result<()> {
    let host = url
        .trim_start_matches("ws://")
        .split(['/', ':'])
        .next()
        .unwrap_or_default();
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_loopback() => Ok(()),
        _ if host == "localhost" => Ok(()),
        _ => bail!("{url}: only loopback targets"),
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Runtime::new()?;
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve", addr] => runtime.block_on(serve(addr.parse()?)),
        ["drive", url, connections, seconds] => {
            loopback(url)?;
            let seconds: u64 = seconds.parse::<u64>()?.clamp(1, 120);
            let (echoed, notices) = runtime.block_on(drive(
                url,
                connections.parse::<usize>()?.clamp(1, 1024),
                seconds,
            ))?;
            println!("{} {}", echoed / seconds, notices / seconds);
            Ok(())
        }
        _ => bail!("usage: ws_bench serve ADDR | ws_bench drive WS_URL CONNECTIONS SECONDS"),
    }
}
