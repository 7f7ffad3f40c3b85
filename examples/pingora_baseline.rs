//! The baseline tollgate's proxy path is held to: Pingora's own `ProxyHttp`
//! with nothing in it but the choice of the peer, built with the same
//! profile (and allocator) as tollgate. `bench/run.sh` runs it beside nginx
//! and tollgate; "tollgate+limit / pingora" is what our own code costs.
//!
//! ```sh
//! cargo run --release --example pingora_baseline -- 127.0.0.1:8081 127.0.0.1:9000 1 no-steal
//! #                                                   listen         upstream       threads runtimes
//! ```
//!
//! Plain HTTP/1.1 to the upstream, connections pooled, one service whose
//! worker count is the third argument (default 1), as tollgate's
//! `server.threads`; the fourth is Pingora's `work_stealing` (`steal`, its
//! default, or `no-steal`, tollgate's default with one thread), as tollgate's `server.work_stealing`.

use std::net::SocketAddr;

use pingora::server::configuration::ServerConf;
use pingora::server::Server;

#[path = "support/plain.rs"]
mod plain;
use plain::Plain;

/// The same allocator as tollgate's binary, so that the two compare fairly.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: pingora_baseline LISTEN UPSTREAM [THREADS] [steal|no-steal]";
    let listen = args.next().ok_or_else(|| anyhow::anyhow!(usage))?;
    let upstream: SocketAddr = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let threads = match args.next() {
        Some(n) => n.parse()?,
        None => 1,
    };
    let work_stealing = match args.next().as_deref() {
        None | Some("steal") => true,
        Some("no-steal") => false,
        Some(_) => anyhow::bail!(usage),
    };
    let conf = ServerConf {
        threads,
        work_stealing,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Plain { upstream });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever()
}
