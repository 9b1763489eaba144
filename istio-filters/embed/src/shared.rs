//! The shared data and metrics of one plugin's workers (wasm VMs or native roots alike): the
//! crate's [`InMemoryStore`] — so CAS numbers, key limits and metric ids are the same whatever
//! runs the filter — plus counters the embedder can read (the crate's store keeps metrics
//! write-only).

use std::collections::BTreeMap;
use std::sync::Mutex;

use proxy_wasm_host::abi::v0_2_1::types::{MetricType, Status};
use proxy_wasm_host::abi::v0_2_1::{
    InMemoryStore, InMemoryStoreLimits, Invocation, MetricId, QueueId, SharedServices, SharedValue,
};

use crate::lock;

pub(crate) struct MeteredStore {
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
    pub(crate) fn counter(&self, name: &str) -> i64 {
        lock(&self.counters)
            .values()
            .filter(|(n, _)| n == name)
            .map(|(_, value)| value)
            .sum()
    }

    /// Every counter defined so far, by name (ascending), with its value.
    pub(crate) fn counters(&self) -> Vec<(String, i64)> {
        let mut by_name: BTreeMap<String, i64> = BTreeMap::new();
        for (name, value) in lock(&self.counters).values() {
            *by_name.entry(name.clone()).or_default() += value;
        }
        by_name.into_iter().collect()
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
