//! Signals, against the real `tollgate` binary: at SIGTERM requests in flight
//! finish within `server.grace_period` and open WebSockets are told the
//! server goes away; SIGUSR1 reopens the access log (logrotate).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use common::{client, eventually, ChildGuard, Upstream};

const CONFIG: &str = "
server:
  listen: [\"{listen}\"]
  admin: \"{admin}\"
  threads: 1
  watch: false
  grace_period: 2s
upstreams: { api: { servers: [\"{upstream}\"] } }
rules:
  - name: api
    match: { path: /** }
    upstream: api
";

/// The binary serving `CONFIG` in front of `upstream`, with its log.
struct Tollgate {
    process: ChildGuard,
    addr: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Tollgate {
    async fn start(upstream: &Upstream) -> Self {
        Self::start_with(upstream, "").await
    }

    /// Serves `CONFIG` followed by `more` (top-level YAML).
    async fn start_with(upstream: &Upstream, more: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        let addr: SocketAddr = ([127, 0, 0, 1], common::free_port()).into();
        let admin: SocketAddr = ([127, 0, 0, 1], common::free_port()).into();
        let yaml = format!("{CONFIG}{more}");
        std::fs::write(&path, common::render(&yaml, addr, admin, upstream.addr)).unwrap();
        let log = dir.path().join("tollgate.log");
        let child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["run", "-c"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let tollgate = Tollgate {
            process: ChildGuard(child),
            addr,
            admin,
            log,
            dir,
        };
        common::wait_listening(addr).await;
        tollgate
    }

    fn terminate(&self) {
        self.signal("-TERM");
    }

    fn signal(&self, which: &str) {
        let sent = Command::new("kill")
            .args([which, &self.process.0.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// Waits until the gateway handles SIGHUP and SIGUSR1 (its watcher,
    /// which listens for them, is up).
    async fn handling_signals(&self) {
        common::wait_watching(self.admin).await;
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit (20 s at most) and returns whether it
    /// exited successfully.
    async fn exited_cleanly(&mut self) -> bool {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.process.0.try_wait().unwrap() {
                return status.success();
            }
            assert!(Instant::now() < until, "still running: {}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn a_request_in_flight_at_sigterm_completes_within_the_grace_period() {
    let upstream = Upstream::start().await;
    let mut tollgate = Tollgate::start(&upstream).await;
    let request = tokio::spawn(
        client()
            .get(format!("http://{}/hold", tollgate.addr))
            .send(),
    );
    eventually(
        Duration::from_secs(10),
        "the request is upstream",
        || async { upstream.count() == 1 },
    )
    .await;
    tollgate.terminate();
    // The shutdown has begun once the listener is gone; the request is
    // answered about a second into the grace period.
    eventually(Duration::from_secs(10), "the listener closes", || async {
        tokio::net::TcpStream::connect(tollgate.addr).await.is_err()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    upstream.release_holds();
    let response = request.await.unwrap().expect("the request was cut");
    assert_eq!(response.status(), 200, "{}", tollgate.log());
    assert!(
        response.text().await.unwrap().contains("/hold"),
        "the whole body arrives"
    );
    assert!(tollgate.exited_cleanly().await, "{}", tollgate.log());
}

#[tokio::test]
async fn open_websockets_get_a_going_away_close_frame_at_sigterm() {
    let upstream = Upstream::start().await;
    let mut tollgate = Tollgate::start(&upstream).await;
    let url = format!("ws://{}/ws/echo", tollgate.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));
    tollgate.terminate();
    let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("no close frame within 10 s")
        .expect("the stream ended without a close frame")
        .unwrap_or_else(|e| panic!("{e}: {}", tollgate.log()));
    match message {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a close frame, got {other:?}"),
    }
    assert!(tollgate.exited_cleanly().await, "{}", tollgate.log());
}

#[tokio::test]
async fn sigusr1_reopens_the_access_log_after_logrotate_moved_it() {
    let upstream = Upstream::start().await;
    let tollgate = Tollgate::start_with(
        &upstream,
        "access_log: { format: json, path: access.log }\n",
    )
    .await;
    tollgate.handling_signals().await;
    let log = tollgate.dir.path().join("access.log");
    let rotated = tollgate.dir.path().join("access.log.1");
    let has_lines = |path: &PathBuf, n: usize| {
        std::fs::read_to_string(path).is_ok_and(|t| t.lines().count() == n)
    };
    let c = client();
    let get = |path: &str| c.get(format!("http://{}{path}", tollgate.addr)).send();
    assert_eq!(get("/first").await.unwrap().status(), 200);
    eventually(
        Duration::from_secs(10),
        "the first line is written",
        || async { has_lines(&log, 1) },
    )
    .await;
    std::fs::rename(&log, &rotated).unwrap();
    tollgate.signal("-USR1");
    // Lines of requests answered before the signal is handled still go to
    // the old file (as with nginx); later ones go to a new file.
    eventually(
        Duration::from_secs(10),
        "lines go to a new file",
        || async {
            assert_eq!(get("/second").await.unwrap().status(), 200);
            std::fs::read_to_string(&log).is_ok_and(|t| t.contains("/second"))
        },
    )
    .await;
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.starts_with('{') && old.contains("/first"), "{old}");
}
