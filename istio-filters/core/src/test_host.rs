//! An in-memory [`Host`] for unit tests of the filter logic (the real `.wasm` is exercised
//! against `proxy-wasm-host` in `meshgate-filter-tests`).

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::filter::Stream;
use crate::host::{
    Action, Host, LocalReply, LogLevel, MetricId, SharedEntry, SharedWriteError, header_value,
    set_header_value,
};

#[derive(Debug, Default)]
pub struct TestHost {
    pub request_headers: Vec<(String, String)>,
    pub response_headers: Vec<(String, String)>,
    pub response_trailers: Vec<(String, String)>,
    pub request_body: Vec<u8>,
    pub response_body: Vec<u8>,
    pub properties: BTreeMap<String, Vec<u8>>,
    pub filter_state: BTreeMap<String, Vec<u8>>,
    pub shared: BTreeMap<String, (Vec<u8>, u32)>,
    /// The next N CAS writes fail with a mismatch.
    pub cas_conflicts: u32,
    pub now: u64,
    pub reply: Option<LocalReply>,
    pub counters: BTreeMap<String, i64>,
    metric_names: Vec<String>,
    pub logs: RefCell<Vec<(LogLevel, String)>>,
}

fn slice(body: &[u8], start: usize, size: usize) -> &[u8] {
    let start = start.min(body.len());
    &body[start..start.saturating_add(size).min(body.len())]
}

impl TestHost {
    pub fn with_request(headers: &[(&str, &str)]) -> Self {
        Self {
            request_headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Self::default()
        }
    }

    pub fn counter(&self, name: &str) -> i64 {
        self.counters.get(name).copied().unwrap_or(0)
    }
}

impl Host for TestHost {
    fn request_header(&self, name: &str) -> Option<String> {
        header_value(&self.request_headers, name).map(str::to_owned)
    }
    fn request_headers(&self) -> Vec<(String, String)> {
        self.request_headers.clone()
    }
    fn set_request_header(&mut self, name: &str, value: Option<&str>) {
        set_header_value(&mut self.request_headers, name, value);
    }
    fn response_header(&self, name: &str) -> Option<String> {
        header_value(&self.response_headers, name).map(str::to_owned)
    }
    fn response_headers(&self) -> Vec<(String, String)> {
        self.response_headers.clone()
    }
    fn set_response_header(&mut self, name: &str, value: Option<&str>) {
        set_header_value(&mut self.response_headers, name, value);
    }
    fn response_trailer(&self, name: &str) -> Option<String> {
        header_value(&self.response_trailers, name).map(str::to_owned)
    }
    fn request_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        Some(slice(&self.request_body, start, size).to_vec())
    }
    fn response_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        Some(slice(&self.response_body, start, size).to_vec())
    }
    fn clear_response_body(&mut self, start: usize, size: usize) {
        let start = start.min(self.response_body.len());
        let end = start.saturating_add(size).min(self.response_body.len());
        self.response_body.drain(start..end);
    }
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.properties.get(&path.join(".")).cloned()
    }
    fn set_property(&mut self, path: &[&str], value: &[u8]) {
        self.filter_state.insert(path.join("."), value.to_vec());
    }
    fn shared_data(&self, key: &str) -> SharedEntry {
        match self.shared.get(key) {
            Some((value, cas)) => SharedEntry {
                value: Some(value.clone()),
                cas: Some(*cas),
            },
            None => SharedEntry::default(),
        }
    }
    fn set_shared_data(
        &mut self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedWriteError> {
        if self.cas_conflicts > 0 && cas.is_some() {
            self.cas_conflicts -= 1;
            return Err(SharedWriteError::CasMismatch);
        }
        let next = match self.shared.get(key) {
            Some((_, current)) if cas.is_some_and(|c| c != *current) => {
                return Err(SharedWriteError::CasMismatch);
            }
            Some((_, current)) => current + 1,
            None => 1,
        };
        self.shared.insert(key.to_owned(), (value.to_vec(), next));
        Ok(())
    }
    fn now_nanos(&self) -> u64 {
        self.now
    }
    fn send_local_reply(&mut self, reply: LocalReply) {
        self.reply = Some(reply);
    }
    fn define_counter(&mut self, name: &str) -> Option<MetricId> {
        self.metric_names.push(name.to_owned());
        Some(MetricId(self.metric_names.len() as u32 - 1))
    }
    fn increment_counter(&mut self, metric: MetricId, delta: i64) {
        if let Some(name) = self.metric_names.get(metric.0 as usize) {
            *self.counters.entry(name.clone()).or_default() += delta;
        }
    }
    fn log(&self, level: LogLevel, message: &str) {
        self.logs.borrow_mut().push((level, message.to_owned()));
    }
}

/// The proxy's side of a body: the buffer keeps growing while the stream pauses and starts
/// over after it continues.
#[derive(Default)]
pub struct BufferingProxy {
    buffered: Vec<u8>,
}

/// Which body a [`BufferingProxy`] chunk belongs to.
#[derive(Clone, Copy)]
enum Side {
    Request,
    Response,
}

impl Side {
    fn body(self, host: &mut TestHost) -> &mut Vec<u8> {
        match self {
            Self::Request => &mut host.request_body,
            Self::Response => &mut host.response_body,
        }
    }
}

impl BufferingProxy {
    pub fn request_chunk(
        &mut self,
        stream: &mut impl Stream,
        host: &mut TestHost,
        chunk: &str,
        eos: bool,
    ) -> Action {
        self.chunk(host, chunk, Side::Request, |host, size| {
            stream.on_request_body(host, size, eos)
        })
    }

    pub fn response_chunk(
        &mut self,
        stream: &mut impl Stream,
        host: &mut TestHost,
        chunk: &str,
        eos: bool,
    ) -> Action {
        self.chunk(host, chunk, Side::Response, |host, size| {
            stream.on_response_body(host, size, eos)
        })
    }

    fn chunk(
        &mut self,
        host: &mut TestHost,
        chunk: &str,
        side: Side,
        deliver: impl FnOnce(&mut TestHost, usize) -> Action,
    ) -> Action {
        self.buffered.extend_from_slice(chunk.as_bytes());
        side.body(host).clone_from(&self.buffered);
        let action = deliver(host, self.buffered.len());
        if action == Action::Continue {
            self.buffered.clear();
        } else {
            // A paused buffer keeps what the filter left of it (a 304 removes the body).
            self.buffered.clone_from(side.body(host));
        }
        action
    }
}
