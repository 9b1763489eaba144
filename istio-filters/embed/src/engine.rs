//! The wasmtime engine shared by every wasm plugin, and the clocks.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use proxy_wasm_host::abi::v0_2_1::{Clock, Host as AbiHost};
use proxy_wasm_host::{Engine, Module};

use crate::lock;

/// One wasmtime engine and the linked ABI, shared by every plugin; compiled modules are
/// cached by content, so loading the same `.wasm` again (more plugins, tests) is cheap.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    pub(crate) host: AbiHost,
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

    pub(crate) fn compile(&self, wasm: &[u8]) -> Result<Module, proxy_wasm_host::Error> {
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
