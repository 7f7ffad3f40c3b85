//! tollgate: a rate-limiting reverse proxy built on Pingora.
//!
//! A request goes through one admission step (`admission`: route, identify,
//! decide) against one immutable [`snapshot::Snapshot`] compiled from the
//! config file by [`config`]; `proxy` is the Pingora glue around it. [`app`]
//! puts the core together with the parts beside it ([`demo`]), which the core
//! never imports. ARCHITECTURE.md draws the layers.
//!
//! The public surface is what the binary, the tests and the benches use:
//! starting a gateway ([`app`], [`server`], the [`demo`] beside it), loading
//! and checking a config ([`config`], [`schema`], [`check`], the compiled
//! [`snapshot`]), replaying access logs through a candidate config
//! ([`replay`]), and the parts tested on their own: algorithms and stores
//! ([`limit`]), identity and routing ([`identity`], [`route`]), consumers
//! and their tokens ([`consumer`]), the WebSocket frame parser
//! ([`websocket`]), the policy vocabulary ([`policy`]) and the metrics
//! ([`metrics`]). Everything else is crate-private.

pub(crate) mod access_log;
pub(crate) mod admin;
pub(crate) mod admission;
pub mod app;
pub mod check;
pub mod config;
pub mod consumer;
pub mod demo;
pub(crate) mod health;
pub mod identity;
pub mod limit;
pub mod metrics;
pub(crate) mod pipeline;
pub mod policy;
pub(crate) mod proxy;
pub(crate) mod reload;
pub mod replay;
pub(crate) mod respond;
pub mod route;
pub mod schema;
pub mod server;
pub mod snapshot;
pub(crate) mod state;
pub(crate) mod tls;
pub(crate) mod top;
pub mod websocket;
