//! Runs the meshgate proxy-wasm filters natively, on `proxy-wasm-host` (wasmtime), so the edge
//! gateway enforces the same policies with the same `.wasm` and the same pluginConfig JSON as
//! the Istio sidecars. The integration tests and benchmarks drive the modules through it too.
//!
//! ```text
//! Runtime::new()                       one wasmtime engine + linked ABI per process
//! Plugin::load(&rt, name, wasm, json, PluginOptions { workers, clock, .. })
//!                                      N worker VMs ("Envoy worker threads") sharing one
//!                                      shared-data store; refused config -> LoadError::Refused
//! Chain::new(vec![plugins..])          filters in order (request in order, response reversed)
//! chain.on_request(Request) -> Exchange
//!     exchange.local_reply()           Some(response): send it, skip upstream
//!     exchange.request()               the request to forward (headers mutated by filters)
//! exchange.on_response(Response) -> Completed { response, attributes }
//! ```
//! Attributes are the filter state the filters set (`meshgate.grpc_method`, ...): what the
//! gateway puts on its own span.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use proxy_wasm_host::abi::v0_2_1::types::{
    BufferType, LogLevel, MapType, MetricType, Status, StreamType,
};
use proxy_wasm_host::abi::v0_2_1::{
    Access, Clock, ContextId, Guest, GuestError, Host as AbiHost, InMemoryStore,
    InMemoryStoreLimits, Invocation, LocalResponse, LogContext, LogSink, MetricId, PluginConfig,
    QueueId, SharedServices, SharedValue, Started, StreamState, SystemClock, VmServices,
};
use proxy_wasm_host::{Buffer, Engine, HeaderMap, Limits, Module, VecHeaderMap};

// The gateway moves exchanges across tasks and shares chains between threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    const fn assert_send<T: Send>() {}
    assert_send_sync::<Chain>();
    assert_send_sync::<Plugin>();
    assert_send::<Exchange>();
};

// === errors ===

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

/// A guest trapped or misbehaved during a request (the worker is rebuilt for the next one).
#[derive(Debug, thiserror::Error)]
#[error("plugin {plugin} failed: {source}")]
pub struct FilterError {
    pub plugin: String,
    pub source: GuestError,
}

// === runtime ===

/// One wasmtime engine and the linked ABI, shared by every plugin; compiled modules are
/// cached by content, so loading the same `.wasm` again (more plugins, tests) is cheap.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    host: AbiHost,
    modules: Arc<Mutex<BTreeMap<u64, Module>>>,
}

impl Runtime {
    pub fn new() -> Result<Self, proxy_wasm_host::Error> {
        let engine = Engine::new()?;
        let host = AbiHost::new(&engine)?;
        Ok(Self {
            engine,
            host,
            modules: Arc::new(Mutex::new(BTreeMap::new())),
        })
    }

    fn compile(&self, wasm: &[u8]) -> Result<Module, proxy_wasm_host::Error> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        wasm.hash(&mut hasher);
        let key = hasher.finish();
        if let Some(module) = lock(&self.modules).get(&key) {
            return Ok(module.clone());
        }
        let module = Module::new(&self.engine, wasm)?;
        lock(&self.modules).insert(key, module.clone());
        Ok(module)
    }
}

/// A clock tests and benchmarks set by hand (nanoseconds since the epoch).
#[derive(Debug)]
pub struct ManualClock {
    nanos: AtomicU64,
}

