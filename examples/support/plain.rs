//! Pingora's proxy with nothing of ours in the way: the baselines' `ProxyHttp`.

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::prelude::{HttpPeer, ProxyHttp, Session};

/// Sends every request to `upstream`, plain HTTP, pooled.
pub struct Plain {
    pub upstream: SocketAddr,
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
