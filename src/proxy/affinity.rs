//! Upstream connections for the fast loop: Pingora's pool, and the one
//! connection a client connection keeps between its requests.
//!
//! A client that sends its next request soon after an answer (an API
//! client in a loop, a page's sub-requests, a pipeline) has it sent on the
//! upstream connection its last request used, as HAProxy keeps a session's
//! server connection. That skips the pool, which costs every request a
//! lock, a task that watches the idle connection, and a `getpeername` to
//! check the connection it hands out (some 7 % of a request's instructions,
//! `bench/instructions.sh`). A held connection goes back to the pool when
//! the client is quiet for [`HOLD`], when its next request goes to another
//! server, and when the client connection ends; at most as many are held at
//! once as the pool keeps idle, so an upstream never sees more than twice
//! the idle connections it saw without holding.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::prelude::HttpPeer;
use pingora::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora::protocols::Stream;
use pingora::upstreams::peer::Peer;
use pingora::Result;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

/// How long a client connection keeps its upstream connection after an
/// answer: long enough for a client that answers at once, short enough
/// that a quiet client gives it back before an upstream's keep-alive
/// timeout could close it (a second or more in common servers).
pub(crate) const HOLD: Duration = Duration::from_millis(50);

/// Pingora's pool, and the count of connections client connections hold.
pub(crate) struct Upstreams {
    pool: TransportConnector,
    held: AtomicUsize,
    /// At most this many held at once: the pool's own size.
    max_held: usize,
}

/// An upstream connection kept for a client connection's next request.
pub(crate) struct Held<'a> {
    stream: Stream,
    /// The pool's key for it (`Peer::reuse_hash`).
    key: u64,
    idle_timeout: Option<Duration>,
    /// When it goes back to the pool if no request has taken it.
    until: Instant,
    _slot: Slot<'a>,
}

impl Held<'_> {
    pub(crate) fn until(&self) -> Instant {
        self.until
    }
}

/// One of the `max_held` places; given back when dropped.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Upstreams {
    /// `options`: the pool's size and bind addresses, as Pingora's proxy
    /// has them from the server's configuration.
    pub(crate) fn new(options: ConnectorOptions) -> Self {
        Upstreams {
            max_held: options.keepalive_pool_size,
            pool: TransportConnector::new(Some(options)),
            held: AtomicUsize::new(0),
        }
    }

    /// A connection to `peer` (`key` its `reuse_hash`): the held one, a
    /// pooled one or a new one, and whether it was used before.
    pub(crate) async fn connect<'a>(
        &'a self,
        held: &mut Option<Held<'a>>,
        peer: &HttpPeer,
        key: u64,
    ) -> Result<(UpstreamSession, bool)> {
        if let Some(taken) = held.take() {
            if taken.key == key {
                let mut stream = taken.stream;
                if still_open(&mut stream) {
                    return Ok((UpstreamSession::new_with_options(stream, peer), true));
                }
            } else {
                self.release(Some(taken));
            }
        }
        let (stream, reused) = self.pool.get_stream(peer).await?;
        Ok((UpstreamSession::new_with_options(stream, peer), reused))
    }

    /// Keeps a connection whose exchange is over for the client's next
    /// request, or pools it when enough are held; one the upstream will not
    /// have used again is closed.
    pub(crate) async fn keep<'a>(
        &'a self,
        held: &mut Option<Held<'a>>,
        mut upstream: UpstreamSession,
        peer: &HttpPeer,
        key: u64,
    ) {
        upstream.respect_keepalive();
        let Some(stream) = upstream.reuse().await else {
            return;
        };
        let idle_timeout = peer.idle_timeout();
        let Some(slot) = self.slot() else {
            self.pool.release_stream(stream, key, idle_timeout);
            return;
        };
        let previous = held.replace(Held {
            stream,
            key,
            idle_timeout,
            until: Instant::now() + HOLD,
            _slot: slot,
        });
        self.release(previous);
    }

    /// Gives a held connection to the pool.
    pub(crate) fn release(&self, held: Option<Held<'_>>) {
        if let Some(held) = held {
            self.pool
                .release_stream(held.stream, held.key, held.idle_timeout);
        }
    }

    fn slot(&self) -> Option<Slot<'_>> {
        let taken = self.held.fetch_add(1, Ordering::Relaxed);
        let slot = Slot(&self.held);
        (taken < self.max_held).then_some(slot)
    }
}

/// Whether an idle upstream connection is still open and silent, as
/// Pingora's pool checks one before handing it out: an upstream that closed
/// it, or sent something nobody asked for, has ended it.
fn still_open(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    tokio::task::unconstrained(stream.read(&mut byte))
        .now_or_never()
        .is_none()
}

/// Resolves when a held connection's time is up; never without one.
pub(crate) async fn hold_ends(until: Option<Instant>) {
    match until {
        Some(until) => tokio::time::sleep_until(until).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_more_connections_are_held_at_once_than_the_pool_keeps() {
        let upstreams = Upstreams::new(ConnectorOptions::new(2));
        let first = upstreams.slot();
        let second = upstreams.slot();
        assert!(first.is_some() && second.is_some());
        assert!(upstreams.slot().is_none(), "a third beyond a pool of two");
        drop(first);
        assert!(upstreams.slot().is_some(), "a place given back is taken");
    }
}
