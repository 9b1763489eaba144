//! bundle: the three filters in one stream context, for one module (`meshgate_filters.wasm`)
//! configured once.
//!
//! Envoy runs each WasmPlugin as its own HTTP filter: per request and filter it creates a stream
//! context, calls every callback and ends the context, and each filter fetches the request
//! headers again. Those crossings of the wasm boundary are most of a small filter's cost, so
//! three filters cost three times the fixed price. The bundle pays it once: one context, one
//! callback per phase, one header fetch, and runs the members inside.
//!
//! The members run in the mesh's order — span-enrichment, rate-limit, cache-headers on the
//! request, reversed on the response — with Envoy's filter-chain semantics:
//! - a member that pauses holds the members after it (they get their headers and body once it
//!   continues, as later filters in an Envoy chain would);
//! - each member sees the body from where it last continued: a member that streams sees each
//!   chunk once, a member that buffers sees the whole buffer, through an offset view;
//! - a local reply ends the request phase; its response phase reaches only the members before
//!   the one that replied, as Envoy sends a local reply through the filters nearer the client.
//!
//! Config: `{"spanEnrichment": {..}, "rateLimit": {..}, "cacheHeaders": {..}}`, each the
//! member's own pluginConfig, at least one present; a member's config error names its key.

use std::cell::RefCell;
use std::sync::Arc;

use serde::Deserialize;

use crate::catalog::Catalog;
use crate::filter::{self, ConfigError, Filter, Stream};
use crate::filters::cache_headers::CacheHeaders;
use crate::filters::rate_limit::RateLimit;
use crate::filters::span_enrichment::SpanEnrichment;
use crate::host::{
    Action, Host, LocalReply, LogLevel, MetricId, SharedEntry, SharedWriteError, header_value,
    set_header_value,
};
use crate::inspect::RequestTarget;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BundleConfig {
    pub span_enrichment: Option<serde_json::Value>,
    pub rate_limit: Option<serde_json::Value>,
    pub cache_headers: Option<serde_json::Value>,
}

/// The configured members, in request order.
pub struct Bundle {
    span_enrichment: Option<Arc<SpanEnrichment>>,
    rate_limit: Option<Arc<RateLimit>>,
    cache_headers: Option<Arc<CacheHeaders>>,
}

fn member<F: Filter>(
    key: &str,
    config: Option<serde_json::Value>,
    host: &mut dyn Host,
) -> Result<Option<Arc<F>>, ConfigError> {
    let Some(config) = config else {
        return Ok(None);
    };
    let bytes = serde_json::to_vec(&config).map_err(|e| ConfigError::at(key, e))?;
    F::configure(&bytes, host)
        .map(|filter| Some(Arc::new(filter)))
        .map_err(|e| ConfigError::at(key, e))
}

impl Filter for Bundle {
    type Stream = BundleStream;
    const NAME: &'static str = "meshgate_filters";

    fn configure(config: &[u8], host: &mut dyn Host) -> Result<Self, ConfigError> {
        let config: BundleConfig = filter::parse_config(config)?;
        let bundle = Self {
            span_enrichment: member("spanEnrichment", config.span_enrichment, host)?,
            rate_limit: member("rateLimit", config.rate_limit, host)?,
            cache_headers: member("cacheHeaders", config.cache_headers, host)?,
        };
        if bundle.span_enrichment.is_none()
            && bundle.rate_limit.is_none()
            && bundle.cache_headers.is_none()
        {
            return Err(ConfigError(
                "pluginConfig: no filter configured: set spanEnrichment, rateLimit and/or \
                 cacheHeaders"
                    .into(),
            ));
        }
        Ok(bundle)
    }

    fn new_stream(self: &Arc<Self>) -> BundleStream {
        let mut members: Vec<Member> = Vec::with_capacity(3);
        if let Some(f) = &self.span_enrichment {
            members.push(Member::new(Box::new(f.new_stream())));
        }
        if let Some(f) = &self.rate_limit {
            members.push(Member::new(Box::new(f.new_stream())));
        }
        if let Some(f) = &self.cache_headers {
            members.push(Member::new(Box::new(f.new_stream())));
        }
        BundleStream::of(members)
    }
}

// === stream ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

struct Member {
    stream: Box<dyn Stream + Send>,
    progress: [Progress; 2],
}

/// How far one side's body has reached a member, in absolute bytes.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    /// The member continued past these bytes.
    seen: usize,
    /// The last callback showed it up to here (a pausing member is shown the growing buffer).
    shown: usize,
    /// It has had its end-of-stream body callback.
    ended: bool,
}

impl Member {
    fn new(stream: Box<dyn Stream + Send>) -> Self {
        Self {
            stream,
            progress: [Progress::default(); 2],
        }
    }
}

