//! The listener/session seam: every accepted connection passes [`ConnectionGate`] before
//! pingora's HTTP handling. pingora 0.9.1 offers a per-read timeout (reset by every byte, so a
//! client sending one header line every few seconds stays forever), an HTTP/1.1 keep-alive
//! timeout, an HTTP/2 idle timeout (`HttpServerOptions::h2_idle_timeout`) and a 1 s pause of
//! the accept loop on EMFILE; it has no total header-read deadline and no connection caps. The
//! gate adds them ([`crate::conn_limits`]):
//! - admission: at `max` open connections (kept below the open-file limit) or
//!   `max_per_client_ip` from one address, the connection gets `503` + `connection: close` and
//!   is closed;
//! - a header deadline per connection, armed at accept and between HTTP/1.1 requests, cleared by
//!   the proxy's hooks when a request header is complete ([`ConnectionTracker::request_started`]).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use async_trait::async_trait;
use pingora::{
    apps::ServerApp,
    protocols::{SocketDigest, Stream},
    server::ShutdownWatch,
};
use tokio::{io::AsyncWriteExt, sync::Notify};

use crate::{
    conn_limits::{Admission, ConnectionSettings, HeaderDeadline},
    metrics::Metrics,
};

/// One open connection's header deadline and its watcher's wake-up.
#[derive(Debug)]
struct Connection {
    deadline: Mutex<HeaderDeadline>,
    changed: Notify,
}

impl Connection {
    fn deadline(&self) -> std::sync::MutexGuard<'_, HeaderDeadline> {
        self.deadline.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves when the deadline passes while still armed.
    async fn expired(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let at = self.deadline().at();
            match at {
                Some(at) if Instant::now() >= at => return,
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at.into()) => {}
                        _ = &mut changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

/// Connection identity shared by the accepted stream and every request on it: the socket
/// digest pingora hands to both (pointer identity, kept alive while registered).
fn key(digest: &Arc<SocketDigest>) -> usize {
    Arc::as_ptr(digest) as usize
}

/// Open connections by [`key`]; the digest is held so its address cannot be reused meanwhile.
type OpenConnections = HashMap<usize, (Arc<SocketDigest>, Arc<Connection>)>;

/// The open connections and the caps.
#[derive(Debug)]
pub struct ConnectionTracker {
    settings: ConnectionSettings,
    admission: Mutex<Admission>,
    open: Mutex<OpenConnections>,
}

impl ConnectionTracker {
    /// `max` is the effective cap (see [`crate::conn_limits::effective_max`]).
    pub fn new(settings: ConnectionSettings, max: usize) -> Self {
        Self {
            settings,
            admission: Mutex::new(Admission::new(max, settings.max_per_client_ip)),
            open: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &ConnectionSettings {
        &self.settings
    }

    fn connection(&self, digest: Option<&Arc<SocketDigest>>) -> Option<Arc<Connection>> {
        let digest = digest?;
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&key(digest))
            .map(|(_, connection)| connection.clone())
    }

    /// A complete request header arrived on the connection with this socket digest. Disarming
    /// wakes nobody: the watcher re-reads the deadline when its sleep ends (a wake-up per
    /// request would poll the whole connection task again).
    pub fn request_started(&self, digest: Option<&Arc<SocketDigest>>, http2: bool) {
        if let Some(connection) = self.connection(digest) {
            connection.deadline().request_started(http2);
        }
    }

    /// A request on that connection ended. On HTTP/2 the deadline stays disarmed
    /// ([`HeaderDeadline::request_ended`]), so the shared table is not even looked up.
    pub fn request_ended(&self, digest: Option<&Arc<SocketDigest>>, http2: bool) {
        if http2 {
            return;
        }
        if let Some(connection) = self.connection(digest)
            && connection
                .deadline()
                .request_ended(Instant::now(), &self.settings)
        {
            connection.changed.notify_one();
        }
    }

    pub fn open_connections(&self) -> usize {
        self.admission
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .open()
    }
}

/// Wraps pingora's HTTP app (`A`) with admission and the header deadline.
pub struct ConnectionGate<A> {
    pub inner: Arc<A>,
    pub tracker: Arc<ConnectionTracker>,
    pub metrics: Arc<Metrics>,
}

const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
connection: close\r\ncontent-length: 26\r\nretry-after: 1\r\n\r\ntoo many open connections\n";

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for ConnectionGate<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let digest = stream.get_socket_digest();
        let client: Option<IpAddr> = digest
            .as_ref()
            .and_then(|d| d.peer_addr())
            .and_then(|addr| addr.as_inet())
            .map(|addr| addr.ip());
        let admitted = self
            .tracker
            .admission
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(client);
        if let Err(refusal) = admitted {
            self.metrics
                .connections_refused
                .with_label_values(&[refusal.as_str()])
                .inc();
            tracing::debug!(?client, reason = refusal.as_str(), "connection refused");
            // Best effort: the client may be gone, or be an HTTP/2 client that only sees a close.
            let _ = tokio::time::timeout(self.tracker.settings.header_read_timeout, async {
                let _ = stream.write_all(REFUSAL).await;
                let _ = stream.flush().await;
                let _ = stream.shutdown().await;
            })
            .await;
            return None;
        }
        self.metrics.connections.inc();
        let connection = Arc::new(Connection {
            deadline: Mutex::new(HeaderDeadline::opened(
                Instant::now(),
                &self.tracker.settings,
            )),
            changed: Notify::new(),
        });
        if let Some(digest) = &digest {
            self.tracker
                .open
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key(digest), (digest.clone(), connection.clone()));
        }
        let result = tokio::select! {
            result = self.inner.process_new(stream, shutdown) => result,
            _ = connection.expired() => {
                // Dropping pingora's session closes the socket.
                self.metrics.header_timeouts.inc();
                tracing::debug!(?client, "closed: no complete request header in time");
                None
            }
        };
        if let Some(digest) = &digest {
            self.tracker
                .open
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key(digest));
        }
        self.tracker
            .admission
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .release(client);
        self.metrics.connections.dec();
        result
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}
