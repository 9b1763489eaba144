//! Which proxy worker the current thread is. The proxy runs as one pingora service of one
//! thread per worker (`server.threads` of them, see [`crate::server`]): a connection, every
//! request on it and the upstream connections those requests use stay on one thread, so a
//! request does not wake another thread (nginx's and Envoy's worker model). Upstream connections
//! are kept per worker, indexed by [`current`].

use std::cell::Cell;

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// The current thread's worker slot: `1..=workers` on a worker thread, 0 elsewhere (tests,
/// background services, embedders calling the upstream client from their own runtime).
pub fn current() -> usize {
    WORKER.with(Cell::get)
}

/// Marks the current thread as worker `slot` (≥ 1); called on the worker's only thread when its
/// service starts.
pub(crate) fn enter(slot: usize) {
    WORKER.with(|worker| worker.set(slot));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_is_no_worker_until_it_enters_one() {
        let slots = std::thread::spawn(|| {
            let before = current();
            enter(3);
            (before, current())
        })
        .join()
        .unwrap();
        assert_eq!(slots, (0, 3));
        // Per thread: this one was never entered.
        assert_eq!(current(), 0);
    }
}
