//! The program as shipped: the gateway core and the parts beside it (the
//! demo upstream), put together. This is the one module that names both: the
//! core never imports a part, and the binary and the tests start a gateway
//! through here.

use std::path::Path;
use std::sync::Arc;

use pingora::server::Server;
use pingora::services::ServiceWithDependents;

use crate::config::Loader;
use crate::demo::{self, DemoPart, DemoSettings};
use crate::server::{self, LoadError, ProcessOptions, Running};
use crate::state::Shared;

/// Loads config files with every part's section read and checked.
pub fn loader() -> Loader {
    Loader::new(vec![Box::new(DemoPart)])
}

/// Loads the config file and builds the state the services share.
pub fn load_shared(config_path: &Path) -> Result<Arc<Shared>, LoadError> {
    server::load_shared(config_path, loader())
}

/// Fails early, naming the address, when a listener cannot bind, the demo
/// upstream's included.
pub fn check_bindable(shared: &Shared) -> Result<(), String> {
    server::check_bindable(shared)?;
    match demo_settings(shared) {
        Some(demo) => server::bindable(&demo.listen.to_string()),
        None => Ok(()),
    }
}

/// The Pingora server: the gateway's services and the parts' that run.
pub fn build_server(shared: Arc<Shared>, options: ProcessOptions) -> Server {
    let parts = services(&shared);
    server::build_server(shared, options, parts)
}

/// Starts the gateway and its parts on a thread of their own (tests,
/// embedding); see [`Running`].
pub fn start(shared: Arc<Shared>) -> Running {
    let parts = services(&shared);
    Running::start(shared, parts)
}

/// The demo's settings at start, when its section turns it on.
fn demo_settings(shared: &Shared) -> Option<DemoSettings> {
    shared
        .snapshot
        .load()
        .part::<DemoSettings>(demo::NAME)
        .cloned()
}

/// The background services of the parts that run.
fn services(shared: &Shared) -> Vec<Box<dyn ServiceWithDependents>> {
    let Some(settings) = demo_settings(shared) else {
        return Vec::new();
    };
    match demo::service(settings, shared.metrics.registry()) {
        Ok(service) => vec![Box::new(service)],
        Err(e) => {
            tracing::error!(
                "the demo upstream does not start: its metrics cannot be registered: {e}"
            );
            Vec::new()
        }
    }
}
