//! Live updates (`WatchUsers`): one bounded fan-out per process that every watcher reads.
//!
//! The fan-out is fed either by the commits of this process (no broker: the store hands each
//! committed event over after its transaction) or by one ordered, ephemeral JetStream consumer
//! on `USERS` starting at new messages ([`follow_jetstream`]), so every replica's watchers see
//! every replica's writes. Either way there is one subscription per process, not one per client.
//!
//! Slow watchers are bounded: the fan-out is a `tokio::sync::broadcast` ring of
//! `WATCH_BUFFER_EVENTS` events shared by all watchers. A watcher that falls more than that
//! behind loses its stream with [`WatchEnd::Lagged`] (the RPC answers RESOURCE_EXHAUSTED) instead of
//! holding memory; writers never wait for watchers.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull};
use futures::StreamExt;
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

use super::UserEvent;
use crate::metrics::Metrics;

/// The process's fan-out of committed user events.
#[derive(Clone)]
pub struct LiveEvents {
    sender: broadcast::Sender<Arc<UserEvent>>,
    /// Whether the feed is connected (always, without a broker; with one, once the consumer is).
    connected: Arc<watch::Sender<bool>>,
    /// Raised when the server stops: every watcher ends (its client should watch again).
    stopping: Arc<watch::Sender<bool>>,
    metrics: Arc<Metrics>,
}

/// Why a watcher's stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEnd {
    /// It fell this many events behind and was cut off.
    Lagged(u64),
    /// The server is stopping.
    Stopping,
}

impl LiveEvents {
    /// A fan-out keeping the last `capacity` events for slow watchers. `connected` starts as
    /// given (true when the feed is this process's own commits).
    pub fn new(capacity: usize, connected: bool, metrics: Arc<Metrics>) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Self {
            sender,
            connected: Arc::new(watch::Sender::new(connected)),
            stopping: Arc::new(watch::Sender::new(false)),
            metrics,
        }
    }

    /// Hands `event` to every current watcher; never waits (a full ring drops the oldest event
    /// for the watchers that have not read it, which then learn they lagged).
    pub fn publish(&self, event: UserEvent) {
        // No watcher: nothing to do.
        let _ = self.sender.send(Arc::new(event));
    }

    /// Waits up to `wait` for the feed to be connected.
    pub async fn wait_connected(&self, wait: Duration) -> bool {
        let mut connected = self.connected.subscribe();
        tokio::time::timeout(wait, connected.wait_for(|up| *up))
            .await
            .is_ok_and(|up| up.is_ok())
    }

    fn set_connected(&self, up: bool) {
        self.connected.send_replace(up);
    }

    /// Ends every watcher (and every later one at once): the server is draining.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// A new watcher of every event from now on (only `user`'s when given).
    pub fn subscribe(&self, user: Option<Uuid>) -> Watcher {
        Watcher {
            receiver: self.sender.subscribe(),
            user,
            stopping: self.stopping.subscribe(),
            _active: ActiveWatcher::enter(&self.metrics),
        }
    }
}

/// One client's view of the fan-out; counted in `user_watchers_active` until dropped.
pub struct Watcher {
    receiver: broadcast::Receiver<Arc<UserEvent>>,
    user: Option<Uuid>,
    stopping: watch::Receiver<bool>,
    _active: ActiveWatcher,
}

