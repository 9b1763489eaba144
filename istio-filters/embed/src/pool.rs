//! One filter with its config, running in `workers` VMs ("Envoy worker threads") or native
//! workers, which share one store (shared data and metrics) and one log buffer.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use meshgate_filter_core::filter::Stream;
use proxy_wasm_host::abi::v0_2_1::types::LogLevel;
use proxy_wasm_host::abi::v0_2_1::{
    CallScope, Clock, ContextId, Guest, GuestError, LogSink, PluginConfig, SharedServices, Started,
    SystemClock, VmServices,
};
use proxy_wasm_host::{Limits, Module};

use crate::engine::Runtime;
use crate::error::{Failure, FilterError, LoadError};
use crate::lifecycle::{FailStrategy, LifecycleCounters};
use crate::lock;
use crate::logs::{LOG_LEVEL, LogBuffer};
use crate::native::{BuiltIn, NativeHost, NativeRoot, NativeServices};
use crate::shared::MeteredStore;
use crate::stream_state::ExchangeState;

pub struct PluginOptions {
    /// Worker VMs (Envoy runs one per worker thread); they share data and metrics.
    pub workers: usize,
    pub clock: Arc<dyn Clock>,
    /// Wasm VMs only.
    pub limits: Limits,
    /// What a request gets when the filter traps or panics (the WasmPlugin's `failStrategy`).
    pub fail_strategy: FailStrategy,
}

impl Default for PluginOptions {
    fn default() -> Self {
        Self {
            workers: 1,
            clock: Arc::new(SystemClock),
            limits: Limits::default(),
            fail_strategy: FailStrategy::default(),
        }
    }
}

/// One filter with its config.
pub struct Plugin {
    name: String,
    workers: Workers,
    next_worker: AtomicUsize,
    store: Arc<MeteredStore>,
    logs: Arc<LogBuffer>,
    fail_strategy: FailStrategy,
    lifecycle: LifecycleCounters,
}

enum Workers {
    Wasm(Box<WasmWorkers>),
    Native(NativeWorkers),
}

struct WasmWorkers {
    module: Module,
    runtime: Runtime,
    config: Vec<u8>,
    services: VmServices,
    limits: Limits,
    vms: Vec<Mutex<Vm>>,
}

struct Vm {
    guest: Guest,
    root: ContextId,
}

impl WasmWorkers {
    /// A VM with the module, configured: `Refused` carries the line the filter logged.
    fn start_vm(&self, name: &str, logs: &LogBuffer) -> Result<Vm, LoadError> {
        let guest_error = |source| LoadError::Guest {
            plugin: name.to_owned(),
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
            .with_name(name.as_bytes().to_vec())
            .with_configuration(self.config.clone());
        match guest.start(plugin).map_err(guest_error)? {
            Started::Serving(root) => Ok(Vm { guest, root }),
            Started::Refused { .. } => Err(LoadError::Refused {
                plugin: name.to_owned(),
                reason: logs
                    .last_at_least(LogLevel::Error)
                    .unwrap_or_else(|| "no reason logged".to_owned()),
            }),
        }
    }
}

/// One configured root per worker, as each VM configures its own root context.
struct NativeWorkers {
    builtin: BuiltIn,
    roots: Vec<Box<dyn NativeRoot>>,
    services: NativeServices,
}

/// A request's stream in one plugin.
pub(crate) enum StreamHandle {
    Wasm { worker: usize, context: ContextId },
    Native(Box<dyn Stream + Send>),
}

/// What the response phase delivers.
#[derive(Clone, Copy)]
pub(crate) struct ResponseShape {
    pub(crate) has_body: bool,
    pub(crate) has_trailers: bool,
}

/// A small per-thread number, handed out in order of first use, per counter: with `n` threads
/// and `n` or more workers, no two threads share one.
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

impl Plugin {
    fn new(
        name: &str,
        workers: Workers,
        store: Arc<MeteredStore>,
        logs: Arc<LogBuffer>,
        fail_strategy: FailStrategy,
    ) -> Self {
        Self {
            name: name.to_owned(),
            workers,
            next_worker: AtomicUsize::new(0),
            store,
            logs,
            fail_strategy,
            lifecycle: LifecycleCounters::default(),
        }
    }

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
            .with_log_level(LOG_LEVEL)
            .with_shared(Arc::clone(&store) as Arc<dyn SharedServices>);
        let mut wasm = WasmWorkers {
            module,
            runtime: runtime.clone(),
            config: config_json.as_bytes().to_vec(),
            services,
            limits: options.limits,
            vms: Vec::with_capacity(options.workers),
        };
        for _ in 0..options.workers {
            let vm = wasm.start_vm(name, &logs)?;
            wasm.vms.push(Mutex::new(vm));
        }
        let plugin = Self::new(
            name,
            Workers::Wasm(Box::new(wasm)),
            store,
            logs,
            options.fail_strategy,
        );
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

