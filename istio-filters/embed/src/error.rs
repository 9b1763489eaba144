//! What can go wrong loading a plugin, and running one on a request.

use proxy_wasm_host::abi::v0_2_1::GuestError;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("plugin {plugin}: {source}")]
    Runtime {
        plugin: String,
        source: proxy_wasm_host::Error,
    },
    #[error("plugin {plugin}: {source}")]
    Guest { plugin: String, source: GuestError },
    /// The filter refused its pluginConfig; `reason` is the line it logged.
    #[error("plugin {plugin} refused its configuration: {reason}")]
    Refused { plugin: String, reason: String },
    #[error("a plugin needs at least one worker")]
    NoWorkers,
}

/// A filter failed during a request: a wasm guest trapped (its VM is rebuilt before it runs
/// again, Envoy's FAIL_RELOAD), or a native filter panicked.
#[derive(Debug, thiserror::Error)]
#[error("plugin {plugin} failed: {failure}")]
pub struct FilterError {
    pub plugin: String,
    pub failure: Failure,
}

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    Guest(#[from] GuestError),
    #[error("native filter panicked: {0}")]
    Panicked(String),
}