impl Watcher {
    /// The next event for this watcher, or why its stream ends.
    pub async fn next(&mut self) -> Result<Arc<UserEvent>, WatchEnd> {
        loop {
            let received = tokio::select! {
                received = self.receiver.recv() => received,
                _ = self.stopping.wait_for(|stopping| *stopping) => return Err(WatchEnd::Stopping),
            };
            match received {
                Ok(event) => {
                    if self.user.is_none_or(|user| user == event.user_id) {
                        return Ok(event);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    return Err(WatchEnd::Lagged(missed));
                }
                // The sender lives as long as the `LiveEvents`; gone means stopping.
                Err(broadcast::error::RecvError::Closed) => return Err(WatchEnd::Stopping),
            }
        }
    }
}

struct ActiveWatcher(prometheus::IntGauge);

impl ActiveWatcher {
    fn enter(metrics: &Metrics) -> Self {
        metrics.watchers_active.inc();
        Self(metrics.watchers_active.clone())
    }
}

impl Drop for ActiveWatcher {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Feeds `live` from one ordered, ephemeral consumer on `USERS` (new messages only), and
/// recreates it after failures. Runs until aborted. `stream_replicas` as for the relay, which
/// this may beat to creating the stream (`NATS_STREAM_REPLICAS`).
pub async fn follow_jetstream(js: jetstream::Context, live: LiveEvents, stream_replicas: usize) {
    let mut backoff =
        super::relay::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match follow_once(&js, &live, stream_replicas, &mut backoff).await {
            Ok(()) => tracing::warn!("live updates: the consumer ended; resubscribing"),
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "live updates: resubscribing");
            }
        }
        live.set_connected(false);
        tokio::time::sleep(backoff.failed()).await;
    }
}

async fn follow_once(
    js: &jetstream::Context,
    live: &LiveEvents,
    stream_replicas: usize,
    backoff: &mut super::relay::Backoff,
) -> anyhow::Result<()> {
    let stream = super::relay::ensure_stream(js, stream_replicas).await?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .context("creating the live-updates consumer")?;
    let mut messages = consumer
        .messages()
        .await
        .context("reading the live-updates consumer")?;
    live.set_connected(true);
    backoff.succeeded();
    while let Some(message) = messages.next().await {
        match message {
            // The ordered consumer acknowledges nothing: it only reads.
            Ok(message) => match UserEvent::decode(&message.payload) {
                Ok(event) => live.publish(event),
                Err(error) => tracing::error!(%error, "live updates: undecodable event skipped"),
            },
            // The ordered consumer recreates itself after gaps and missed heartbeats; a
            // failure to do so ends the stream and is retried above.
            Err(error) => tracing::warn!(%error, "live updates: consumer hiccup"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Age, Email, Name, User, UserId, Version};

    fn event_of(id: UserId) -> UserEvent {
        UserEvent::created(&User {
            id,
            name: Name::parse("Ada").unwrap(),
            email: Email::parse("ada@example.com").unwrap(),
            age: Age::parse(36).unwrap(),
            created_at: 1,
            updated_at: 1,
            version: Version::new(1),
        })
    }

    #[tokio::test]
    async fn a_watcher_sees_events_after_it_subscribed_filtered_by_user() {
        let metrics = Arc::new(Metrics::new());
        let live = LiveEvents::new(8, true, metrics.clone());
        let (ada, bob) = (UserId::new_random(), UserId::new_random());
        live.publish(event_of(ada));
        let mut everyone = live.subscribe(None);
        let mut only_bob = live.subscribe(Some(bob.as_uuid()));
        assert_eq!(metrics.watchers_active.get(), 2);
        live.publish(event_of(ada));
        live.publish(event_of(bob));
        assert_eq!(everyone.next().await.unwrap().user_id, ada.as_uuid());
        assert_eq!(everyone.next().await.unwrap().user_id, bob.as_uuid());
        assert_eq!(only_bob.next().await.unwrap().user_id, bob.as_uuid());
        drop((everyone, only_bob));
        assert_eq!(metrics.watchers_active.get(), 0);
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_the_ring_is_told_by_how_much() {
        let live = LiveEvents::new(4, true, Arc::new(Metrics::new()));
        let mut slow = live.subscribe(None);
        for _ in 0..10 {
            live.publish(event_of(UserId::new_random()));
        }
        assert_eq!(slow.next().await.unwrap_err(), WatchEnd::Lagged(6));
    }

    #[tokio::test]
    async fn stopping_ends_current_and_later_watchers() {
        let live = LiveEvents::new(4, true, Arc::new(Metrics::new()));
        let mut before = live.subscribe(None);
        let waiting = tokio::spawn(async move { before.next().await.unwrap_err() });
        live.stop();
        assert_eq!(waiting.await.unwrap(), WatchEnd::Stopping);
        assert_eq!(
            live.subscribe(None).next().await.unwrap_err(),
            WatchEnd::Stopping
        );
    }
}