    /// A built-in filter, run natively: `options.workers` roots configured with `config_json`,
    /// sharing one store as the VMs of [`Plugin::load`] do. A refused config is
    /// [`LoadError::Refused`] with the line the module would log.
    pub fn load_native(
        name: &str,
        builtin: BuiltIn,
        config_json: &str,
        options: PluginOptions,
    ) -> Result<Self, LoadError> {
        if options.workers == 0 {
            return Err(LoadError::NoWorkers);
        }
        let store = Arc::new(MeteredStore::default());
        let logs = Arc::new(LogBuffer::default());
        let services = NativeServices::new(
            Arc::clone(&store),
            Arc::clone(&logs),
            options.clock,
            name.as_bytes().to_vec(),
        );
        let mut roots = Vec::with_capacity(options.workers);
        for _ in 0..options.workers {
            let mut state = ExchangeState::default();
            let mut host = NativeHost::new(&services, &mut state);
            let root = builtin
                .configure(config_json.as_bytes(), &mut host)
                .map_err(|reason| {
                    logs.push(LogLevel::Error, reason.clone());
                    LoadError::Refused {
                        plugin: name.to_owned(),
                        reason,
                    }
                })?;
            roots.push(root);
        }
        let native = NativeWorkers {
            builtin,
            roots,
            services,
        };
        Ok(Self::new(
            name,
            Workers::Native(native),
            store,
            logs,
            options.fail_strategy,
        ))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `"native"` or `"wasm"`.
    pub fn runtime(&self) -> &'static str {
        match self.workers {
            Workers::Wasm(_) => "wasm",
            Workers::Native(_) => "native",
        }
    }

    /// The built-in filter a native plugin runs.
    pub fn builtin(&self) -> Option<BuiltIn> {
        match &self.workers {
            Workers::Native(native) => Some(native.builtin),
            Workers::Wasm(_) => None,
        }
    }

    pub fn workers(&self) -> usize {
        match &self.workers {
            Workers::Wasm(wasm) => wasm.vms.len(),
            Workers::Native(native) => native.roots.len(),
        }
    }

    pub fn fail_strategy(&self) -> FailStrategy {
        self.fail_strategy
    }

    /// A counter the filter defined (e.g. `meshgate_rate_limit_allowed`), summed over workers,
    /// or one the host keeps about it (`meshgate_filter_failures`, `meshgate_filter_vm_reloads`).
    pub fn counter(&self, name: &str) -> i64 {
        self.lifecycle
            .get(name)
            .unwrap_or_else(|| self.store.counter(name))
    }

    /// Every counter the filter defined, by name, with its value (summed over workers), then
    /// the host's own about it.
    pub fn counters(&self) -> Vec<(String, i64)> {
        let mut counters = self.store.counters();
        counters.extend(self.lifecycle.all());
        counters
    }

    /// Logs a failure of this filter (the log buffer, as a guest's own Critical line would be).
    pub(crate) fn log_failure(&self, line: String) {
        self.logs.push(LogLevel::Error, line);
    }

    /// The most recent log lines of this plugin's workers (bounded).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lines()
    }

    /// The calling thread's own worker, as Envoy gives each worker thread its own VM: a thread
    /// keeps reusing one (its memory stays in that core's caches, its lock uncontended).
    /// Threads beyond `workers` share workers in turn.
    pub(crate) fn pick_worker(&self) -> usize {
        thread_slot(&self.next_worker) % self.workers().max(1)
    }

    fn filter_error(&self, failure: Failure) -> FilterError {
        FilterError {
            plugin: self.name.clone(),
            failure,
        }
    }

