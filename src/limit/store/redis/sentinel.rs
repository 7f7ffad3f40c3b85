//! A master found through Redis Sentinel, and followed across failovers.
//!
//! The sentinels are asked one after the other where the master is
//! (`SENTINEL get-master-addr-by-name`), and the node one names is used only
//! once it says it is the master (`ROLE`): a sentinel's view may lag a
//! failover. The connection to the master marks itself lost when the master
//! is gone (the connection broke) or answers a write with READONLY (it was
//! demoted, or came back as a replica); the store then asks the sentinels
//! again instead of reconnecting to the same address, as a plain connection
//! would.
//!
//! Written here rather than with the `redis` crate's `SentinelClient`: that
//! hands out a client for a fixed address (the following across failovers
//! would be ours anyway) and bounds no step by our connect timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo,
    RedisError, Role, ServerErrorKind,
};

use super::redact_url;

/// The sentinels watching one master, as the config lists them.
pub(super) struct Sentinels {
    master: String,
    nodes: Vec<Node>,
    connect_timeout: Duration,
    /// The response timeout of the connection to the master: the decision
    /// timeout, as for a single Redis.
    timeout: Duration,
}

/// One sentinel, and how to reach the master it names: with the user and
/// password of the sentinel's URL, and its database.
struct Node {
    /// The URL without credentials, for messages.
    shown: String,
    sentinel: Client,
    master: ConnectionInfo,
}

/// No sentinel named a master that could be used; why, sentinel by sentinel.
#[derive(Debug, thiserror::Error)]
#[error("no sentinel named a usable master {master:?}: {}", .failures.join("; "))]
pub(crate) struct SentinelError {
    master: String,
    failures: Vec<String>,
}

/// What went wrong with one sentinel.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("knows no master by that name")]
    UnknownMaster,
    #[error("names {0}, which is not the master (yet, or any more)")]
    NotMaster(String),
}

impl Sentinels {
    /// Checks the URLs without connecting.
    pub(super) fn new(
        master: &str,
        nodes: &[String],
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Self, RedisError> {
        let nodes = nodes
            .iter()
            .map(|url| {
                let master = url.as_str().into_connection_info()?;
                // A sentinel has no databases: the URL's is the master's.
                let own = master.redis_settings().clone().set_db(0);
                Ok(Node {
                    shown: redact_url(url),
                    sentinel: Client::open(master.clone().set_redis_settings(own))?,
                    master,
                })
            })
            .collect::<Result<_, RedisError>>()?;
        Ok(Sentinels {
            master: master.to_string(),
            nodes,
            connect_timeout,
            timeout,
        })
    }

    /// How long [`Sentinels::connect_master`] may take at most: each
    /// sentinel is asked, and the node it names tried, within the connect
    /// timeout.
    pub(super) fn longest_attempt(&self) -> Duration {
        self.connect_timeout * 2 * self.nodes.len().max(1) as u32
    }

    /// Asks each sentinel in turn, until one names a node that confirms it is
    /// the master, and connects to that node.
    pub(super) async fn connect_master(&self) -> Result<MasterConnection, SentinelError> {
        let mut failures = Vec::new();
        for node in &self.nodes {
            match self.master_named_by(node).await {
                Ok(connection) => return Ok(connection),
                Err(failure) => failures.push(format!("sentinel {}: {failure}", node.shown)),
            }
        }
        Err(SentinelError {
            master: self.master.clone(),
            failures,
        })
    }

    async fn master_named_by(&self, node: &Node) -> Result<MasterConnection, Failure> {
        let bound = self.connect_timeout;
        let (host, port) = tokio::time::timeout(bound, self.ask(node))
            .await
            .map_err(|_| Failure::Timeout(bound))??;
        let address = format!("{host}:{port}");
        let info = node
            .master
            .clone()
            .set_addr(ConnectionAddr::Tcp(host, port));
        tokio::time::timeout(bound, self.connect_if_master(info, address))
            .await
            .map_err(|_| Failure::Timeout(bound))?
    }

    /// The master's host and port, as `node` knows them.
    async fn ask(&self, node: &Node) -> Result<(String, u16), Failure> {
        let mut sentinel = node
            .sentinel
            .get_multiplexed_async_connection_with_config(&self.connection_config())
            .await?;
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master)
            .query_async::<Option<(String, u16)>>(&mut sentinel)
            .await?
            .ok_or(Failure::UnknownMaster)
    }