impl ManualClock {
    pub fn new(start_nanos: u64) -> Arc<Self> {
        Arc::new(Self {
            nanos: AtomicU64::new(start_nanos),
        })
    }
    pub fn advance(&self, nanos: u64) {
        self.nanos.fetch_add(nanos, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn realtime_nanos(&self) -> u64 {
        self.nanos.load(Ordering::SeqCst)
    }
    fn monotonic_nanos(&self) -> u64 {
        self.nanos.load(Ordering::SeqCst)
    }
}

pub struct PluginOptions {
    /// Worker VMs (Envoy runs one per worker thread); they share data and metrics.
    pub workers: usize,
    pub clock: Arc<dyn Clock>,
    pub limits: Limits,
}

impl Default for PluginOptions {
    fn default() -> Self {
        Self {
            workers: 1,
            clock: Arc::new(SystemClock),
            limits: Limits::default(),
        }
    }
}

// === plugin ===

struct Worker {
    guest: Guest,
    root: ContextId,
}

/// One filter module with its config, running in `workers` VMs.
pub struct Plugin {
    name: String,
    module: Module,
    runtime: Runtime,
    config: Vec<u8>,
    services: VmServices,
    limits: Limits,
    workers: Vec<Mutex<Worker>>,
    next_worker: AtomicUsize,
    store: Arc<MeteredStore>,
    logs: Arc<LogBuffer>,
}

/// A small per-thread number, handed out in order of first use, per counter: with `n` threads
/// and `n` or more VMs, no two threads share a VM.
fn thread_slot(counter: &AtomicUsize) -> usize {
    thread_local! {
        // (counter address, slot) pairs: one entry per plugin this thread has run.
        static SLOTS: std::cell::RefCell<Vec<(usize, usize)>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let key = std::ptr::from_ref(counter) as usize;
    SLOTS.with(|slots| {
        let mut slots = slots.borrow_mut();
        if let Some(&(_, slot)) = slots.iter().find(|(k, _)| *k == key) {
            return slot;
        }
        let slot = counter.fetch_add(1, Ordering::Relaxed);
        slots.push((key, slot));
        slot
    })
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Plugin {
    /// Compiles `wasm` and starts `options.workers` VMs configured with `config_json`.
    pub fn load(
        runtime: &Runtime,
        name: &str,
        wasm: &[u8],
        config_json: &str,
        options: PluginOptions,
    ) -> Result<Self, LoadError> {
        if options.workers == 0 {
            return Err(LoadError::NoWorkers);
        }
        let module = runtime.compile(wasm).map_err(|source| LoadError::Runtime {
            plugin: name.to_owned(),
            source,
        })?;
        let store = Arc::new(MeteredStore::default());
        let logs = Arc::new(LogBuffer::default());
        let services = VmServices::new(Arc::clone(&logs) as Arc<dyn LogSink>)
            .with_clock(options.clock)
            .with_vm_id(name.as_bytes().to_vec())
            .with_log_level(LogLevel::Info)
            .with_shared(Arc::clone(&store) as Arc<dyn SharedServices>);
        let mut plugin = Self {
            name: name.to_owned(),
            module,
            runtime: runtime.clone(),
            config: config_json.as_bytes().to_vec(),
            services,
            limits: options.limits,
            workers: Vec::new(),
            next_worker: AtomicUsize::new(0),
            store,
            logs,
        };
        for _ in 0..options.workers {
            let worker = plugin.start_worker()?;
            plugin.workers.push(Mutex::new(worker));
        }
        Ok(plugin)
    }

    /// [`Plugin::load`] from a file.
    pub fn load_file(
        runtime: &Runtime,
        name: &str,
        path: &Path,
        config_json: &str,
        options: PluginOptions,
    ) -> Result<Self, LoadError> {
        let wasm = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::load(runtime, name, &wasm, config_json, options)
    }

    fn start_worker(&self) -> Result<Worker, LoadError> {
        let guest_error = |source| LoadError::Guest {
            plugin: self.name.clone(),
            source,
        };
        let mut guest = Guest::new(
            &self.runtime.host,
            &self.module,
            self.services.clone(),
            &self.limits,
        )
        .map_err(guest_error)?;
        let plugin = PluginConfig::new()
            .with_name(self.name.as_bytes().to_vec())
            .with_configuration(self.config.clone());
        match guest.start(plugin).map_err(guest_error)? {
            Started::Serving(root) => Ok(Worker { guest, root }),
            Started::Refused { .. } => Err(LoadError::Refused {
                plugin: self.name.clone(),
                reason: self
                    .logs
                    .last_at_least(LogLevel::Error)
                    .unwrap_or_else(|| "no reason logged".to_owned()),
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// A counter the filter defined (e.g. `meshgate_rate_limit_allowed`), summed over workers.
    pub fn counter(&self, name: &str) -> i64 {
        self.store.counter(name)
    }

    /// The most recent log lines of this plugin's VMs (bounded).
    pub fn logs(&self) -> Vec<String> {
        lock(&self.logs.lines)
            .iter()
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// The calling thread's own VM, as Envoy gives each worker thread its own: a thread keeps
    /// reusing one instance (its memory stays in that core's caches, its lock uncontended).
    /// Threads beyond `workers` share VMs in turn.
    fn pick_worker(&self) -> usize {
        thread_slot(&self.next_worker) % self.workers.len()
    }

    /// Runs `body` on a worker, rebuilding the worker first if an earlier trap poisoned it.
    fn on_worker<R>(
        &self,
        index: usize,
        state: ExchangeState,
        body: impl FnOnce(
            &mut proxy_wasm_host::abi::v0_2_1::CallScope<'_, ExchangeState>,
            ContextId,
        ) -> Result<R, GuestError>,
    ) -> (Result<R, FilterError>, ExchangeState) {
        let Some(slot) = self.workers.get(index % self.workers.len().max(1)) else {
            return (
                Err(FilterError {
                    plugin: self.name.clone(),
                    source: GuestError::ContextIdsExhausted,
                }),
                state,
            );
        };
        let mut worker = lock(slot);
        if worker.guest.is_poisoned()
            && let Ok(fresh) = self.start_worker()
        {
            *worker = fresh;
        }
        let root = worker.root;
        let (result, state) = worker.guest.with(state, |scope| body(scope, root));
        let result = result.map_err(|source| FilterError {
            plugin: self.name.clone(),
            source,
        });
        (result, state)
    }
}

// === requests ===

/// An HTTP request as the filters see it. Header names are lower-cased on entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub authority: String,
    pub scheme: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// `source.address` (`ip:port`).
    pub source_address: Option<String>,
    /// `connection.uri_san_peer_certificate` (the SPIFFE id of an mTLS peer).
    pub peer_principal: Option<String>,
}

impl Request {
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.to_owned(),
            path: path.to_owned(),
            authority: "localhost".to_owned(),
            scheme: "http".to_owned(),
            ..Self::default()
        }
    }
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }
    #[must_use]
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
    #[must_use]
    pub fn source(mut self, address: &str) -> Self {
        self.source_address = Some(address.to_owned());
        self
    }
    #[must_use]
    pub fn principal(mut self, spiffe_id: &str) -> Self {
        self.peer_principal = Some(spiffe_id.to_owned());
        self
    }
    pub fn header_value(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }
}

/// An HTTP response (upstream's, or a filter's local reply).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
}

impl Response {
    pub fn new(status: u16) -> Self {
        Self {
            status,
            ..Self::default()
        }
    }
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }
    #[must_use]
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
    #[must_use]
    pub fn trailer(mut self, name: &str, value: &str) -> Self {
        self.trailers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }
    pub fn header_value(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }
}

fn header_of<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The filters of one listener, in order.
#[derive(Clone)]
pub struct Chain {
    plugins: Vec<Arc<Plugin>>,
}

struct StreamRef {
    plugin: Arc<Plugin>,
    worker: usize,
    context: ContextId,
}

/// One request/response through the chain. Dropping it without [`Exchange::on_response`]
/// still ends the filters' stream contexts.
pub struct Exchange {
    streams: Vec<StreamRef>,
    state: Option<ExchangeState>,
    request: Request,
    local_reply: Option<Response>,
}

/// The outcome of a whole exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    pub response: Response,
    /// Filter state set by the filters, in order (`meshgate.grpc_method` → `GetUser`, ...).
    pub attributes: Vec<(String, String)>,
}

impl Chain {
    pub fn new(plugins: Vec<Arc<Plugin>>) -> Self {
        Self { plugins }
    }

    pub fn plugins(&self) -> &[Arc<Plugin>] {
        &self.plugins
    }

    /// Runs the request phase on the calling thread's worker of each plugin.
    pub fn on_request(&self, request: Request) -> Result<Exchange, FilterError> {
        self.on_request_at(None, request)
    }

    /// Runs the request phase on a chosen worker (`worker % workers`), as tests need.
    pub fn on_request_on_worker(
        &self,
        worker: usize,
        request: Request,
    ) -> Result<Exchange, FilterError> {
        self.on_request_at(Some(worker), request)
    }

    fn on_request_at(
        &self,
        worker: Option<usize>,
        request: Request,
    ) -> Result<Exchange, FilterError> {
        let mut state = ExchangeState::for_request(&request);
        let mut exchange = Exchange {
            streams: Vec::new(),
            state: None,
            request,
            local_reply: None,
        };
        let has_body = !exchange.request.body.is_empty();
        for plugin in &self.plugins {
            let index = worker.unwrap_or_else(|| plugin.pick_worker());
            let (result, back) = plugin.on_worker(index, state, |scope, root| {
                let context = scope.on_context_create(Some(root))?;
                scope.on_request_headers(context, 0, !has_body)?;
                let replied = scope.stream().local.is_some();
                if has_body && !replied {
                    let size = u32::try_from(scope.stream().request_body.len()).unwrap_or(u32::MAX);
                    scope.on_request_body(context, size, true)?;
                }
                Ok(context)
            });
            state = back;
            let context = result?;
            exchange.streams.push(StreamRef {
                plugin: Arc::clone(plugin),
                worker: index,
                context,
            });
            if let Some(local) = state.local.take() {
                exchange.local_reply = Some(local_to_response(local, &exchange.request));
                break;
            }
        }
        state.apply_to(&mut exchange.request);
        exchange.state = Some(state);
        Ok(exchange)
    }
}

/// Envoy's local-reply shape: a gRPC status on a gRPC request becomes a trailers-only
/// response (`grpc-status` and the body as `grpc-message` in the headers).
fn local_to_response(local: LocalResponse<'static>, request: &Request) -> Response {
    let mut headers: Vec<(String, String)> = local
        .headers
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).to_ascii_lowercase(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect();
    let is_grpc = request.header_value("content-type").is_some_and(|ct| {
        ct.starts_with("application/grpc") && !ct.starts_with("application/grpc-web")
    });
    match local.grpc_status {
        Some(code) if is_grpc => {
            headers.insert(0, ("content-type".into(), "application/grpc".into()));
            headers.push(("grpc-status".into(), code.to_string()));
            if !local.body.is_empty() {
                headers.push((
                    "grpc-message".into(),
                    String::from_utf8_lossy(&local.body).into_owned(),
                ));
            }
            Response {
                status: 200,
                headers,
                body: Vec::new(),
                trailers: Vec::new(),
            }
        }
        _ => Response {
            status: u16::try_from(local.status_code).unwrap_or(500),
            headers,
            body: local.body.into_owned(),
            trailers: Vec::new(),
        },
    }
}

impl Exchange {
    /// The request to forward upstream, with the filters' header changes.
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// The response a filter sent instead of forwarding (429, RESOURCE_EXHAUSTED, ...).
    pub fn local_reply(&self) -> Option<&Response> {
        self.local_reply.as_ref()
    }

    /// Filter state set so far.
    pub fn attributes(&self) -> Vec<(String, String)> {
        self.state
            .as_ref()
            .map(ExchangeState::attributes)
            .unwrap_or_default()
    }

    /// Runs the response phase (filters in reverse order) and ends the streams. With a local
    /// reply, pass that reply (the response phase is skipped, as filters already answered).
    pub fn on_response(mut self, response: Response) -> Result<Completed, FilterError> {
        let mut state = self.state.take().unwrap_or_default();
        if self.local_reply.is_some() {
            let attributes = state.attributes();
            self.state = Some(state);
            return Ok(Completed {
                response,
                attributes,
            });
        }
        state.set_response(&response);
        let has_body = !response.body.is_empty();
        let has_trailers = !response.trailers.is_empty();
        // The response phase, then the stream's end, in one call per plugin (each call takes
        // the worker's lock and lends the state to the guest).
        while let Some(stream) = self.streams.pop() {
            let context = stream.context;
            let (result, back) = stream.plugin.on_worker(stream.worker, state, |scope, _| {
                scope.on_response_headers(context, 0, !has_body && !has_trailers)?;
                if has_body {
                    let size =
                        u32::try_from(scope.stream().response_body.len()).unwrap_or(u32::MAX);
                    scope.on_response_body(context, size, !has_trailers)?;
                }
                if has_trailers {
                    scope.on_response_trailers(context, 0)?;
                }
                end_stream(scope, context)
            });
            state = back;
            if let Err(error) = result {
                self.state = Some(state);
                return Err(error);
            }
        }
        let completed = Completed {
            response: state.response(),
            attributes: state.attributes(),
        };
        self.state = Some(state);
        Ok(completed)
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let mut state = self.state.take().unwrap_or_default();
        for stream in self.streams.drain(..) {
            let context = stream.context;
            let (_, back) = stream
                .plugin
                .on_worker(stream.worker, state, |scope, _| end_stream(scope, context));
            state = back;
        }
    }
}

/// Envoy's end of a stream: done, log, delete.
fn end_stream(
    scope: &mut proxy_wasm_host::abi::v0_2_1::CallScope<'_, ExchangeState>,
    context: ContextId,
) -> Result<(), GuestError> {
    scope.on_done(context)?;
    scope.on_log(context)?;
    scope.on_delete(context)?;
    Ok(())
}

// === the stream state lent to the guests ===

#[derive(Default)]
struct ExchangeState {
    request_headers: VecHeaderMap,
    request_body: Vec<u8>,
    response_headers: VecHeaderMap,
    response_body: Vec<u8>,
    response_trailers: VecHeaderMap,
    /// The request's properties (`request.path`, `source.address`, ...); few, so a list.
    properties: Vec<(&'static str, Vec<u8>)>,
    filter_state: Vec<(String, Vec<u8>)>,
    local: Option<LocalResponse<'static>>,
}

fn to_map(pairs: &[(String, String)]) -> VecHeaderMap {
    pairs
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase().into_bytes(), v.clone().into_bytes()))
        .collect()
}

fn from_map(map: &VecHeaderMap) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let _ = map.for_each_pair(&mut |k, v| {
        out.push((
            String::from_utf8_lossy(k).into_owned(),
            String::from_utf8_lossy(v).into_owned(),
        ));
        std::ops::ControlFlow::Continue(())
    });
    out
}

