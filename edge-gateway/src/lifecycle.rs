//! The gateway's own lifecycle: whether it is draining (then `/readyz` answers 503 while it
//! keeps serving), how many requests are in flight, and the SIGTERM watcher that drains before
//! pingora stops accepting.
//!
//! Shutdown on SIGTERM: `/readyz` → 503 at once; serve on for `gateway.shutdown.drain_delay_ms`
//! (load balancers and the kubelet notice); then pingora stops accepting, closes idle
//! keep-alive connections and sends HTTP/2 GOAWAY; in-flight requests get up to
//! `server.grace_period_seconds`; the binary exits as soon as none is left.

use std::{
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownSignal, ShutdownSignalWatch};
use prometheus::IntGauge;
use tokio::sync::broadcast;

#[derive(Debug)]
pub struct Lifecycle {
    draining: AtomicBool,
    /// `meshgate_gateway_draining` of this gateway.
    draining_gauge: IntGauge,
    in_flight: AtomicUsize,
    /// Signalled when the last in-flight request ends.
    idle: (Mutex<()>, Condvar),
}

/// Counts one request as in flight until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Lifecycle>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            let (lock, idle) = &self.0.idle;
            let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
            idle.notify_all();
        }
    }
}

impl Lifecycle {
    pub fn new(draining_gauge: IntGauge) -> Self {
        Self {
            draining: AtomicBool::new(false),
            draining_gauge,
            in_flight: AtomicUsize::new(0),
            idle: (Mutex::new(()), Condvar::new()),
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn begin_draining(&self) {
        if !self.draining.swap(true, Ordering::AcqRel) {
            self.draining_gauge.set(1);
            tracing::info!("draining: /readyz answers 503, still serving");
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Blocks the calling thread until no request is in flight.
    pub fn wait_idle(&self) {
        let (lock, idle) = &self.idle;
        let mut guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        while self.in_flight() > 0 {
            guard = idle.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// pingora's Unix signals, with a drain phase before a graceful terminate.
pub struct DrainingSignals {
    pub lifecycle: Arc<Lifecycle>,
    pub drain_delay: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for DrainingSignals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut quit), Ok(mut term), Ok(mut interrupt)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = quit.recv() => return ShutdownSignal::GracefulUpgrade,
            _ = interrupt.recv() => return ShutdownSignal::FastShutdown,
            _ = term.recv() => {}
        }
        self.lifecycle.begin_draining();
        tokio::select! {
            _ = tokio::time::sleep(self.drain_delay) => {}
            // A second SIGTERM or a SIGINT cuts the drain short.
            _ = term.recv() => {}
            _ = interrupt.recv() => return ShutdownSignal::FastShutdown,
        }
        tracing::info!(
            in_flight = self.lifecycle.in_flight(),
            "drain delay over: no longer accepting; finishing in-flight requests"
        );
        ShutdownSignal::GracefulTerminate
    }
}

/// Exits the process once pingora has stopped accepting (its grace period began) and no
/// request is in flight, instead of sleeping the whole `grace_period_seconds` (after which
/// pingora would drop what is still running). `before_exit` flushes what must not be lost.
pub fn exit_when_drained(
    mut phases: broadcast::Receiver<ExecutionPhase>,
    lifecycle: Arc<Lifecycle>,
    before_exit: impl FnOnce() + Send + 'static,
) {
    std::thread::spawn(move || {
        loop {
            match phases.blocking_recv() {
                Ok(ExecutionPhase::ShutdownGracePeriod) => break,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
        lifecycle.wait_idle();
        tracing::info!("no request in flight: exiting");
        before_exit();
        std::process::exit(0);
    });
}
