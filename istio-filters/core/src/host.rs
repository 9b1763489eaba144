//! The host boundary: everything a filter asks of the proxy.
//!
//! `meshgate-filter-wasm` implements [`Host`] with proxy-wasm host calls; the unit tests use
//! [`crate::test_host::TestHost`]. No method panics or returns a host status to the filter
//! logic: a failed host call is an absent value (reads) or a logged no-op (writes), so the
//! hot path never unwraps.

use std::sync::Arc;

use crate::catalog::Catalog;
use crate::inspect::RequestTarget;

/// What a stream callback tells the proxy to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Go on with the stream.
    Continue,
    /// Hold the stream (headers or buffered body) until a later callback continues it.
    Pause,
}

/// Log levels, mapped onto the proxy's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Critical,
}

/// Why a compare-and-swap write to shared data did not land.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedWriteError {
    /// Someone else wrote the key since we read it: read again and retry.
    CasMismatch,
    /// The store refused the write (full, too large, unavailable): give up (fail open).
    Refused,
}

/// A shared-data value with the CAS token guarding it (`None` when the key is absent).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SharedEntry {
    pub value: Option<Vec<u8>>,
    pub cas: Option<u32>,
}

/// A response the filter sends instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Set for native gRPC: the proxy answers trailers-only with this `grpc-status` and the
    /// body as `grpc-message` (Envoy's behaviour).
    pub grpc_status: Option<u32>,
}

/// The gRPC status a proxy-wasm guest can send: the SDK knows codes 0–16 and sends any other
/// as UNKNOWN (2).
pub const fn grpc_status_on_wire(code: u32) -> u32 {
    if code <= 16 { code } else { 2 }
}

/// A counter registered with the proxy at configure time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricId(pub u32);