    async fn connect_if_master(
        &self,
        info: ConnectionInfo,
        address: String,
    ) -> Result<MasterConnection, Failure> {
        let mut connection = Client::open(info)?
            .get_multiplexed_async_connection_with_config(&self.connection_config())
            .await?;
        let role = redis::cmd("ROLE")
            .query_async::<Role>(&mut connection)
            .await?;
        if !matches!(role, Role::Primary { .. }) {
            return Err(Failure::NotMaster(address));
        }
        connection.set_response_timeout(self.timeout);
        Ok(MasterConnection {
            connection,
            address: address.into(),
            lost: Arc::new(AtomicBool::new(false)),
        })
    }

    /// For the sentinels, and for the master until it says it is one.
    fn connection_config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.connect_timeout))
    }
}

/// A connection to the master the sentinels named. Its clones share whether
/// it is lost.
#[derive(Clone)]
pub(super) struct MasterConnection {
    connection: MultiplexedConnection,
    /// `host:port`, for messages.
    address: Arc<str>,
    lost: Arc<AtomicBool>,
}

impl MasterConnection {
    pub(super) fn address(&self) -> &str {
        &self.address
    }

    /// Whether the sentinels must be asked again before the next call.
    pub(super) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Stops using this connection: the next call asks the sentinels again.
    pub(super) fn give_up(&self, why: &str) {
        if !self.lost.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                "redis master {} {why}: asking the sentinels again",
                self.address
            );
        }
    }

    /// Whether the node is still the master: a demoted one still answers
    /// PING, so a probe asks for its role.
    pub(super) async fn check_role(&mut self) -> Result<(), RedisError> {
        let role = redis::cmd("ROLE").query_async::<Role>(self).await?;
        if matches!(role, Role::Primary { .. }) {
            return Ok(());
        }
        self.give_up("is a replica now");
        Err(RedisError::from((
            ErrorKind::Server(ServerErrorKind::ReadOnly),
            "the master the sentinels named is a replica now",
        )))
    }

    fn notice(&self, error: &RedisError) {
        if master_moved(error) {
            self.give_up(&format!("failed ({error})"));
        }
    }

    /// Redis's own error replies come back as values, not errors.
    fn notice_reply(&self, reply: &redis::Value) {
        if let redis::Value::ServerError(error) = reply {
            if error.kind() == Some(ServerErrorKind::ReadOnly) {
                self.give_up("refused a write as a replica");
            }
        }
    }
}

/// Whether an error means the node is no longer the master to use: the
/// connection broke (it is gone, or the sentinels disconnected its clients
/// when they demoted it), or it refused a write as a replica. A timeout does
/// not: one slow answer is no reason to reconnect (a master that stops
/// answering altogether is given up on by the store's probe).
fn master_moved(error: &RedisError) -> bool {
    !error.is_timeout()
        && (error.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
            || error.is_unrecoverable_error())
}

impl ConnectionLike for MasterConnection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            let reply = self.connection.req_packed_command(cmd).await;
            match &reply {
                Ok(value) => self.notice_reply(value),
                Err(e) => self.notice(e),
            }
            reply
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            let replies = self
                .connection
                .req_packed_commands(cmd, offset, count)
                .await;
            match &replies {
                Ok(values) => values.iter().for_each(|value| self.notice_reply(value)),
                Err(e) => self.notice(e),
            }
            replies
        })
    }

    fn get_db(&self) -> i64 {
        self.connection.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_connection_or_a_read_only_reply_means_the_master_moved() {
        let readonly = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ReadOnly),
            "You can't write against a read only replica.",
        ));
        assert!(master_moved(&readonly));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(master_moved(&RedisError::from(reset)));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(master_moved(&RedisError::from(refused)));
    }

    #[test]
    fn a_slow_answer_or_a_script_error_does_not() {
        let slow = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert!(!master_moved(&RedisError::from(slow)));
        let script = RedisError::from((
            ErrorKind::Server(ServerErrorKind::NoScript),
            "No matching script.",
        ));
        assert!(!master_moved(&script));
    }

    #[test]
    fn the_master_gets_the_credentials_and_database_of_the_sentinel_url() {
        let sentinels = Sentinels::new(
            "main",
            &["redis://app:s3cret@127.0.0.1:26379/2".to_string()],
            Duration::from_secs(1),
            Duration::from_millis(25),
        )
        .unwrap();
        let node = &sentinels.nodes[0];
        assert_eq!(node.shown, "redis://<redacted>@127.0.0.1:26379/2");
        let sentinel = node.sentinel.get_connection_info().redis_settings();
        assert_eq!(
            (sentinel.username(), sentinel.password(), sentinel.db()),
            (Some("app"), Some("s3cret"), 0)
        );
        let master = node.master.redis_settings();
        assert_eq!(
            (master.username(), master.password(), master.db()),
            (Some("app"), Some("s3cret"), 2)
        );
    }
}
