//! The outbox relay: publishes committed events to JetStream in outbox order, each with
//! `Nats-Msg-Id` = its event id, and forgets each once JetStream has acknowledged it.
//!
//! - **At least once**: a row leaves the outbox only after its acknowledgement; a relay that
//!   dies in between republishes it, and JetStream drops the copy (duplicate window).
//! - **In order per user**: one event at a time, the next only after the previous one's
//!   acknowledgement, oldest outbox row first; a failure retries from the failed event.
//! - **One publisher**: the outbox lease ([`Database::try_lead_outbox`]); the other replicas
//!   wait and take over when the leader's database session ends.
//! - **Outages**: while NATS or the database is unreachable the rows stay, `user_outbox_backlog`
//!   grows, and the relay retries with a capped backoff.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, message::PublishMessage};
use tokio::sync::Notify;

use super::{STREAM, SUBJECTS};
use crate::metrics::Metrics;
use crate::store::{Database, OutboxLease};

/// Relay tuning.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Rows read per outbox query.
    pub batch: i64,
    /// How often the leader looks at an empty outbox again when no commit of this process
    /// wakes it (the writes of other replicas are found at this pace).
    pub poll_interval: Duration,
    /// How often a standby replica tries to take the lease (the takeover delay after the
    /// leader's session ends).
    pub standby_interval: Duration,
    /// Longest wait between retries after a failure.
    pub max_backoff: Duration,
    /// Replicas of the `USERS` stream (`NATS_STREAM_REPLICAS`).
    pub stream_replicas: usize,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch: 256,
            poll_interval: Duration::from_millis(100),
            standby_interval: Duration::from_millis(500),
            max_backoff: Duration::from_secs(5),
            stream_replicas: 1,
        }
    }
}

/// Connects to NATS without waiting for it: the client keeps reconnecting in the background,
/// so a broker that is down at start is an outage like any other.
pub async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .name("user-service")
        .retry_on_initial_connect()
        .connect(url)
        .await
        .with_context(|| format!("connecting to NATS_URL {url}"))
}

/// Creates the `USERS` stream if it is missing (file storage, `replicas` copies on a clustered
/// JetStream; JetStream dedupes by `Nats-Msg-Id` within its duplicate window, 2 minutes by
/// default), and raises an existing stream's replicas to `replicas` ([`replicas_to_raise`]).
pub async fn ensure_stream(
    js: &jetstream::Context,
    replicas: usize,
) -> anyhow::Result<jetstream::stream::Stream> {
    let mut stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: STREAM.to_owned(),
            subjects: vec![SUBJECTS.to_owned()],
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .context("creating the USERS stream")?;
    let existing = stream
        .info()
        .await
        .context("reading the USERS stream")?
        .config
        .clone();
    if let Some(raised) = replicas_to_raise(existing.num_replicas, replicas) {
        let config = jetstream::stream::Config {
            num_replicas: raised,
            ..existing
        };
        js.update_stream(&config)
            .await
            .with_context(|| format!("raising the USERS stream to {raised} replicas"))?;
        tracing::info!(replicas = raised, "USERS stream replicas raised");
        stream = js
            .get_stream(STREAM)
            .await
            .context("reading the USERS stream")?;
    }
    Ok(stream)
}

/// The replica count to update an existing stream to, if any: only ever up (JetStream reports 0
/// for the default of one). Lowering is left to an operator: a replica set by hand for an
/// incident must not be undone by the next pod start.
pub fn replicas_to_raise(existing: usize, wanted: usize) -> Option<usize> {
    (wanted > existing.max(1)).then_some(wanted)
}

/// Keeps `user_outbox_backlog` current (every replica, broker or not; the relay also sets it
/// after each batch).
pub async fn watch_backlog(database: Database, metrics: Arc<Metrics>, interval: Duration) {
    loop {
        if let Ok(backlog) = database.outbox_backlog().await {
            metrics.outbox_backlog.set(backlog);
        }
        tokio::time::sleep(interval).await;
    }
}