impl ExchangeState {
    fn for_request(request: &Request) -> Self {
        let pseudo = [
            (":method", &request.method),
            (":path", &request.path),
            (":authority", &request.authority),
            (":scheme", &request.scheme),
        ];
        let request_headers = pseudo
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .chain(
                request
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase().into_bytes(), v.as_bytes().to_vec())),
            )
            .collect();
        let mut properties = vec![
            ("request.method", request.method.as_bytes().to_vec()),
            ("request.path", request.path.as_bytes().to_vec()),
            ("request.host", request.authority.as_bytes().to_vec()),
        ];
        if let Some(source) = &request.source_address {
            properties.push(("source.address", source.as_bytes().to_vec()));
        }
        if let Some(principal) = &request.peer_principal {
            properties.push((
                "connection.uri_san_peer_certificate",
                principal.as_bytes().to_vec(),
            ));
        }
        Self {
            request_headers,
            request_body: request.body.clone(),
            properties,
            ..Self::default()
        }
    }

    /// Copies the filters' request changes back (pseudo-headers into the fields).
    fn apply_to(&self, request: &mut Request) {
        let mut headers = Vec::new();
        for (k, v) in from_map(&self.request_headers) {
            match k.as_str() {
                ":method" => request.method = v,
                ":path" => request.path = v,
                ":authority" => request.authority = v,
                ":scheme" => request.scheme = v,
                _ => headers.push((k, v)),
            }
        }
        request.headers = headers;
        request.body.clone_from(&self.request_body);
    }

    fn set_response(&mut self, response: &Response) {
        let mut headers = vec![(":status".to_owned(), response.status.to_string())];
        headers.extend(response.headers.iter().cloned());
        self.response_headers = to_map(&headers);
        self.response_body.clone_from(&response.body);
        self.response_trailers = to_map(&response.trailers);
    }

    fn response(&self) -> Response {
        let mut status = 0;
        let mut headers = Vec::new();
        for (k, v) in from_map(&self.response_headers) {
            if k == ":status" {
                status = v.parse().unwrap_or(502);
            } else {
                headers.push((k, v));
            }
        }
        Response {
            status,
            headers,
            body: self.response_body.clone(),
            trailers: from_map(&self.response_trailers),
        }
    }

    fn attributes(&self) -> Vec<(String, String)> {
        self.filter_state
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect()
    }
}

