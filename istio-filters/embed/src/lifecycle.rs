//! Istio's plugin lifecycle in this host: what a request gets when a filter fails mid-request
//! (the WasmPlugin's `failStrategy`), and how a failed filter is counted. The VM reload itself
//! (Envoy's FAIL_RELOAD: the next call gets a fresh instance) lives in `pool`.

use std::borrow::Cow;
use std::sync::atomic::{AtomicI64, Ordering};

use proxy_wasm_host::abi::v0_2_1::LocalResponse;

/// The WasmPlugin `failStrategy`: what a request gets when its filter traps (a wasm guest) or
/// panics (a native filter).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FailStrategy {
    /// Istio's default: the request is answered `503` (gRPC: `UNAVAILABLE`), as Envoy's
    /// local reply for a failed Wasm filter.
    #[default]
    FailClose,
    /// The request goes on as if the failed filter were not there: what it changed in the
    /// failed callbacks is dropped.
    FailOpen,
}

impl FailStrategy {
    pub const ALL: [Self; 2] = [Self::FailClose, Self::FailOpen];

    /// The WasmPlugin spelling (`FAIL_CLOSE`, `FAIL_OPEN`).
    pub fn name(self) -> &'static str {
        match self {
            Self::FailClose => "FAIL_CLOSE",
            Self::FailOpen => "FAIL_OPEN",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|strategy| strategy.name() == name)
    }
}

/// The counters a plugin's host keeps about its filter (served with the filter's own).
pub const FAILURES_COUNTER: &str = "meshgate_filter_failures";
pub const RELOADS_COUNTER: &str = "meshgate_filter_vm_reloads";

#[derive(Default)]
pub(crate) struct LifecycleCounters {
    /// Callbacks that trapped (wasm) or panicked (native).
    failures: AtomicI64,
    /// Poisoned VMs replaced by a fresh one.
    reloads: AtomicI64,
}

impl LifecycleCounters {
    pub(crate) fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn reloaded(&self) {
        self.reloads.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn get(&self, name: &str) -> Option<i64> {
        match name {
            FAILURES_COUNTER => Some(self.failures.load(Ordering::Relaxed)),
            RELOADS_COUNTER => Some(self.reloads.load(Ordering::Relaxed)),
            _ => None,
        }
    }
    pub(crate) fn all(&self) -> [(String, i64); 2] {
        [FAILURES_COUNTER, RELOADS_COUNTER]
            .map(|name| (name.to_owned(), self.get(name).unwrap_or(0)))
    }
}

/// Envoy's answer for a request whose filter failed closed: `503` with the gRPC status
/// `UNAVAILABLE` (14). The body names the filter only (the failure's details go to the log): the
/// Status JSON for HTTP clients, the bare message for native gRPC (it becomes `grpc-message`).
pub(crate) fn fail_closed_reply(plugin: &str, native_grpc: bool) -> LocalResponse<'static> {
    let message = format!("filter {plugin} is unavailable");
    let (body, content_type) = if native_grpc {
        (message, "text/plain")
    } else {
        let json = serde_json::json!({"error": "UNAVAILABLE", "message": message});
        (json.to_string(), "application/json")
    };
    LocalResponse::new(503)
        .with_body(body.into_bytes())
        .with_grpc_status(14)
        .with_headers(vec![(
            Cow::Borrowed(b"content-type".as_slice()),
            Cow::Borrowed(content_type.as_bytes()),
        )])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies_round_trip_their_wasmplugin_names() {
        for strategy in FailStrategy::ALL {
            assert_eq!(FailStrategy::from_name(strategy.name()), Some(strategy));
        }
        assert_eq!(FailStrategy::default(), FailStrategy::FailClose);
        assert_eq!(FailStrategy::from_name("FAIL_RELOAD"), None);
        assert_eq!(FailStrategy::from_name("fail_open"), None);
    }
}
