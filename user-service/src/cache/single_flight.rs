//! Single flight: concurrent misses of one key share one database read. The first caller
//! (the leader) runs the read; callers that arrive while it runs wait for its result. If the
//! leader goes away first (its request was cancelled), a waiter takes over, so nobody waits on
//! a read that will never finish.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;

pub struct SingleFlight<T> {
    flights: Mutex<HashMap<String, watch::Receiver<Option<T>>>>,
}

impl<T> Default for SingleFlight<T> {
    fn default() -> Self {
        Self {
            flights: Mutex::default(),
        }
    }
}

impl<T: Clone> SingleFlight<T> {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, watch::Receiver<Option<T>>>> {
        self.flights
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `work` for `key`, or waits for the run already in flight (then `on_join` is called,
    /// at the moment of joining).
    pub async fn run(&self, key: &str, on_join: impl Fn(), work: impl Future<Output = T>) -> T {
        loop {
            let joined = {
                let mut flights = self.lock();
                match flights.get(key) {
                    Some(flight) => {
                        on_join();
                        Ok(flight.clone())
                    }
                    None => {
                        let (done, flight) = watch::channel(None);
                        flights.insert(key.to_owned(), flight);
                        Err(done)
                    }
                }
            };
            let mut waiting = match joined {
                Ok(waiting) => waiting,
                Err(done) => return self.lead(key, done, work).await,
            };
            match waiting.wait_for(Option::is_some).await {
                Ok(result) => {
                    return result.clone().expect("waited for a result");
                }
                // The leader was dropped before it finished: try again (maybe as the leader).
                Err(_) => continue,
            }
        }
    }

    async fn lead(
        &self,
        key: &str,
        done: watch::Sender<Option<T>>,
        work: impl Future<Output = T>,
    ) -> T {
        let landing = Landing {
            flights: self,
            key,
            own: done.subscribe(),
        };
        let result = work.await;
        done.send_replace(Some(result.clone()));
        drop(landing);
        result
    }
}

/// Removes the leader's flight when it ends, finished or dropped (then the waiters see the
/// channel close and retry).
struct Landing<'a, T: Clone> {
    flights: &'a SingleFlight<T>,
    key: &'a str,
    own: watch::Receiver<Option<T>>,
}

impl<T: Clone> Drop for Landing<'_, T> {
    fn drop(&mut self) {
        let mut flights = self.flights.lock();
        // Only our own flight: a waiter may already lead a new one under the same key.
        if flights
            .get(self.key)
            .is_some_and(|flight| flight.same_channel(&self.own))
        {
            flights.remove(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::oneshot;

    use super::*;

    #[tokio::test]
    async fn callers_during_a_flight_share_its_result() {
        let flights = Arc::new(SingleFlight::<u32>::default());
        let joined = Arc::new(AtomicUsize::new(0));
        let (release, released) = oneshot::channel::<()>();
        let leader = tokio::spawn({
            let flights = flights.clone();
            async move {
                flights
                    .run("k", || {}, async {
                        released.await.unwrap();
                        7
                    })
                    .await
            }
        });
        // Wait until the leader's flight is registered.
        while flights.lock().is_empty() {
            tokio::task::yield_now().await;
        }
        let ran = Arc::new(AtomicUsize::new(0));
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let (flights, joined, ran) = (flights.clone(), joined.clone(), ran.clone());
                tokio::spawn(async move {
                    let on_join = || {
                        joined.fetch_add(1, Ordering::SeqCst);
                    };
                    flights
                        .run("k", on_join, async {
                            ran.fetch_add(1, Ordering::SeqCst);
                            0
                        })
                        .await
                })
            })
            .collect();
        while joined.load(Ordering::SeqCst) < 3 {
            tokio::task::yield_now().await;
        }
        release.send(()).unwrap();
        assert_eq!(leader.await.unwrap(), 7);
        for waiter in waiters {
            assert_eq!(waiter.await.unwrap(), 7);
        }
        assert_eq!(ran.load(Ordering::SeqCst), 0, "nobody else read");
        assert!(flights.lock().is_empty(), "the flight is gone once landed");
        // The next miss starts a new flight.
        assert_eq!(flights.run("k", || {}, async { 8 }).await, 8);
    }

    #[tokio::test]
    async fn a_waiter_takes_over_when_the_leader_is_dropped() {
        let flights = Arc::new(SingleFlight::<u32>::default());
        let leader = tokio::spawn({
            let flights = flights.clone();
            async move { flights.run("k", || {}, std::future::pending()).await }
        });
        while flights.lock().is_empty() {
            tokio::task::yield_now().await;
        }
        let joined = Arc::new(AtomicUsize::new(0));
        let waiter = tokio::spawn({
            let (flights, joined) = (flights.clone(), joined.clone());
            async move {
                let on_join = || {
                    joined.fetch_add(1, Ordering::SeqCst);
                };
                flights.run("k", on_join, async { 5 }).await
            }
        });
        while joined.load(Ordering::SeqCst) < 1 {
            tokio::task::yield_now().await;
        }
        leader.abort();
        assert_eq!(waiter.await.unwrap(), 5, "the waiter ran the read itself");
        assert!(flights.lock().is_empty());
    }
}