/// One direction's progress through the members.
#[derive(Debug, Default)]
struct Flow {
    /// Absolute offset where the proxy's current body buffer starts: it moves on when the
    /// bundle continues (the proxy forwards and drains) and stays while the bundle pauses.
    base: usize,
    /// Absolute end of the body seen so far.
    end: usize,
    /// How many members (in this side's order) have had their headers callback.
    headers_delivered: usize,
    headers_end_of_stream: bool,
}

pub struct BundleStream {
    members: Vec<Member>,
    /// The request as the first member identified it, for the others (same catalog).
    target: SharedTarget,
    request: Flow,
    response: Flow,
    /// Request-order index of the member that sent a local reply.
    replied_by: Option<usize>,
}

/// A body callback to deliver: where the buffer ends (absolute) and whether it is the last.
#[derive(Clone, Copy)]
struct Body {
    end: usize,
    end_of_stream: bool,
}

impl BundleStream {
    fn of(members: Vec<Member>) -> Self {
        Self {
            members,
            target: SharedTarget::default(),
            request: Flow::default(),
            response: Flow::default(),
            replied_by: None,
        }
    }

    /// Member indices in this side's order: the response runs in reverse, and after a local
    /// reply only the members before the replier see it.
    fn order(&self, side: Side) -> Vec<usize> {
        let count = self.replied_by.unwrap_or(self.members.len());
        match side {
            Side::Request => (0..count).collect(),
            Side::Response => (0..count).rev().collect(),
        }
    }

    fn flow(&mut self, side: Side) -> &mut Flow {
        match side {
            Side::Request => &mut self.request,
            Side::Response => &mut self.response,
        }
    }

    /// Delivers what each member has not seen yet, in order, until one pauses or replies.
    fn advance(&mut self, side: Side, host: &mut dyn Host, mut body: Option<Body>) -> Action {
        if side == Side::Request && self.replied_by.is_some() {
            return Action::Pause;
        }
        let slot = side as usize;
        let cache = ReadCache::default();
        for (position, index) in self.order(side).into_iter().enumerate() {
            if position >= self.flow(side).headers_delivered {
                let end_of_stream = self.flow(side).headers_end_of_stream;
                let mut view = MemberHost::new(host, &cache, &self.target, 0);
                let stream = &mut self.members[index].stream;
                let action = match side {
                    Side::Request => stream.on_request_headers(&mut view, end_of_stream),
                    Side::Response => stream.on_response_headers(&mut view, end_of_stream),
                };
                let replied = view.replied;
                self.flow(side).headers_delivered = position + 1;
                // A pause at headers holds the members after it; with a body at hand, the
                // member goes on to its body callback first (as Envoy passes buffered data on
                // to a filter that just received its headers).
                let paused = if body.is_some() {
                    Action::Continue
                } else {
                    action
                };
                if let Some(action) = self.after_call(side, index, paused, replied) {
                    return action;
                }
            }
            let Some(current) = body else {
                continue;
            };
            let base = self.flow(side).base;
            let progress = self.members[index].progress[slot];
            let from = progress.seen.max(base);
            if progress.ended || (from >= current.end && !current.end_of_stream) {
                continue;
            }
            let mut view = MemberHost::new(host, &cache, &self.target, from - base);
            let size = current.end.saturating_sub(from);
            let stream = &mut self.members[index].stream;
            let action = match side {
                Side::Request => stream.on_request_body(&mut view, size, current.end_of_stream),
                Side::Response => stream.on_response_body(&mut view, size, current.end_of_stream),
            };
            // A member that removed response bytes (a 304) shortened the buffer for the rest.
            let end = current.end.saturating_sub(view.response_removed);
            let replied = view.replied;
            let progress = &mut self.members[index].progress[slot];
            progress.shown = end;
            if let Some(action) = self.after_call(side, index, action, replied) {
                return action;
            }
            let progress = &mut self.members[index].progress[slot];
            progress.seen = end;
            progress.ended = current.end_of_stream;
            body = Some(Body { end, ..current });
        }
        if let Some(body) = body {
            let flow = self.flow(side);
            flow.base = body.end;
            flow.end = body.end;
        }
        Action::Continue
    }

    /// `Some(action)` when the callback ends the pass: a local reply, or a pause.
    fn after_call(
        &mut self,
        side: Side,
        index: usize,
        action: Action,
        replied: bool,
    ) -> Option<Action> {
        if replied && side == Side::Request {
            self.replied_by = Some(index);
            return Some(Action::Pause);
        }
        (action == Action::Pause).then_some(Action::Pause)
    }

    fn body(&mut self, side: Side, host: &mut dyn Host, size: usize, eos: bool) -> Action {
        let flow = self.flow(side);
        let end = flow.base.saturating_add(size);
        flow.end = end;
        self.advance(
            side,
            host,
            Some(Body {
                end,
                end_of_stream: eos,
            }),
        )
    }
}