/// A property path as one dotted key (`["source", "address"]` → `source.address`).
fn joined(path: &[&[u8]]) -> String {
    let mut key = String::with_capacity(path.iter().map(|part| part.len() + 1).sum());
    for (index, part) in path.iter().enumerate() {
        if index > 0 {
            key.push('.');
        }
        key.push_str(&String::from_utf8_lossy(part));
    }
    key
}

impl StreamState for ExchangeState {
    fn header_map(
        &mut self,
        _: Invocation,
        _: Access,
        map: MapType,
    ) -> Result<&mut dyn HeaderMap, Status> {
        match map {
            MapType::HttpRequestHeaders => Ok(&mut self.request_headers),
            MapType::HttpResponseHeaders => Ok(&mut self.response_headers),
            MapType::HttpResponseTrailers => Ok(&mut self.response_trailers),
            _ => Err(Status::NotFound),
        }
    }

    fn buffer(
        &mut self,
        _: Invocation,
        _: Access,
        buffer: BufferType,
    ) -> Result<&mut dyn Buffer, Status> {
        match buffer {
            BufferType::HttpRequestBody => Ok(&mut self.request_body),
            BufferType::HttpResponseBody => Ok(&mut self.response_body),
            _ => Err(Status::NotFound),
        }
    }

    fn continue_stream(&mut self, _: Invocation, _: StreamType) -> Result<(), Status> {
        Ok(())
    }

