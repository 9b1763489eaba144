//! `user-service worker`: a durable JetStream pull consumer on `USERS` that keeps the audit
//! trail (`ListUserEvents`) and warms the cache after writes.
//!
//! Idempotent: the processed-event records and the audit rows commit in one transaction
//! ([`Database::apply_events`]), so a redelivered event changes nothing; cache warming is a
//! versioned compare-and-set, so replaying an old event never overwrites a newer entry. An
//! event is acknowledged only after its transaction committed: a worker killed in between gets
//! it redelivered, and the record turns the replay into a no-op.
//!
//! Throughput: the messages already delivered when the worker looks (up to a pull batch) are
//! applied together, one commit for all of them (one per event if that fails, so an event that
//! cannot be applied holds back only itself). One commit per event held the worker to ~550
//! events/s on a loaded 2-core machine while the service wrote 1,600/s (BENCHMARKS.md).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt;

use super::UserEvent;
use crate::cache::{CacheEntry, CachedStore};
use crate::domain::{UserId, Version};
use crate::metrics::Metrics;
use crate::store::Database;

/// The durable consumer's name (also the `consumer` of `processed_events`).
pub const CONSUMER: &str = "user-worker";

/// Worker tuning.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// How long JetStream waits for an acknowledgement before redelivering.
    pub ack_wait: Duration,
    /// Messages fetched per pull, and the most applied in one transaction.
    pub batch: usize,
    /// Replicas of the `USERS` stream when the worker creates it (`NATS_STREAM_REPLICAS`; the
    /// consumer inherits them).
    pub stream_replicas: usize,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            ack_wait: Duration::from_secs(5),
            batch: 64,
            stream_replicas: 1,
        }
    }
}

/// The cache entry an event leaves behind: the snapshot, or the delete's tombstone.
pub fn cache_entry(event: &UserEvent) -> CacheEntry {
    match event.snapshot_user() {
        Some(user) => CacheEntry::User(user),
        None => CacheEntry::Deleted(Version::new(event.version)),
    }
}

/// Creates (or finds) the durable pull consumer on `USERS`.
pub async fn ensure_consumer(
    js: &jetstream::Context,
    settings: &WorkerSettings,
) -> anyhow::Result<jetstream::consumer::Consumer<pull::Config>> {
    let stream = super::relay::ensure_stream(js, settings.stream_replicas).await?;
    stream
        .get_or_create_consumer(
            CONSUMER,
            pull::Config {
                durable_name: Some(CONSUMER.to_owned()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: settings.ack_wait,
                ..Default::default()
            },
        )
        .await
        .context("creating the user-worker consumer")
}

/// Handles messages delivered together, in delivery order: one transaction for all of them,
/// and when that fails one per event, so an event that cannot be applied holds back only
/// itself. Per payload: `Ok` when it may be acknowledged, the error when it must be redelivered.
pub async fn handle(
    database: &Database,
    cache: Option<&CachedStore<Database>>,
    metrics: &Metrics,
    payloads: &[&[u8]],
) -> Vec<Result<(), crate::domain::StoreError>> {
    let mut outcomes: Vec<Result<(), crate::domain::StoreError>> =
        payloads.iter().map(|_| Ok(())).collect();
    let mut events = Vec::with_capacity(payloads.len());
    let mut positions = Vec::with_capacity(payloads.len());
    for (position, payload) in payloads.iter().enumerate() {
        match UserEvent::decode(payload) {
            Ok(event) => {
                events.push(event);
                positions.push(position);
            }
            Err(error) => {
                // Not ours to fix by retrying: counted, logged, acknowledged.
                tracing::error!(%error, "worker: undecodable event dropped");
                metrics.worker_events.with_label_values(&["invalid"]).inc();
            }
        }
    }
    if events.is_empty() {
        return outcomes;
    }
    // Per event: whether this apply was its first (`None`: not applied).
    let applied: Vec<Option<bool>> = match database.apply_events(CONSUMER, &events).await {
        Ok(applied) => applied.into_iter().map(Some).collect(),
        Err(error) if events.len() == 1 => {
            outcomes[positions[0]] = Err(error);
            vec![None]
        }
        Err(error) => {
            tracing::warn!(%error, events = events.len(), "worker: batch not applied; one event per transaction");
            let mut applied = Vec::with_capacity(events.len());
            for (event, &position) in events.iter().zip(&positions) {
                match database
                    .apply_events(CONSUMER, std::slice::from_ref(event))
                    .await
                {
                    Ok(first) => applied.push(first.first().copied()),
                    Err(error) => {
                        outcomes[position] = Err(error);
                        applied.push(None);
                    }
                }
            }
            applied
        }
    };
    for first in applied.iter().flatten() {
        metrics
            .worker_events
            .with_label_values(&[if *first { "applied" } else { "duplicate" }])
            .inc();
    }
    if let Some(cache) = cache {
        // Versioned compare-and-sets: their order does not matter, so they go out together.
        futures::future::join_all(
            events
                .iter()
                .zip(&applied)
                .filter(|(_, applied)| applied.is_some())
                .map(|(event, _)| cache.warm(UserId::from(event.user_id), cache_entry(event))),
        )
        .await;
    }
    outcomes
}

/// Consumes until the task is dropped or the consumer's message stream ends with an error
/// (the caller restarts it).
pub async fn run(
    database: Database,
    cache: Option<Arc<CachedStore<Database>>>,
    js: jetstream::Context,
    metrics: Arc<Metrics>,
    settings: WorkerSettings,
) -> anyhow::Result<()> {
    let consumer = ensure_consumer(&js, &settings).await?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(settings.batch)
        .messages()
        .await
        .context("pulling from the user-worker consumer")?;
    // What has arrived by the time the previous batch is done, without waiting for more.
    let mut deliveries = messages.ready_chunks(settings.batch);
    while let Some(delivered) = deliveries.next().await {
        let delivered: Vec<_> = delivered
            .into_iter()
            .filter_map(|message| {
                message
                    .inspect_err(|error| tracing::warn!(%error, "worker: pull failed; continuing"))
                    .ok()
            })
            .collect();
        if delivered.is_empty() {
            continue;
        }
        let payloads: Vec<&[u8]> = delivered
            .iter()
            .map(|message| message.payload.as_ref())
            .collect();
        let outcomes = handle(&database, cache.as_deref(), &metrics, &payloads).await;
        for (message, outcome) in delivered.iter().zip(outcomes) {
            match outcome {
                Ok(()) => {
                    if let Err(error) = message.ack().await {
                        // Redelivered later; the processed record makes that a no-op.
                        tracing::warn!(%error, "worker: ack failed");
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "worker: event not applied; redelivering");
                    let _ = message
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                        .await;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Age, Email, Name, User};

    #[test]
    fn a_delete_leaves_a_tombstone_and_a_write_its_snapshot() {
        let id = UserId::new_random();
        let deleted = UserEvent::deleted(id, Version::new(5));
        assert_eq!(cache_entry(&deleted), CacheEntry::Deleted(Version::new(5)));
        let user = User {
            id,
            name: Name::parse("Ada").unwrap(),
            email: Email::parse("ada@example.com").unwrap(),
            age: Age::parse(36).unwrap(),
            created_at: 1,
            updated_at: 2,
            version: Version::new(2),
        };
        assert_eq!(
            cache_entry(&UserEvent::updated(&user)),
            CacheEntry::User(user)
        );
    }
}