/// Runs the relay until the task is dropped or aborted.
pub async fn run(
    database: Database,
    js: jetstream::Context,
    metrics: Arc<Metrics>,
    settings: RelaySettings,
    outbox_written: Arc<Notify>,
) {
    let mut backoff = Backoff::new(settings.poll_interval, settings.max_backoff);
    let mut stream_ready = false;
    loop {
        if let Ok(backlog) = database.outbox_backlog().await {
            metrics.outbox_backlog.set(backlog);
        }
        if !stream_ready {
            match ensure_stream(&js, settings.stream_replicas).await {
                Ok(_) => stream_ready = true,
                Err(error) => {
                    tracing::warn!(error = format!("{error:#}"), "outbox relay: no stream yet");
                    tokio::time::sleep(backoff.failed()).await;
                    continue;
                }
            }
        }
        let lease = match database.try_lead_outbox().await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                tokio::time::sleep(settings.standby_interval).await;
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "outbox relay: cannot take the lease");
                tokio::time::sleep(backoff.failed()).await;
                continue;
            }
        };
        metrics.outbox_relay_leader.set(1);
        tracing::info!("outbox relay: publishing (lease taken)");
        let outcome = lead(
            lease,
            &database,
            &js,
            &metrics,
            &settings,
            &outbox_written,
            &mut backoff,
        )
        .await;
        metrics.outbox_relay_leader.set(0);
        match outcome {
            Lost::Database(error) => tracing::warn!(%error, "outbox relay: lease lost"),
            Lost::Broker(error) => {
                tracing::warn!(error = %error, "outbox relay: publish failed; retrying");
            }
        }
        tokio::time::sleep(backoff.failed()).await;
    }
}

enum Lost {
    Database(crate::domain::StoreError),
    Broker(String),
}

/// Publishes while holding the lease; returns why it stopped (the lease is released or
/// abandoned on the way out).
async fn lead(
    mut lease: OutboxLease,
    database: &Database,
    js: &jetstream::Context,
    metrics: &Metrics,
    settings: &RelaySettings,
    outbox_written: &Notify,
    backoff: &mut Backoff,
) -> Lost {
    loop {
        let batch = match lease.pending(settings.batch).await {
            Ok(batch) => batch,
            Err(error) => {
                lease.abandon();
                return Lost::Database(error);
            }
        };
        if batch.is_empty() {
            metrics.outbox_backlog.set(0);
            // A commit since the query left a permit, so none is missed between the two.
            tokio::select! {
                () = outbox_written.notified() => {}
                () = tokio::time::sleep(settings.poll_interval) => {}
            }
            continue;
        }
        let mut acknowledged = Vec::with_capacity(batch.len());
        let mut failure = None;
        for event in &batch {
            let publish = PublishMessage::build()
                .message_id(event.event_id.to_string())
                .payload(event.payload.clone().into());
            let acked = match js.send_publish(event.event_type.subject(), publish).await {
                Ok(ack) => ack.await.map(drop).map_err(|error| error.to_string()),
                Err(error) => Err(error.to_string()),
            };
            match acked {
                Ok(()) => acknowledged.push(event.seq),
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        // Forget what JetStream holds even when a later event failed: the retry starts at the
        // failed one, so nothing is published out of order.
        if let Err(error) = lease.remove(&acknowledged).await {
            lease.abandon();
            return Lost::Database(error);
        }
        metrics.outbox_published.inc_by(acknowledged.len() as u64);
        if let Ok(backlog) = database.outbox_backlog().await {
            metrics.outbox_backlog.set(backlog);
        }
        if let Some(error) = failure {
            lease.release().await;
            return Lost::Broker(error);
        }
        backoff.succeeded();
    }
}

/// Doubling retry delay, from `base` up to `max`, reset by a success.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            next: base,
        }
    }

    /// The delay before the next attempt, doubling the one after.
    pub fn failed(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub fn succeeded(&mut self) {
        self.next = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        assert_eq!(backoff.failed(), Duration::from_millis(100));
        assert_eq!(backoff.failed(), Duration::from_millis(200));
        assert_eq!(backoff.failed(), Duration::from_millis(350));
        assert_eq!(backoff.failed(), Duration::from_millis(350));
        backoff.succeeded();
        assert_eq!(backoff.failed(), Duration::from_millis(100));
    }

    #[test]
    fn stream_replicas_are_only_ever_raised() {
        // JetStream reports the default single copy as 0 or 1.
        assert_eq!(replicas_to_raise(0, 1), None);
        assert_eq!(replicas_to_raise(1, 1), None);
        assert_eq!(replicas_to_raise(0, 3), Some(3));
        assert_eq!(replicas_to_raise(1, 3), Some(3));
        assert_eq!(replicas_to_raise(3, 3), None);
        assert_eq!(replicas_to_raise(3, 1), None);
        assert_eq!(replicas_to_raise(5, 3), None);
    }
}
