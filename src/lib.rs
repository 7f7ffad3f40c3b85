//! tollgate: a rate-limiting reverse proxy built on Pingora.
//!
//! A request goes through the steps of [`pipeline`] (normalize, route, identify,
//! decide) against one immutable [`runtime::Runtime`] snapshot compiled from the
//! config file by [`config`]; [`proxy`] is the Pingora glue around them.
//! [`app`] puts the core together with the parts beside it ([`demo`]), which
//! the core never imports.

pub mod admin;
pub mod admission;
pub mod app;
pub mod check;
pub mod config;
pub mod demo;
pub mod identity;
pub mod limit;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod respond;
pub mod route;
pub mod runtime;
pub mod schema;
pub mod server;
pub mod state;
pub mod websocket;