    fn send_local_response(
        &mut self,
        _: Invocation,
        response: LocalResponse<'_>,
    ) -> Result<(), Status> {
        self.local = Some(response.into_owned());
        Ok(())
    }

    fn property(&mut self, _: Invocation, path: &[&[u8]], out: &mut Vec<u8>) -> Result<(), Status> {
        let key = joined(path);
        let value = self
            .properties
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .or_else(|| {
                self.filter_state
                    .iter()
                    .rev()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v)
            })
            .ok_or(Status::NotFound)?;
        out.extend_from_slice(value);
        Ok(())
    }

    fn set_property(&mut self, _: Invocation, path: &[&[u8]], value: &[u8]) -> Result<(), Status> {
        let key = joined(path);
        self.filter_state.retain(|(k, _)| *k != key);
        self.filter_state.push((key, value.to_vec()));
        Ok(())
    }
}

// === shared data with readable metrics ===

/// The shared data of one plugin's workers, plus counters the embedder can read (the
/// crate's store keeps metrics write-only).
struct MeteredStore {
    inner: InMemoryStore,
    /// Counter id → (name, value): one lock and no allocation per increment.
    counters: Mutex<BTreeMap<u32, (String, i64)>>,
}

impl Default for MeteredStore {
    fn default() -> Self {
        Self {
            // Rate-limit pages are 384-byte keys; 64Ki keys cover 16 rules at maxKeys 65536.
            inner: InMemoryStore::new().with_limits(InMemoryStoreLimits::new().with_keys(65_536)),
            counters: Mutex::new(BTreeMap::new()),
        }
    }
}