    /// Runs `body` on a wasm VM, rebuilding the VM first if an earlier trap poisoned it
    /// (Envoy's FAIL_RELOAD: one bad request does not fail every later one).
    fn on_vm<R>(
        &self,
        index: usize,
        state: &mut ExchangeState,
        body: impl FnOnce(&mut CallScope<'_, ExchangeState>, ContextId) -> Result<R, GuestError>,
    ) -> Result<R, FilterError> {
        let Workers::Wasm(wasm) = &self.workers else {
            return Err(self.filter_error(Failure::Panicked("not a wasm plugin".into())));
        };
        let Some(slot) = wasm.vms.get(index % wasm.vms.len().max(1)) else {
            return Err(self.filter_error(Failure::Guest(GuestError::ContextIdsExhausted)));
        };
        let mut vm = lock(slot);
        if vm.guest.is_poisoned()
            && let Ok(fresh) = wasm.start_vm(&self.name, &self.logs)
        {
            *vm = fresh;
            self.lifecycle.reloaded();
        }
        let root = vm.root;
        let (result, back) = vm
            .guest
            .with(std::mem::take(state), |scope| body(scope, root));
        *state = back;
        result.map_err(|source| {
            self.lifecycle.failed();
            self.filter_error(Failure::Guest(source))
        })
    }

    /// Runs a native filter callback; a panic is this filter's failure, not the proxy's.
    fn on_native<R>(
        &self,
        state: &mut ExchangeState,
        body: impl FnOnce(&mut NativeHost<'_>) -> R,
    ) -> Result<R, FilterError> {
        let Workers::Native(native) = &self.workers else {
            return Err(self.filter_error(Failure::Panicked("not a native plugin".into())));
        };
        catch_unwind(AssertUnwindSafe(|| {
            body(&mut NativeHost::new(&native.services, state))
        }))
        .map_err(|panic| {
            self.lifecycle.failed();
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            self.filter_error(Failure::Panicked(message))
        })
    }

    /// The request phase of a new stream on `worker`: headers, then the body if any (unless
    /// the headers got a local reply).
    pub(crate) fn request_phase(
        &self,
        worker: usize,
        state: &mut ExchangeState,
    ) -> Result<StreamHandle, FilterError> {
        let has_body = !state.request_body.is_empty();
        let body_size = state.request_body.len();
        match &self.workers {
            Workers::Wasm(_) => {
                let context = self.on_vm(worker, state, |scope, root| {
                    let context = scope.on_context_create(Some(root))?;
                    scope.on_request_headers(context, 0, !has_body)?;
                    let replied = scope.stream().local.is_some();
                    if has_body && !replied {
                        let size = u32::try_from(body_size).unwrap_or(u32::MAX);
                        scope.on_request_body(context, size, true)?;
                    }
                    Ok(context)
                })?;
                Ok(StreamHandle::Wasm { worker, context })
            }
            Workers::Native(native) => {
                let root = &native.roots[worker % native.roots.len()];
                let mut stream = root.new_stream();
                self.on_native(state, |host| {
                    stream.on_request_headers(host, !has_body);
                    if has_body && !host.replied() {
                        stream.on_request_body(host, body_size, true);
                    }
                })?;
                Ok(StreamHandle::Native(stream))
            }
        }
    }

    /// The response phase of a stream, then its end.
    pub(crate) fn response_phase(
        &self,
        stream: StreamHandle,
        state: &mut ExchangeState,
        shape: ResponseShape,
    ) -> Result<(), FilterError> {
        let ResponseShape {
            has_body,
            has_trailers,
        } = shape;
        let body_size = state.response_body.len();
        match stream {
            StreamHandle::Wasm { worker, context } => self.on_vm(worker, state, |scope, _| {
                scope.on_response_headers(context, 0, !has_body && !has_trailers)?;
                if has_body {
                    let size = u32::try_from(body_size).unwrap_or(u32::MAX);
                    scope.on_response_body(context, size, !has_trailers)?;
                }
                if has_trailers {
                    scope.on_response_trailers(context, 0)?;
                }
                end_stream(scope, context)
            }),
            StreamHandle::Native(mut stream) => self.on_native(state, |host| {
                stream.on_response_headers(host, !has_body && !has_trailers);
                if has_body {
                    stream.on_response_body(host, body_size, !has_trailers);
                }
                if has_trailers {
                    stream.on_response_trailers(host);
                }
            }),
        }
    }

    /// Ends a stream that gets no response phase (a local reply, an error, a dropped request).
    pub(crate) fn end(&self, stream: StreamHandle, state: &mut ExchangeState) {
        match stream {
            StreamHandle::Wasm { worker, context } => {
                let _ = self.on_vm(worker, state, |scope, _| end_stream(scope, context));
            }
            // The stream's end is its drop.
            StreamHandle::Native(stream) => drop(stream),
        }
    }
}

/// Envoy's end of a stream: done, log, delete.
fn end_stream(
    scope: &mut CallScope<'_, ExchangeState>,
    context: ContextId,
) -> Result<(), GuestError> {
    scope.on_done(context)?;
    scope.on_log(context)?;
    scope.on_delete(context)?;
    Ok(())
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
