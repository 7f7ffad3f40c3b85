//! A real `redis-server` on a private port, started and stopped by the test.
//! Never the machine's default port, never a mock, never skipped.
//!
//! Every server dies with the test process, however that ends: servers held
//! in statics are never dropped, and a panic that aborts or a SIGKILL runs no
//! destructor. So each server is started by a watchdog shell that holds the
//! read end of a pipe whose only writer is this process; when the pipe closes
//! (the server is dropped or this process is gone) the watchdog kills the
//! server and reaps it. A pipe is closed by the kernel in every case, with no
//! `unsafe` (`PR_SET_PDEATHSIG` would need it, and fires when the spawning
//! *thread* ends, which for a shared server is too early).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Part of every harness server's process title, so that `.ci/run` can tell
/// them from a system Redis and fail when one outlives the suite.
pub const MARKER: &str = "tollgate-test-harness";

/// Run by `sh -c` with the server's command line as `$0 "$@"`: prints the
/// server's pid, then waits for end-of-file on its stdin and kills the server
/// (SIGKILL, as a crash would). Stops for nothing else: the signals a
/// terminal sends to the whole process group are ignored, so Ctrl-C on the
/// test run still ends the server through the closed pipe.
const WATCHDOG: &str = r#""$0" "$@" </dev/null >/dev/null 2>&1 &
pid=$!
echo "$pid"
exec >/dev/null 2>&1
trap '' HUP INT QUIT TERM
read -r _
kill -9 "$pid"
wait "$pid"
"#;

pub struct RedisServer {
    pub port: u16,
    /// The watchdog; its stdin is the pipe that keeps the server alive.
    watchdog: Option<Child>,
    /// The server's own pid (a child of the watchdog).
    pid: Option<u32>,
    dir: tempfile::TempDir,
    cluster: bool,
}

fn redis_binary() -> &'static str {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "redis-server is not installed: `apt-get install redis-server` (bash .ci/run installs it)"
    );
    "redis-server"
}

impl RedisServer {
    pub fn start() -> Self {
        let mut server = RedisServer {
            port: super::free_port(),
            watchdog: None,
            pid: None,
            dir: tempfile::tempdir().unwrap(),
            cluster: false,
        };
        server.launch();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    fn launch(&mut self) {
        let mut command = Command::new("sh");
        command.args(["-c", WATCHDOG, redis_binary()]);
        if self.cluster {
            command.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"]);
        }
        let title = format!("{{title}} {{listen-addr}} {{server-mode}} {MARKER}");
        let mut watchdog = command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(["--proc-title-template", &title])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start sh for redis-server");
        let mut line = String::new();
        if let Some(out) = watchdog.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        self.pid = line.trim().parse().ok();
        self.watchdog = Some(watchdog);
        assert!(
            self.pid.is_some(),
            "the watchdog did not start redis-server"
        );
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pong(addr) {
            assert!(
                Instant::now() < deadline,
                "redis-server on {addr} did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the server (as a crash would) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            // End of file for the watchdog: it kills the server and reaps it.
            drop(watchdog.stdin.take());
            let _ = watchdog.wait();
        }
        self.pid = None;
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers,
    /// the worst case for a client.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.pid.expect("the server is not running");
        let sent = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "kill {signal} {pid} failed");
    }

    /// Every key in the server, with its remaining time to live in ms
    /// (-1: none).
    pub fn keys_and_ttls(&self) -> Vec<(String, i64)> {
        let client = ::redis::Client::open(self.url()).unwrap();
        let mut connection = client.get_connection().unwrap();
        let keys: Vec<String> = ::redis::Commands::scan(&mut connection)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        keys.into_iter()
            .map(|key| {
                let ttl: i64 = ::redis::cmd("PTTL")
                    .arg(&key)
                    .query(&mut connection)
                    .unwrap();
                (key, ttl)
            })
            .collect()
    }

    /// The `count` of every fixed-window state under `prefix`.
    pub fn fixed_window_counts(&self, prefix: &str) -> Vec<i64> {
        let client = ::redis::Client::open(self.url()).unwrap();
        let mut connection = client.get_connection().unwrap();
        let keys: Vec<String> =
            ::redis::Commands::scan_match(&mut connection, format!("{prefix}:*"))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        keys.into_iter()
            .filter_map(|key| {
                ::redis::cmd("HGET")
                    .arg(&key)
                    .arg("count")
                    .query::<Option<i64>>(&mut connection)
                    .ok()
                    .flatten()
            })
            .collect()
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

/// Whether a Redis answers PING on `addr`.
pub fn pong(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of three masters on loopback, no replicas, created with
/// `redis-cli --cluster create` and stopped with the test.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3).map(|_| RedisServer::start_clustered()).collect();
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let created = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli is not installed: `apt-get install redis-server` (bash .ci/run installs it)");
        assert!(created.success(), "redis-cli --cluster create failed");
        let cluster = RedisCluster { nodes };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cluster.is_ok() {
            assert!(
                Instant::now() < deadline,
                "the cluster did not reach cluster_state:ok"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        cluster
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Every node agrees that all slots are served.
    fn is_ok(&self) -> bool {
        self.nodes.iter().all(|node| {
            Command::new("redis-cli")
                .args(["-p", &node.port.to_string(), "cluster", "info"])
                .output()
                .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok"))
        })
    }
}

impl RedisServer {
    /// A cluster node: its bus port (port + 10000) must be free too.
    fn start_clustered() -> Self {
        let port = loop {
            let port = super::free_port();
            if std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
                break port;
            }
        };
        let mut server = RedisServer {
            port,
            watchdog: None,
            pid: None,
            dir: tempfile::tempdir().unwrap(),
            cluster: true,
        };
        server.launch();
        server
    }
}