impl Stream for BundleStream {
    fn on_request_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Action {
        self.request.headers_end_of_stream = end_of_stream;
        self.advance(Side::Request, host, None)
    }

    fn on_request_body(&mut self, host: &mut dyn Host, body_size: usize, eos: bool) -> Action {
        self.body(Side::Request, host, body_size, eos)
    }

    fn on_response_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Action {
        self.response.headers_end_of_stream = end_of_stream;
        self.advance(Side::Response, host, None)
    }

    fn on_response_body(&mut self, host: &mut dyn Host, body_size: usize, eos: bool) -> Action {
        self.body(Side::Response, host, body_size, eos)
    }

    fn on_response_trailers(&mut self, host: &mut dyn Host) -> Action {
        // Trailers end the body: members a pause held back get their headers and the body
        // they have not been shown (without end of stream: the trailers are the end), then
        // every member the trailers. Nothing is left to wait for, so pauses hold no one now.
        let (base, end) = (self.response.base, self.response.end);
        let cache = ReadCache::default();
        for (position, index) in self.order(Side::Response).into_iter().enumerate() {
            let held_back = position >= self.response.headers_delivered;
            let member = &mut self.members[index];
            if held_back {
                let mut view = MemberHost::new(host, &cache, &self.target, 0);
                member.stream.on_response_headers(&mut view, false);
                self.response.headers_delivered = position + 1;
            }
            let progress = &mut member.progress[1];
            let from = progress.shown.max(base);
            if from < end && !progress.ended {
                let mut view = MemberHost::new(host, &cache, &self.target, from - base);
                member.stream.on_response_body(&mut view, end - from, false);
                progress.shown = end;
                progress.seen = end;
            }
            let mut view = MemberHost::new(host, &cache, &self.target, 0);
            member.stream.on_response_trailers(&mut view);
        }
        Action::Continue
    }
}

// === the host as one member sees it ===

/// What the members of one bundle callback read from the proxy, fetched once and shared:
/// each fetch crosses the wasm boundary and copies, and two or three members read the same
/// headers and bodies. Kept in step with the members' own changes.
#[derive(Default)]
struct ReadCache {
    request_headers: RefCell<Option<Vec<(String, String)>>>,
    response_headers: RefCell<Option<Vec<(String, String)>>>,
    /// The last body read: (absolute start, size, bytes).
    request_body: RefCell<Option<(usize, usize, Vec<u8>)>>,
    response_body: RefCell<Option<(usize, usize, Vec<u8>)>>,
}

/// `fetch` once per (start, size); later reads of the same range are copies from the cache.
fn cached_body(
    slot: &RefCell<Option<(usize, usize, Vec<u8>)>>,
    start: usize,
    size: usize,
    fetch: impl FnOnce() -> Option<Vec<u8>>,
) -> Option<Vec<u8>> {
    let mut slot = slot.borrow_mut();
    if let Some((s, n, bytes)) = slot.as_ref()
        && (*s, *n) == (start, size)
    {
        return Some(bytes.clone());
    }
    let bytes = fetch()?;
    *slot = Some((start, size, bytes.clone()));
    Some(bytes)
}

/// The request identified once per stream: `RequestTarget::identify` asks the host first.
type SharedTarget = RefCell<Option<(Arc<Catalog>, Arc<RequestTarget>)>>;

struct MemberHost<'h, 'c> {
    inner: &'h mut dyn Host,
    cache: &'c ReadCache,
    target: &'c SharedTarget,
    /// Where this member's body view starts in the proxy's buffer.
    body_offset: usize,
    replied: bool,
    response_removed: usize,
}

impl<'h, 'c> MemberHost<'h, 'c> {
    fn new(
        inner: &'h mut dyn Host,
        cache: &'c ReadCache,
        target: &'c SharedTarget,
        body_offset: usize,
    ) -> Self {
        Self {
            inner,
            cache,
            target,
            body_offset,
            replied: false,
            response_removed: 0,
        }
    }
}

