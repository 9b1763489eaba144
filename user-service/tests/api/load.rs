//! Closed-loop load for the fault tests: tasks that repeat one kind of call until stopped,
//! counting successes and failures (with the first failures' messages, for the assertion).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Default)]
pub struct Tally {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::SeqCst)
    }

    /// Up to 20 failure messages.
    pub fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }

    fn record(&self, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::SeqCst);
            }
            Err(failure) => {
                self.failed.fetch_add(1, Ordering::SeqCst);
                let mut failures = self.failures.lock().unwrap();
                if failures.len() < 20 {
                    failures.push(failure);
                }
            }
        }
    }
}

pub struct Load {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Default for Load {
    fn default() -> Self {
        Self {
            stop: watch::channel(false).0,
            tasks: Vec::new(),
        }
    }
}

impl Load {
    /// Starts `workers` tasks repeating `call(worker, iteration)`, counted in `tally`.
    pub fn spawn<F, Fut>(&mut self, workers: usize, tally: &Arc<Tally>, call: F)
    where
        F: Fn(usize, u64) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = Result<(), String>> + Send,
    {
        for worker in 0..workers {
            let (tally, call, stop) = (tally.clone(), call.clone(), self.stop.subscribe());
            self.tasks.push(tokio::spawn(async move {
                let mut iteration = 0;
                while !*stop.borrow() {
                    tally.record(call(worker, iteration).await);
                    iteration += 1;
                }
            }));
        }
    }

    /// Stops every task after its current call.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        for task in self.tasks {
            task.await.expect("a load task does not panic");
        }
    }
}

/// Successes per second of `tally` over `phase` of load (measured, printed, never asserted:
/// speed lives in BENCHMARKS.md).
pub async fn rate_over(tally: &Tally, phase: Duration) -> f64 {
    let (before, started) = (tally.ok(), Instant::now());
    tokio::time::sleep(phase).await;
    (tally.ok() - before) as f64 / started.elapsed().as_secs_f64()
}