impl MeteredStore {
    fn counter(&self, name: &str) -> i64 {
        lock(&self.counters)
            .values()
            .filter(|(n, _)| n == name)
            .map(|(_, value)| value)
            .sum()
    }
}

impl SharedServices for MeteredStore {
    fn get_shared_data(
        &self,
        call: Invocation,
        vm_id: &[u8],
        key: &[u8],
    ) -> Result<SharedValue, Status> {
        self.inner.get_shared_data(call, vm_id, key)
    }
    fn set_shared_data(
        &self,
        call: Invocation,
        vm_id: &[u8],
        key: &[u8],
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), Status> {
        self.inner.set_shared_data(call, vm_id, key, value, cas)
    }
    fn register_shared_queue(
        &self,
        call: Invocation,
        vm_id: &[u8],
        name: &[u8],
    ) -> Result<QueueId, Status> {
        self.inner.register_shared_queue(call, vm_id, name)
    }
    fn resolve_shared_queue(
        &self,
        call: Invocation,
        vm_id: &[u8],
        name: &[u8],
    ) -> Result<QueueId, Status> {
        self.inner.resolve_shared_queue(call, vm_id, name)
    }
    fn enqueue_shared_queue(
        &self,
        call: Invocation,
        queue: QueueId,
        value: &[u8],
    ) -> Result<(), Status> {
        self.inner.enqueue_shared_queue(call, queue, value)
    }
    fn dequeue_shared_queue(&self, call: Invocation, queue: QueueId) -> Result<Vec<u8>, Status> {
        self.inner.dequeue_shared_queue(call, queue)
    }
    fn define_metric(
        &self,
        call: Invocation,
        vm_id: &[u8],
        kind: MetricType,
        name: &[u8],
    ) -> Result<MetricId, Status> {
        let id = self.inner.define_metric(call, vm_id, kind, name)?;
        lock(&self.counters)
            .entry(id.get())
            .or_insert_with(|| (String::from_utf8_lossy(name).into_owned(), 0));
        Ok(id)
    }
    fn record_metric(&self, call: Invocation, metric: MetricId, value: u64) -> Result<(), Status> {
        self.inner.record_metric(call, metric, value)
    }
    fn increment_metric(
        &self,
        call: Invocation,
        metric: MetricId,
        delta: i64,
    ) -> Result<(), Status> {
        self.inner.increment_metric(call, metric, delta)?;
        if let Some((_, value)) = lock(&self.counters).get_mut(&metric.get()) {
            *value += delta;
        }
        Ok(())
    }
    fn get_metric(&self, call: Invocation, metric: MetricId) -> Result<u64, Status> {
        self.inner.get_metric(call, metric)
    }
}