impl Host for MemberHost<'_, '_> {
    fn request_header(&self, name: &str) -> Option<String> {
        let mut cached = self.cache.request_headers.borrow_mut();
        header_value(
            cached.get_or_insert_with(|| self.inner.request_headers()),
            name,
        )
        .map(str::to_owned)
    }
    fn request_headers(&self) -> Vec<(String, String)> {
        // The first identification takes the whole list (and shares its target), so a
        // fetched list is handed over, not copied into the cache as well.
        match &*self.cache.request_headers.borrow() {
            Some(headers) => headers.clone(),
            None => self.inner.request_headers(),
        }
    }
    fn set_request_header(&mut self, name: &str, value: Option<&str>) {
        self.inner.set_request_header(name, value);
        if let Some(headers) = self.cache.request_headers.borrow_mut().as_mut() {
            set_header_value(headers, name, value);
        }
        if let Some((_, target)) = self.target.borrow_mut().as_mut() {
            Arc::make_mut(target).set_header(name, value);
        }
    }
    fn response_header(&self, name: &str) -> Option<String> {
        let mut cached = self.cache.response_headers.borrow_mut();
        header_value(
            cached.get_or_insert_with(|| self.inner.response_headers()),
            name,
        )
        .map(str::to_owned)
    }
    fn response_headers(&self) -> Vec<(String, String)> {
        let mut cached = self.cache.response_headers.borrow_mut();
        cached
            .get_or_insert_with(|| self.inner.response_headers())
            .clone()
    }
    fn set_response_header(&mut self, name: &str, value: Option<&str>) {
        self.inner.set_response_header(name, value);
        if let Some(headers) = self.cache.response_headers.borrow_mut().as_mut() {
            set_header_value(headers, name, value);
        }
    }
    fn response_trailer(&self, name: &str) -> Option<String> {
        self.inner.response_trailer(name)
    }
    fn request_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        let start = self.body_offset.saturating_add(start);
        cached_body(&self.cache.request_body, start, size, || {
            self.inner.request_body(start, size)
        })
    }
    fn response_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        let start = self.body_offset.saturating_add(start);
        cached_body(&self.cache.response_body, start, size, || {
            self.inner.response_body(start, size)
        })
    }
    fn clear_response_body(&mut self, start: usize, size: usize) {
        self.inner
            .clear_response_body(self.body_offset.saturating_add(start), size);
        self.cache.response_body.replace(None);
        self.response_removed = self.response_removed.saturating_add(size);
    }
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.inner.property(path)
    }
    fn set_property(&mut self, path: &[&str], value: &[u8]) {
        self.inner.set_property(path, value);
    }
    fn shared_data(&self, key: &str) -> SharedEntry {
        self.inner.shared_data(key)
    }
    fn set_shared_data(
        &mut self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedWriteError> {
        self.inner.set_shared_data(key, value, cas)
    }
    fn now_nanos(&self) -> u64 {
        self.inner.now_nanos()
    }
    fn send_local_reply(&mut self, reply: LocalReply) {
        self.replied = true;
        self.inner.send_local_reply(reply);
    }
    fn define_counter(&mut self, name: &str) -> Option<MetricId> {
        self.inner.define_counter(name)
    }
    fn increment_counter(&mut self, metric: MetricId, delta: i64) {
        self.inner.increment_counter(metric, delta);
    }
    fn log(&self, level: LogLevel, message: &str) {
        self.inner.log(level, message);
    }
    fn shared_target(&self, catalog: &Arc<Catalog>) -> Option<Arc<RequestTarget>> {
        match &*self.target.borrow() {
            Some((known, target)) if Arc::ptr_eq(known, catalog) => Some(Arc::clone(target)),
            _ => None,
        }
    }
    fn share_target(&self, catalog: &Arc<Catalog>, target: &Arc<RequestTarget>) {
        *self.target.borrow_mut() = Some((Arc::clone(catalog), Arc::clone(target)));
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use prost::Message as _;

    use super::*;
    use crate::test_host::TestHost;
    use meshgate_wire::grpc::message_frame as encode_frame;

    // --- the chain semantics, with members that record what they are shown ---

    /// What a recording member does at each callback.
    #[derive(Clone, Copy, Default)]
    struct Script {
        pause_request_headers: bool,
        /// Pause request body chunks until the end of stream (buffering).
        buffer_request: bool,
        reply_at_request_headers: bool,
        pause_response_headers: bool,
        buffer_response: bool,
        /// Remove the whole response body at its end (a 304).
        clear_response: bool,
    }

    type Log = Arc<std::sync::Mutex<Vec<String>>>;

    struct Recorder {
        name: &'static str,
        script: Script,
        log: Log,
    }

    impl Recorder {
        fn note(&self, event: String) {
            self.log
                .lock()
                .unwrap()
                .push(format!("{} {event}", self.name));
        }
    }

    fn text(bytes: Option<Vec<u8>>) -> String {
        String::from_utf8(bytes.unwrap_or_default()).unwrap()
    }

    impl Stream for Recorder {
        fn on_request_headers(&mut self, host: &mut dyn Host, eos: bool) -> Action {
            self.note(format!("req-headers eos={eos}"));
            if self.script.reply_at_request_headers {
                host.send_local_reply(LocalReply {
                    status: 429,
                    headers: Vec::new(),
                    body: Vec::new(),
                    grpc_status: None,
                });
                return Action::Pause;
            }
            if self.script.pause_request_headers {
                Action::Pause
            } else {
                Action::Continue
            }
        }
        fn on_request_body(&mut self, host: &mut dyn Host, size: usize, eos: bool) -> Action {
            self.note(format!(
                "req-body {:?} eos={eos}",
                text(host.request_body(0, size))
            ));
            if self.script.buffer_request && !eos {
                Action::Pause
            } else {
                Action::Continue
            }
        }
        fn on_response_headers(&mut self, _: &mut dyn Host, eos: bool) -> Action {
            self.note(format!("resp-headers eos={eos}"));
            if self.script.pause_response_headers {
                Action::Pause
            } else {
                Action::Continue
            }
        }
        fn on_response_body(&mut self, host: &mut dyn Host, size: usize, eos: bool) -> Action {
            self.note(format!(
                "resp-body {:?} eos={eos}",
                text(host.response_body(0, size))
            ));
            if self.script.clear_response && eos {
                host.clear_response_body(0, size);
            }
            if self.script.buffer_response && !eos {
                Action::Pause
            } else {
                Action::Continue
            }
        }
        fn on_response_trailers(&mut self, _: &mut dyn Host) -> Action {
            self.note("resp-trailers".into());
            Action::Continue
        }
    }

    fn bundle(scripts: &[(&'static str, Script)]) -> (BundleStream, Log) {
        let log: Log = Arc::default();
        let members = scripts
            .iter()
            .map(|(name, script)| {
                Member::new(Box::new(Recorder {
                    name,
                    script: *script,
                    log: Arc::clone(&log),
                }))
            })
            .collect();
        (BundleStream::of(members), log)
    }

    /// The proxy's side of a body: the buffer keeps growing while the bundle pauses and
    /// starts over after it continues.
    struct Proxy {
        buffered: Vec<u8>,
    }

    impl Proxy {
        fn request_chunk(
            &mut self,
            stream: &mut BundleStream,
            host: &mut TestHost,
            chunk: &str,
            eos: bool,
        ) -> Action {
            self.buffered.extend_from_slice(chunk.as_bytes());
            host.request_body.clone_from(&self.buffered);
            let action = stream.on_request_body(host, self.buffered.len(), eos);
            if action == Action::Continue {
                self.buffered.clear();
            }
            action
        }
        fn response_chunk(
            &mut self,
            stream: &mut BundleStream,
            host: &mut TestHost,
            chunk: &str,
            eos: bool,
        ) -> Action {
            self.buffered.extend_from_slice(chunk.as_bytes());
            host.response_body.clone_from(&self.buffered);
            let action = stream.on_response_body(host, self.buffered.len(), eos);
            if action == Action::Continue {
                self.buffered.clear();
            } else {
                self.buffered.clone_from(&host.response_body);
            }
            action
        }
    }

    fn taken(log: &Log) -> Vec<String> {
        std::mem::take(&mut *log.lock().unwrap())
    }

    #[test]
    fn a_pausing_member_holds_the_ones_after_it_and_each_sees_its_own_view() {
        let buffering = Script {
            pause_request_headers: true,
            buffer_request: true,
            ..Script::default()
        };
        let (mut stream, log) = bundle(&[
            ("a", Script::default()),
            ("b", buffering),
            ("c", Script::default()),
        ]);
        let mut host = TestHost::default();
        let mut proxy = Proxy {
            buffered: Vec::new(),
        };
        assert_eq!(stream.on_request_headers(&mut host, false), Action::Pause);
        assert_eq!(
            taken(&log),
            ["a req-headers eos=false", "b req-headers eos=false"]
        );

        assert_eq!(
            proxy.request_chunk(&mut stream, &mut host, "ab", false),
            Action::Pause
        );
        assert_eq!(
            taken(&log),
            [
                r#"a req-body "ab" eos=false"#,
                r#"b req-body "ab" eos=false"#
            ]
        );

        assert_eq!(
            proxy.request_chunk(&mut stream, &mut host, "cd", true),
            Action::Continue
        );
        assert_eq!(
            taken(&log),
            [
                // a streams: only the new bytes; b buffers: all of them; c was held back.
                r#"a req-body "cd" eos=true"#,
                r#"b req-body "abcd" eos=true"#,
                "c req-headers eos=false",
                r#"c req-body "abcd" eos=true"#,
            ]
        );
    }

    #[test]
    fn streaming_members_see_each_chunk_once() {
        let (mut stream, log) = bundle(&[("a", Script::default()), ("b", Script::default())]);
        let mut host = TestHost::default();
        let mut proxy = Proxy {
            buffered: Vec::new(),
        };
        assert_eq!(
            stream.on_request_headers(&mut host, false),
            Action::Continue
        );
        proxy.request_chunk(&mut stream, &mut host, "ab", false);
        proxy.request_chunk(&mut stream, &mut host, "cd", true);
        assert_eq!(
            taken(&log)[2..],
            [
                r#"a req-body "ab" eos=false"#,
                r#"b req-body "ab" eos=false"#,
                r#"a req-body "cd" eos=true"#,
                r#"b req-body "cd" eos=true"#,
            ]
        );
    }

    #[test]
    fn a_local_reply_stops_the_request_and_only_earlier_members_see_the_response() {
        let replier = Script {
            reply_at_request_headers: true,
            ..Script::default()
        };
        let (mut stream, log) = bundle(&[
            ("a", Script::default()),
            ("b", replier),
            ("c", Script::default()),
        ]);
        let mut host = TestHost::default();
        assert_eq!(stream.on_request_headers(&mut host, true), Action::Pause);
        assert_eq!(host.reply.as_ref().map(|r| r.status), Some(429));
        assert_eq!(stream.on_request_body(&mut host, 0, true), Action::Pause);
        stream.on_response_headers(&mut host, true);
        assert_eq!(
            taken(&log),
            [
                "a req-headers eos=true",
                "b req-headers eos=true",
                "a resp-headers eos=true",
            ]
        );
    }

    #[test]
    fn the_response_runs_in_reverse_and_a_cleared_body_shortens_the_rest() {
        let not_modified = Script {
            pause_response_headers: true,
            buffer_response: true,
            clear_response: true,
            ..Script::default()
        };
        // Request order a, b: b is nearest the upstream, so it sees the response first.
        let (mut stream, log) = bundle(&[("a", Script::default()), ("b", not_modified)]);
        let mut host = TestHost::default();
        stream.on_request_headers(&mut host, true);
        taken(&log);
        let mut proxy = Proxy {
            buffered: Vec::new(),
        };
        assert_eq!(stream.on_response_headers(&mut host, false), Action::Pause);
        assert_eq!(
            proxy.response_chunk(&mut stream, &mut host, "{\"id\"", false),
            Action::Pause
        );
        assert_eq!(
            proxy.response_chunk(&mut stream, &mut host, ":1}", true),
            Action::Continue
        );
        assert_eq!(
            taken(&log),
            [
                "b resp-headers eos=false",
                r#"b resp-body "{\"id\"" eos=false"#,
                r#"b resp-body "{\"id\":1}" eos=true"#,
                "a resp-headers eos=false",
                r#"a resp-body "" eos=true"#,
            ]
        );
        assert!(host.response_body.is_empty());
    }

    #[test]
    fn trailers_release_held_members_with_the_body_they_missed() {
        let holder = Script {
            pause_response_headers: true,
            buffer_response: true,
            ..Script::default()
        };
        let (mut stream, log) = bundle(&[("a", Script::default()), ("b", holder)]);
        let mut host = TestHost::default();
        stream.on_request_headers(&mut host, true);
        taken(&log);
        let mut proxy = Proxy {
            buffered: Vec::new(),
        };
        stream.on_response_headers(&mut host, false);
        proxy.response_chunk(&mut stream, &mut host, "frame", false);
        assert_eq!(stream.on_response_trailers(&mut host), Action::Continue);
        assert_eq!(
            taken(&log),
            [
                "b resp-headers eos=false",
                r#"b resp-body "frame" eos=false"#,
                "b resp-trailers",
                "a resp-headers eos=false",
                r#"a resp-body "frame" eos=false"#,
                "a resp-trailers",
            ]
        );
    }

    // --- the real filters in one bundle ---

    const ALL_THREE: &str = r#"{
        "spanEnrichment": {"fields": [
            {"path": "id"},
            {"path": "user.email", "from": "response", "redact": "sha256"}
        ]},
        "rateLimit": {"rules": [{"name": "per-id", "methods": ["user.UserService/GetUser"],
                                 "key": [{"type": "field", "path": "id"}],
                                 "requests": 1, "periodSeconds": 60}]},
        "cacheHeaders": {"policies": [{"name": "read", "methods": ["user.UserService/GetUser"],
                                       "cacheControl": {"scope": "private", "maxAge": 30},
                                       "etag": true}]}
    }"#;

    fn configure(json: &str, host: &mut TestHost) -> Result<Arc<Bundle>, ConfigError> {
        Bundle::configure(json.as_bytes(), host).map(Arc::new)
    }

    // GET /v1/users/{id} answers the user itself (`response_body: "user"`).
    const USER_JSON: &[u8] = br#"{"id":"u1","email":"ada@example.com"}"#;

    /// A REST GetUser through the bundle: the request phase, then a 200 JSON response.
    fn rest_get(root: &Arc<Bundle>, host: &mut TestHost, id: &str, extra: &[(&str, &str)]) {
        host.request_headers = vec![
            (":method".into(), "GET".into()),
            (":path".into(), format!("/v1/users/{id}")),
            ("x-meshgate-grpc-method".into(), "forged".into()),
        ];
        host.request_headers.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        host.reply = None;
        let mut stream = root.new_stream();
        if stream.on_request_headers(host, true) == Action::Pause {
            return;
        }
        host.response_headers = vec![
            (":status".into(), "200".into()),
            ("content-type".into(), "application/json".into()),
        ];
        host.response_body = USER_JSON.to_vec();
        // Paused or not, the proxy goes on to deliver the (here whole) body.
        stream.on_response_headers(host, false);
        stream.on_response_body(host, USER_JSON.len(), true);
    }

    #[test]
    fn all_three_run_on_a_rest_request_in_one_stream() {
        let mut host = TestHost::default();
        let root = configure(ALL_THREE, &mut host).unwrap();
        rest_get(&root, &mut host, "u1", &[]);
        assert!(host.reply.is_none());
        // span-enrichment: forged header replaced, method and path field emitted.
        assert_eq!(
            host.request_header("x-meshgate-grpc-method").as_deref(),
            Some("GetUser")
        );
        assert_eq!(
            host.request_header("x-meshgate-field-id").as_deref(),
            Some("u1")
        );
        assert!(
            host.filter_state["meshgate.response.user.email"].starts_with(b"sha256:"),
            "the response field is read from the JSON body"
        );
        // cache-headers on the response.
        assert_eq!(
            host.response_header("cache-control").as_deref(),
            Some("private, max-age=30")
        );
        let etag = host.response_header("etag").unwrap();
        assert_eq!(host.counter("meshgate_rate_limit_allowed"), 1);

        // The same id again: limited by the per-id rule, and cache-headers never runs.
        rest_get(&root, &mut host, "u1", &[]);
        assert_eq!(host.reply.as_ref().map(|r| r.status), Some(429));
        assert_eq!(host.counter("meshgate_rate_limit_limited"), 1);
        assert_eq!(host.counter("meshgate_cache_headers_etag"), 1);

        // Another id with the ETag: 304 without the body.
        rest_get(&root, &mut host, "u2", &[("if-none-match", &etag)]);
        assert_eq!(host.response_header(":status").as_deref(), Some("304"));
        assert!(host.response_body.is_empty());
        assert_eq!(host.counter("meshgate_cache_headers_not_modified"), 1);
    }

    #[test]
    fn a_grpc_body_reaches_every_member_that_reads_it() {
        let mut host = TestHost::default();
        let root = configure(ALL_THREE, &mut host).unwrap();
        let body =
            encode_frame(&meshgate_proto::user::GetUserRequest { id: "g7".into() }.encode_to_vec());
        for round in 0..2 {
            host.request_headers = vec![
                (":method".into(), "POST".into()),
                (":path".into(), "/user.UserService/GetUser".into()),
                ("content-type".into(), "application/grpc".into()),
            ];
            host.reply = None;
            let mut stream = root.new_stream();
            let mut proxy = Proxy {
                buffered: Vec::new(),
            };
            assert_eq!(stream.on_request_headers(&mut host, false), Action::Pause);
            let (first, rest) = body.split_at(3);
            let first = std::str::from_utf8(first).unwrap();
            assert_eq!(
                proxy.request_chunk(&mut stream, &mut host, first, false),
                Action::Pause
            );
            let rest = String::from_utf8(rest.to_vec()).unwrap();
            let action = proxy.request_chunk(&mut stream, &mut host, &rest, true);
            assert_eq!(
                host.request_header("x-meshgate-field-id").as_deref(),
                Some("g7")
            );
            if round == 0 {
                assert_eq!(action, Action::Continue);
            } else {
                assert_eq!(
                    action,
                    Action::Pause,
                    "the id read from the body is limited"
                );
                assert_eq!(host.reply.as_ref().and_then(|r| r.grpc_status), Some(8));
            }
        }
    }

    /// Counts the reads that cross the wasm boundary in a real proxy.
    struct CountingHost {
        inner: TestHost,
        reads: RefCell<Vec<&'static str>>,
    }

    impl CountingHost {
        fn read(&self, what: &'static str) {
            self.reads.borrow_mut().push(what);
        }
        fn count(&self, what: &str) -> usize {
            self.reads.borrow().iter().filter(|r| **r == what).count()
        }
    }

    impl Host for CountingHost {
        fn request_header(&self, name: &str) -> Option<String> {
            self.read("request_header");
            self.inner.request_header(name)
        }
        fn request_headers(&self) -> Vec<(String, String)> {
            self.read("request_headers");
            self.inner.request_headers()
        }
        fn set_request_header(&mut self, name: &str, value: Option<&str>) {
            self.inner.set_request_header(name, value);
        }
        fn response_header(&self, name: &str) -> Option<String> {
            self.read("response_header");
            self.inner.response_header(name)
        }
        fn response_headers(&self) -> Vec<(String, String)> {
            self.read("response_headers");
            self.inner.response_headers()
        }
        fn set_response_header(&mut self, name: &str, value: Option<&str>) {
            self.inner.set_response_header(name, value);
        }
        fn response_trailer(&self, name: &str) -> Option<String> {
            self.inner.response_trailer(name)
        }
        fn request_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
            self.read("request_body");
            self.inner.request_body(start, size)
        }
        fn response_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
            self.read("response_body");
            self.inner.response_body(start, size)
        }
        fn clear_response_body(&mut self, start: usize, size: usize) {
            self.inner.clear_response_body(start, size);
        }
        fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
            self.inner.property(path)
        }
        fn set_property(&mut self, path: &[&str], value: &[u8]) {
            self.inner.set_property(path, value);
        }
        fn shared_data(&self, key: &str) -> SharedEntry {
            self.inner.shared_data(key)
        }
        fn set_shared_data(
            &mut self,
            key: &str,
            value: &[u8],
            cas: Option<u32>,
        ) -> Result<(), SharedWriteError> {
            self.inner.set_shared_data(key, value, cas)
        }
        fn now_nanos(&self) -> u64 {
            self.inner.now_nanos()
        }
        fn send_local_reply(&mut self, reply: LocalReply) {
            self.inner.send_local_reply(reply);
        }
        fn define_counter(&mut self, name: &str) -> Option<MetricId> {
            self.inner.define_counter(name)
        }
        fn increment_counter(&mut self, metric: MetricId, delta: i64) {
            self.inner.increment_counter(metric, delta);
        }
        fn log(&self, level: LogLevel, message: &str) {
            self.inner.log(level, message);
        }
    }

    #[test]
    fn members_share_one_fetch_of_each_header_map_and_body() {
        let mut host = CountingHost {
            inner: TestHost::default(),
            reads: RefCell::default(),
        };
        let root = configure(ALL_THREE, &mut host.inner).unwrap();
        let body =
            encode_frame(&meshgate_proto::user::GetUserRequest { id: "c1".into() }.encode_to_vec());
        host.inner.request_headers = vec![
            (":method".into(), "POST".into()),
            (":path".into(), "/user.UserService/GetUser".into()),
            ("content-type".into(), "application/grpc".into()),
        ];
        host.inner.request_body.clone_from(&body);
        let mut stream = root.new_stream();
        assert_eq!(stream.on_request_headers(&mut host, false), Action::Pause);
        assert_eq!(
            stream.on_request_body(&mut host, body.len(), true),
            Action::Continue
        );
        // Two members read the id from the body; the first to identify the request fetched
        // the headers and the others got its target.
        assert_eq!(host.count("request_body"), 1);
        assert_eq!(host.count("request_headers"), 1, "once per request");
        assert_eq!(host.count("request_header"), 0);

        // REST: enrichment and the ETag both read the JSON response; cache-headers reads
        // several response headers and enrichment grpc-status.
        host.reads.borrow_mut().clear();
        host.inner.request_headers = vec![
            (":method".into(), "GET".into()),
            (":path".into(), "/v1/users/c2".into()),
        ];
        let mut stream = root.new_stream();
        assert_eq!(stream.on_request_headers(&mut host, true), Action::Continue);
        host.inner.response_headers = vec![
            (":status".into(), "200".into()),
            ("content-type".into(), "application/json".into()),
        ];
        host.inner.response_body = USER_JSON.to_vec();
        assert_eq!(stream.on_response_headers(&mut host, false), Action::Pause);
        stream.on_response_body(&mut host, USER_JSON.len(), true);
        assert!(host.inner.response_header("etag").is_some());
        assert!(
            host.inner
                .filter_state
                .contains_key("meshgate.response.user.email")
        );
        assert_eq!(host.count("response_header"), 0);
        assert_eq!(host.count("response_headers"), 2, "once per callback");
        assert_eq!(host.count("response_body"), 1);
    }

    #[test]
    fn config_errors_name_the_member_and_nothing_is_half_configured() {
        let mut host = TestHost::default();
        let error = |json: &str| {
            configure(json, &mut TestHost::default())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(error("{}").contains("no filter configured"));
        assert!(error(r#"{"rateLimits": {}}"#).contains("unknown field `rateLimits`"));
        let member = error(r#"{"cacheHeaders": {"policies": [{"name": "x"}]}}"#);
        assert!(member.starts_with("cacheHeaders: "), "{member}");
        let member = error(r#"{"spanEnrichment": {"fields": [{"path": "nope"}]}}"#);
        assert!(member.starts_with("spanEnrichment: "), "{member}");
        let one = r#"{"rateLimit": {"rules": [{"name": "all", "key": [{"type": "sourceAddress"}],
                                               "requests": 1, "periodSeconds": 1}]}}"#;
        assert!(configure(one, &mut host).is_ok());
    }
}
