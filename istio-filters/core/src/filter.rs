//! The shape every filter has: a configured root (one per VM, shared by its streams) and a
//! stream per request. Roots are `Sync` and streams `Send` so the gateway can run the same
//! filters natively (`meshgate-filter-host`'s native runtime, Envoy's "null VM"); on wasm32 the
//! atomics of `Arc` compile to plain memory operations. `meshgate-filter-wasm` adapts these to
//! proxy-wasm contexts.

use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::host::{Action, Host};

/// Why a pluginConfig was refused; the whole config is rejected (never half-applied).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    pub fn at(path: impl std::fmt::Display, problem: impl std::fmt::Display) -> Self {
        Self(format!("{path}: {problem}"))
    }
}

/// A filter's configured, compiled root.
pub trait Filter: Sized + Send + Sync + 'static {
    type Stream: Stream + Send;
    /// Metric prefix and log name, e.g. `meshgate_rate_limit`.
    const NAME: &'static str;
    /// Parses and compiles the pluginConfig JSON; registers metrics and shared state.
    fn configure(config: &[u8], host: &mut dyn Host) -> Result<Self, ConfigError>;
    fn new_stream(self: &Arc<Self>) -> Self::Stream;
}

/// The per-request callbacks. `body_size` is the size of the whole buffered body so far.
pub trait Stream {
    fn on_request_headers(&mut self, _host: &mut dyn Host, _end_of_stream: bool) -> Action {
        Action::Continue
    }
    fn on_request_body(
        &mut self,
        _host: &mut dyn Host,
        _body_size: usize,
        _end_of_stream: bool,
    ) -> Action {
        Action::Continue
    }
    fn on_response_headers(&mut self, _host: &mut dyn Host, _end_of_stream: bool) -> Action {
        Action::Continue
    }
    fn on_response_body(
        &mut self,
        _host: &mut dyn Host,
        _body_size: usize,
        _end_of_stream: bool,
    ) -> Action {
        Action::Continue
    }
    fn on_response_trailers(&mut self, _host: &mut dyn Host) -> Action {
        Action::Continue
    }
}

/// The line a filter logs when it refuses its pluginConfig (one line, naming the plugin and the
/// problem: what an operator greps for). The wasm adapter logs it, the native runtime reports it.
pub fn refusal_line(name: &str, error: &ConfigError) -> String {
    format!("{name}: invalid pluginConfig, plugin not started: {error}")
}

/// The line a filter logs when its VM (or native worker) starts.
pub fn started_line(name: &str) -> String {
    format!("{name} {} started", env!("CARGO_PKG_VERSION"))
}

/// Parses pluginConfig JSON into a `deny_unknown_fields` struct with a readable error.
pub fn parse_config<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ConfigError("pluginConfig is empty".into()));
    }
    serde_json::from_slice(bytes).map_err(|e| ConfigError(format!("pluginConfig: {e}")))
}

/// Default for `maxBodyBytes`: bodies above it are passed through unread.
pub const DEFAULT_MAX_BODY_BYTES: u32 = 64 * 1024;
/// Upper bound for `maxBodyBytes` (buffering more per request is a memory hazard).
pub const MAX_MAX_BODY_BYTES: u32 = 4 * 1024 * 1024;

pub fn check_max_body(value: u32) -> Result<usize, ConfigError> {
    if value == 0 || value > MAX_MAX_BODY_BYTES {
        return Err(ConfigError::at(
            "maxBodyBytes",
            format!("must be between 1 and {MAX_MAX_BODY_BYTES}"),
        ));
    }
    Ok(value as usize)
}

/// Request header names in configs: lower-case RFC 9110 tokens, not pseudo-headers.
pub fn check_header_name(path: &str, name: &str) -> Result<(), ConfigError> {
    let valid = !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.!#$%&'*+^`|~".contains(&b)
        });
    if valid {
        Ok(())
    } else {
        Err(ConfigError::at(
            path,
            format!("{name:?} is not a lower-case header name"),
        ))
    }
}