// === logs ===

#[derive(Default)]
struct LogBuffer {
    lines: Mutex<VecDeque<(LogLevel, String)>>,
}

const KEPT_LOG_LINES: usize = 256;

impl LogBuffer {
    fn last_at_least(&self, level: LogLevel) -> Option<String> {
        lock(&self.lines)
            .iter()
            .rev()
            .find(|(l, _)| *l as u32 >= level as u32)
            .map(|(_, line)| line.clone())
    }
}

impl LogSink for LogBuffer {
    fn log(&self, _: LogContext<'_>, level: LogLevel, message: &[u8]) {
        let line = String::from_utf8_lossy(message).into_owned();
        if level as u32 >= LogLevel::Warn as u32
            && std::env::var_os("MESHGATE_FILTER_LOG").is_some()
        {
            eprintln!("{line}");
        }
        let mut lines = lock(&self.lines);
        if lines.len() == KEPT_LOG_LINES {
            lines.pop_front();
        }
        lines.push_back((level, line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_thread_keeps_its_own_slot_per_counter() {
        let counter = AtomicUsize::new(0);
        let mine = thread_slot(&counter);
        assert_eq!(thread_slot(&counter), mine, "a thread keeps its slot");
        let theirs = std::thread::scope(|scope| {
            let a = scope.spawn(|| thread_slot(&counter)).join().unwrap();
            let b = scope.spawn(|| thread_slot(&counter)).join().unwrap();
            (a, b)
        });
        let mut all = vec![mine, theirs.0, theirs.1];
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2], "the first threads get distinct slots");
        // Another counter (another plugin) numbers threads on its own.
        let other = AtomicUsize::new(0);
        assert_eq!(thread_slot(&other), 0);
    }
}
