//! A real `redis-server` on a private port, started and stopped by the test
//! (alone, as a cluster, or as a master with a replica and three sentinels).
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
use std::path::PathBuf;
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
    mode: Mode,
}

/// What a server is started as.
#[derive(Clone)]
enum Mode {
    Alone,
    ClusterNode,
    /// A replica of the server on this port.
    Replica(u16),
    /// A sentinel, with its config file (which the sentinel rewrites).
    Sentinel(PathBuf),
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
        Self::start_as(super::free_port(), Mode::Alone)
    }

    fn start_as(port: u16, mode: Mode) -> Self {
        let mut server = RedisServer {
            port,
            watchdog: None,
            pid: None,
            dir: tempfile::tempdir().unwrap(),
            mode,
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
        match &self.mode {
            Mode::Alone => {}
            Mode::ClusterNode => {
                command.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"]);
            }
            Mode::Replica(master) => {
                command.args(["--replicaof", &format!("127.0.0.1 {master}")]);
            }
            // The config file comes first, as redis-server wants it.
            Mode::Sentinel(config) => {
                command.arg(config).arg("--sentinel");
            }
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
    /// (-1: none). A key that expires between the listing and its `PTTL`
    /// (-2: gone) is left out.
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
            .filter(|(_, ttl)| *ttl != -2)
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
        Self::start_as(port, Mode::ClusterNode)
    }
}

/// The name the sentinels know the master by.
pub const SENTINEL_MASTER: &str = "tollgate-master";

/// A master, its replica and three sentinels watching them (quorum 2), on
/// loopback. A master that stops answering for a second is failed over: the
/// sentinels promote the replica.
pub struct RedisSentinel {
    /// The master and the replica, as started (a failover swaps their
    /// roles: ask [`RedisSentinel::master`]).
    pub servers: Vec<RedisServer>,
    pub sentinels: Vec<RedisServer>,
    /// The sentinels' config files, which they rewrite as they learn.
    _configs: tempfile::TempDir,
}

impl RedisSentinel {
    pub fn start() -> Self {
        let master = RedisServer::start();
        let replica = RedisServer::start_as(super::free_port(), Mode::Replica(master.port));
        // A replica the master does not list yet would be unknown to the
        // sentinels, which learn it from the master.
        poll_until(Duration::from_secs(20), "the replica in sync", || {
            info(replica.port, "replication").contains("master_link_status:up")
        });
        let configs = tempfile::tempdir().unwrap();
        let sentinels = (0..3)
            .map(|i| {
                let path = configs.path().join(format!("sentinel-{i}.conf"));
                let config = format!(
                    "sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {port} 2\n\
                     sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                     sentinel failover-timeout {SENTINEL_MASTER} 3000\n",
                    port = master.port
                );
                std::fs::write(&path, config).unwrap();
                RedisServer::start_as(super::free_port(), Mode::Sentinel(path))
            })
            .collect();
        let topology = RedisSentinel {
            servers: vec![master, replica],
            sentinels,
            _configs: configs,
        };
        // A failover needs two sentinels to agree: each must know the others
        // (they meet through the master every two seconds) and the replica.
        poll_until(
            Duration::from_secs(30),
            "every sentinel knowing the replica and the other two",
            || {
                topology.sentinels.iter().all(|s| {
                    let master = sentinel_master(s.port);
                    master.get("num-slaves").is_some_and(|n| n == "1")
                        && master.get("num-other-sentinels").is_some_and(|n| n == "2")
                })
            },
        );
        topology
    }

    /// The sentinels' URLs, for `store.redis.sentinel.nodes`.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisServer::url).collect()
    }

    /// The port of the master, once every sentinel names the same one
    /// (after a failover the others learn it from the sentinel that led it).
    pub fn master_port(&self) -> u16 {
        let mut agreed = None;
        poll_until(
            Duration::from_secs(30),
            "sentinels agreeing on a master",
            || {
                let named: Vec<Option<u16>> = self
                    .sentinels
                    .iter()
                    .map(|s| named_master(s.port))
                    .collect();
                agreed = named[0].filter(|port| named.iter().all(|n| *n == Some(*port)));
                agreed.is_some()
            },
        );
        agreed.unwrap()
    }

    /// The server the sentinels name as the master.
    pub fn master(&self) -> &RedisServer {
        let port = self.master_port();
        self.servers
            .iter()
            .find(|s| s.port == port)
            .expect("the sentinels name a master the harness did not start")
    }

    /// Swaps the roles of master and replica behind the sentinels' backs and
    /// then points them at the new master: the old one's clients stay
    /// connected (a failover by the sentinels would disconnect them), as when
    /// a master cut off from the sentinels comes back demoted. Returns the
    /// new master's port.
    pub fn demote_master_keeping_its_clients(&self) -> u16 {
        let old = self.master_port();
        let new = self.servers.iter().find(|s| s.port != old).unwrap().port;
        let run = |port: u16, args: &[&str]| {
            let mut connection = connect(port).expect("a server of the topology is down");
            let mut command = ::redis::cmd(args[0]);
            for arg in &args[1..] {
                command.arg(*arg);
            }
            let done: Result<::redis::Value, _> = command.query(&mut connection);
            if let Err(e) = done {
                panic!("{args:?} on port {port}: {e}");
            }
        };
        run(new, &["REPLICAOF", "NO", "ONE"]);
        run(old, &["REPLICAOF", "127.0.0.1", &new.to_string()]);
        let new_port = new.to_string();
        for sentinel in &self.sentinels {
            run(sentinel.port, &["SENTINEL", "REMOVE", SENTINEL_MASTER]);
            run(
                sentinel.port,
                &[
                    "SENTINEL",
                    "MONITOR",
                    SENTINEL_MASTER,
                    "127.0.0.1",
                    &new_port,
                    "2",
                ],
            );
        }
        new
    }

    /// Kills the master (SIGKILL, as a crash would); returns its port.
    pub fn kill_master(&mut self) -> u16 {
        let port = self.master().port;
        let master = self.servers.iter_mut().find(|s| s.port == port).unwrap();
        master.kill();
        port
    }
}

/// The port of the master the sentinel on `port` names.
fn named_master(port: u16) -> Option<u16> {
    let mut connection = connect(port)?;
    ::redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(SENTINEL_MASTER)
        .query::<Option<(String, u16)>>(&mut connection)
        .ok()
        .flatten()
        .map(|(_, port)| port)
}

/// A connection to the server on `port` that gives up after a second.
fn connect(port: u16) -> Option<::redis::Connection> {
    let client = ::redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let connection = client
        .get_connection_with_timeout(Duration::from_secs(1))
        .ok()?;
    connection
        .set_read_timeout(Some(Duration::from_secs(1)))
        .ok()?;
    Some(connection)
}

/// `INFO <section>` of the server on `port` (empty if it does not answer).
fn info(port: u16, section: &str) -> String {
    connect(port)
        .and_then(|mut c| ::redis::cmd("INFO").arg(section).query(&mut c).ok())
        .unwrap_or_default()
}

/// `SENTINEL MASTER` of the sentinel on `port` (empty if it does not answer).
fn sentinel_master(port: u16) -> std::collections::HashMap<String, String> {
    connect(port)
        .and_then(|mut c| {
            ::redis::cmd("SENTINEL")
                .arg("MASTER")
                .arg(SENTINEL_MASTER)
                .query(&mut c)
                .ok()
        })
        .unwrap_or_default()
}

/// Polls `done` until it holds; fails naming `what` after `limit`.
fn poll_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "no {what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