/// The proxy, as the filters see it.
pub trait Host {
    fn request_header(&self, name: &str) -> Option<String>;
    fn request_headers(&self) -> Vec<(String, String)>;
    /// Sets (`Some`) or removes (`None`) a request header.
    fn set_request_header(&mut self, name: &str, value: Option<&str>);
    fn response_header(&self, name: &str) -> Option<String>;
    /// All response headers (with `:status`), in one host call.
    fn response_headers(&self) -> Vec<(String, String)>;
    fn set_response_header(&mut self, name: &str, value: Option<&str>);
    fn response_trailer(&self, name: &str) -> Option<String>;
    /// `size` bytes of the buffered request body from offset `start` (the callback's
    /// `body_size` covers the whole buffer from offset 0).
    fn request_body(&self, start: usize, size: usize) -> Option<Vec<u8>>;
    fn response_body(&self, start: usize, size: usize) -> Option<Vec<u8>>;
    /// Removes `size` bytes of the buffered response body from offset `start`.
    fn clear_response_body(&mut self, start: usize, size: usize);
    /// A proxy property such as `source.address` (raw bytes as the host gives them).
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;
    /// Filter state (Envoy stores it under `wasm.<path>`).
    fn set_property(&mut self, path: &[&str], value: &[u8]);
    fn shared_data(&self, key: &str) -> SharedEntry;
    fn set_shared_data(
        &mut self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedWriteError>;
    /// Wall-clock nanoseconds since the Unix epoch (the host's clock, injectable in tests).
    fn now_nanos(&self) -> u64;
    fn send_local_reply(&mut self, reply: LocalReply);
    /// Registers a counter; `None` when the proxy refuses (the filter then just doesn't count).
    fn define_counter(&mut self, name: &str) -> Option<MetricId>;
    fn increment_counter(&mut self, metric: MetricId, delta: i64);
    fn log(&self, level: LogLevel, message: &str);

    /// The request as an earlier filter of this stream identified it with `catalog`, when the
    /// host shares that between filters (the bundle does; a proxy-wasm host has no such thing).
    fn shared_target(&self, _catalog: &Arc<Catalog>) -> Option<Arc<RequestTarget>> {
        None
    }
    /// Offers a freshly identified request to the filters after this one.
    fn share_target(&self, _catalog: &Arc<Catalog>, _target: &Arc<RequestTarget>) {}
}

/// Declares [`HostLayer`] and makes every layer a [`Host`], from one list of the calls: each
/// goes by default to the inner host, through [`HostLayer::inner`] (`&self` calls) or
/// [`HostLayer::inner_mut`] (`&mut self` ones), as the list says.
macro_rules! host_layer {
    ($($via:ident fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)?;)*) => {
        /// A host that wraps another and changes only some of its calls (the bundle's
        /// per-member view, test hosts that count reads): implement [`inner`](Self::inner) and
        /// [`inner_mut`](Self::inner_mut), override what the layer changes, and every other call
        /// goes to the inner host unchanged. Every `HostLayer` is a [`Host`].
        pub trait HostLayer {
            fn inner(&self) -> &dyn Host;
            fn inner_mut(&mut self) -> &mut dyn Host;
            $(host_layer!(@default $via $name($($arg: $ty),*) $(-> $ret)?);)*
        }

        impl<L: HostLayer> Host for L {
            $(host_layer!(@forward $via $name($($arg: $ty),*) $(-> $ret)?);)*
        }
    };
    (@default inner $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {
        fn $name(&self, $($arg: $ty),*) $(-> $ret)? {
            self.inner().$name($($arg),*)
        }
    };
    (@default inner_mut $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {
        fn $name(&mut self, $($arg: $ty),*) $(-> $ret)? {
            self.inner_mut().$name($($arg),*)
        }
    };
    (@forward inner $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {
        fn $name(&self, $($arg: $ty),*) $(-> $ret)? {
            HostLayer::$name(self, $($arg),*)
        }
    };
    (@forward inner_mut $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {
        fn $name(&mut self, $($arg: $ty),*) $(-> $ret)? {
            HostLayer::$name(self, $($arg),*)
        }
    };
}

host_layer! {
    inner fn request_header(name: &str) -> Option<String>;
    inner fn request_headers() -> Vec<(String, String)>;
    inner_mut fn set_request_header(name: &str, value: Option<&str>);
    inner fn response_header(name: &str) -> Option<String>;
    inner fn response_headers() -> Vec<(String, String)>;
    inner_mut fn set_response_header(name: &str, value: Option<&str>);
    inner fn response_trailer(name: &str) -> Option<String>;
    inner fn request_body(start: usize, size: usize) -> Option<Vec<u8>>;
    inner fn response_body(start: usize, size: usize) -> Option<Vec<u8>>;
    inner_mut fn clear_response_body(start: usize, size: usize);
    inner fn property(path: &[&str]) -> Option<Vec<u8>>;
    inner_mut fn set_property(path: &[&str], value: &[u8]);
    inner fn shared_data(key: &str) -> SharedEntry;
    inner_mut fn set_shared_data(key: &str, value: &[u8], cas: Option<u32>)
        -> Result<(), SharedWriteError>;
    inner fn now_nanos() -> u64;
    inner_mut fn send_local_reply(reply: LocalReply);
    inner_mut fn define_counter(name: &str) -> Option<MetricId>;
    inner_mut fn increment_counter(metric: MetricId, delta: i64);
    inner fn log(level: LogLevel, message: &str);
    inner fn shared_target(catalog: &Arc<Catalog>) -> Option<Arc<RequestTarget>>;
    inner fn share_target(catalog: &Arc<Catalog>, target: &Arc<RequestTarget>);
}

/// The value of header `name` (any case) in a header list.
pub fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Sets (`Some`) or removes (`None`) header `name` in a header list, as a proxy's header map
/// does: every earlier value goes, the new one is stored under the lower-case name.
pub fn set_header_value(headers: &mut Vec<(String, String)>, name: &str, value: Option<&str>) {
    headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    if let Some(value) = value {
        headers.push((name.to_ascii_lowercase(), value.to_owned()));
    }
}

/// Counter ids of one filter, registered once per VM; absent ids are skipped.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    ids: Vec<(&'static str, Option<MetricId>)>,
}

impl Counters {
    /// Registers `prefix_name` for each name (e.g. `meshgate_rate_limit_allowed`).
    pub fn define(host: &mut dyn Host, prefix: &str, names: &[&'static str]) -> Self {
        let ids = names
            .iter()
            .map(|name| (*name, host.define_counter(&format!("{prefix}_{name}"))))
            .collect();
        Self { ids }
    }

    pub fn increment(&self, host: &mut dyn Host, name: &str) {
        if let Some((_, Some(id))) = self.ids.iter().find(|(n, _)| *n == name) {
            host.increment_counter(*id, 1);
        }
    }
}
