//! The traffic side's HTTP/2 client: one h2c connection per endpoint and proxy worker, made on
//! the worker's first call and again once it closed, shared by the worker's calls through a clone
//! of h2's `SendRequest`, and the request of one call ([`grpc_request`]).
//!
//! No tonic client runs here: tonic's `Channel` put a `Buffer` worker task in front of its
//! connection (every call a hop through a queue and a wake-up of that task), plus `Reconnect`,
//! `GrpcTimeout` and `UserAgent` layers, and its `Grpc` client an encode stream per request and
//! `tonic::Streaming` per response. hyper's client is not used either: it hands every request
//! to its connection task through a channel and spawns a task per request for the response
//! (`strace` showed an eventfd write and a separate `writev` for the DATA frame per call). With
//! the `h2` crate (hyper's own HTTP/2 layer) the calling task opens the stream, queues the
//! request's one DATA frame with END_STREAM behind its HEADERS (one write for both), and
//! awaits the response itself; the connection task only does the socket I/O. The response is
//! decoded by [`super::response`]. The deadline is the caller's (`grpc-timeout` header and its
//! own timer); a failed connect is a [`ConnectError`], which tells the caller nothing was sent.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use h2::{
    RecvStream,
    client::{self, SendRequest},
};
use http::{HeaderMap, HeaderValue, Method, Uri, Version, header, uri::PathAndQuery};
use meshgate_wire::grpc_headers;
use tonic::Status;

/// Flow-control windows the gateway grants an upstream: a response message up to the 4 MiB
/// decode limit flows without waiting for a WINDOW_UPDATE round trip per 64 KiB (h2's default).
/// They replace hyper's adaptive (BDP-measured) window, which the h2 crate does not have.
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;

/// A transport failure (connect, reset, broken connection) as the call's status: tonic's mapping
/// of hyper and h2 errors, with the error kept as its `source()`, which is how the caller tells a
/// transport failure from an answer (passive health, [`super::sent_nothing`]).
pub(super) fn transport_status(
    error: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> Status {
    Status::from_error(error.into())
}

/// One gRPC call's HTTP/2 request head: POST to `path` at `origin` (whose authority is the
/// `:authority`), the gRPC headers with the remaining `timeout` as `grpc-timeout`, and the
/// call's metadata. The body (the message frame) is sent by [`Connector::send`].
pub(super) fn grpc_request(
    origin: &Uri,
    path: &PathAndQuery,
    metadata: &HeaderMap,
    timeout: Duration,
) -> http::Request<()> {
    let mut uri = http::uri::Parts::default();
    uri.scheme = origin.scheme().cloned();
    uri.authority = origin.authority().cloned();
    uri.path_and_query = Some(path.clone());
    let mut headers = HeaderMap::with_capacity(metadata.len() + 3);
    for (name, value) in metadata {
        headers.append(name.clone(), value.clone());
    }
    // After the metadata, so these are the only values of their names.
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    headers.insert(
        "grpc-timeout",
        HeaderValue::try_from(grpc_headers::format_timeout(timeout))
            .expect("digits and a unit are a valid header value"),
    );
    let mut request = http::Request::new(());
    *request.method_mut() = Method::POST;
    *request.uri_mut() = Uri::from_parts(uri).expect("an origin and a path make a valid URI");
    *request.version_mut() = Version::HTTP_2;
    *request.headers_mut() = headers;
    request
}

/// The connection to an endpoint could not be made: no byte of any request was sent.
#[derive(Debug)]
pub struct ConnectError {
    addr: SocketAddr,
    reason: String,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "could not connect to upstream {}: {}",
            self.addr, self.reason
        )
    }
}

impl std::error::Error for ConnectError {}

/// An open connection: the handle calls open streams with, and whether its task has ended
/// (h2's handle cannot tell; a call on a closed one fails).
#[derive(Debug, Clone)]
struct Open {
    sender: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

/// An endpoint's traffic connections, one per proxy worker ([`crate::workers`]), each made
/// lazily and re-made after it closed: a call and its connection's I/O task run on the same
/// thread, so neither wakes the other across threads.
#[derive(Debug)]
pub(super) struct Connector {
    addr: SocketAddr,
    connect_timeout: Duration,
    /// Slot 0 serves callers outside the workers; slot `n` worker `n`.
    slots: Box<[Slot]>,
}

/// One worker's connection to the endpoint.
#[derive(Debug, Default)]
struct Slot {
    current: Mutex<Option<Open>>,
    /// One connect at a time; callers that waited for a failed one fail with its error rather
    /// than queueing a connect timeout each (they fail over to another endpoint instead).
    connecting: tokio::sync::Mutex<Option<String>>,
    attempts: AtomicU64,
}

impl Slot {
    fn open(&self) -> Option<SendRequest<Bytes>> {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        current
            .as_ref()
            .filter(|open| !open.closed.load(Ordering::Acquire))
            .map(|open| open.sender.clone())
    }
}

impl Connector {
    /// Connections for `workers` proxy workers (and callers outside them).
    pub(super) fn new(addr: SocketAddr, connect_timeout: Duration, workers: usize) -> Self {
        Self {
            addr,
            connect_timeout,
            slots: (0..=workers).map(|_| Slot::default()).collect(),
        }
    }

    /// The calling thread's slot (slot 0 for a worker this connector was not made for).
    fn slot(&self) -> &Slot {
        self.slots
            .get(crate::workers::current())
            .unwrap_or(&self.slots[0])
    }

    /// Sends `request` with `frame` (one message frame) as its whole body on the connection,
    /// made first if there is none, and waits for the response head.
    pub(super) async fn send(
        &self,
        request: http::Request<()>,
        frame: Bytes,
    ) -> Result<http::Response<RecvStream>, Status> {
        let sender = self.sender().await.map_err(transport_status)?;
        // Waits only while the upstream's SETTINGS_MAX_CONCURRENT_STREAMS are all in use.
        let mut sender = sender.ready().await.map_err(transport_status)?;
        let (response, mut body) = sender
            .send_request(request, false)
            .map_err(transport_status)?;
        // Queued behind the HEADERS frame: both go out in the connection task's next write.
        // A message larger than the stream's send window is held by h2 until the upstream
        // grants more.
        body.send_data(frame, true).map_err(transport_status)?;
        response.await.map_err(transport_status)
    }

    /// The calling worker's open connection, or a new one.
    async fn sender(&self) -> Result<SendRequest<Bytes>, ConnectError> {
        let slot = self.slot();
        if let Some(sender) = slot.open() {
            return Ok(sender);
        }
        let seen = slot.attempts.load(Ordering::Acquire);
        let mut last_failure = slot.connecting.lock().await;
        if let Some(sender) = slot.open() {
            return Ok(sender);
        }
        if slot.attempts.load(Ordering::Acquire) != seen
            && let Some(reason) = last_failure.as_ref()
        {
            return Err(self.error(reason.clone()));
        }
        slot.attempts.fetch_add(1, Ordering::AcqRel);
        match self.connect().await {
            Ok(open) => {
                *last_failure = None;
                let sender = open.sender.clone();
                *slot.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(open);
                Ok(sender)
            }
            Err(reason) => {
                *last_failure = Some(reason.clone());
                Err(self.error(reason))
            }
        }
    }

    fn error(&self, reason: String) -> ConnectError {
        ConnectError {
            addr: self.addr,
            reason,
        }
    }

    /// TCP (no Nagle) and the HTTP/2 handshake; the connection runs as a task on the current
    /// runtime (the worker's one thread) until either side closes it.
    async fn connect(&self) -> Result<Open, String> {
        let stream = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect(self.addr),
        )
        .await
        .map_err(|_| format!("connect timed out after {:?}", self.connect_timeout))?
        .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (sender, connection) = tokio::time::timeout(
            self.connect_timeout,
            client::Builder::new()
                .initial_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                // The gateway never accepts pushed streams.
                .enable_push(false)
                .handshake::<_, Bytes>(stream),
        )
        .await
        .map_err(|_| {
            format!(
                "HTTP/2 handshake timed out after {:?}",
                self.connect_timeout
            )
        })?
        .map_err(|e| e.to_string())?;
        let closed = Arc::new(AtomicBool::new(false));
        let addr = self.addr;
        let ended = closed.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(upstream = %addr, %error, "upstream connection ended");
            }
            ended.store(true, Ordering::Release);
        });
        Ok(Open { sender, closed })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use http::{Response, StatusCode};
    use meshgate_wire::grpc::message_frame;

    use super::*;

    /// An h2c server answering every call with an empty OK stream; counts its connections.
    async fn counting_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut connection = h2::server::handshake(stream).await.unwrap();
                    while let Some(Ok((_request, mut respond))) = connection.accept().await {
                        let response = Response::builder()
                            .status(StatusCode::OK)
                            .header("content-type", "application/grpc")
                            .body(())
                            .unwrap();
                        let mut body = respond.send_response(response, false).unwrap();
                        let mut trailers = HeaderMap::new();
                        trailers.insert("grpc-status", HeaderValue::from_static("0"));
                        body.send_trailers(trailers).unwrap();
                    }
                });
            }
        });
        (addr, connections)
    }

    async fn call(connector: &Connector) {
        let origin: Uri = "http://users.internal:50051".parse().unwrap();
        let path = "/pkg.Service/Method".parse().unwrap();
        let request = grpc_request(&origin, &path, &HeaderMap::new(), Duration::from_secs(5));
        let frame = Bytes::from(message_frame(b"hi"));
        let response = connector.send(request, frame).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    /// Each worker calls on a connection of its own (made on its thread), reused by its later
    /// calls; a thread outside the workers (slot 0) has one too.
    #[tokio::test]
    async fn each_worker_calls_on_its_own_connection() {
        let (addr, connections) = counting_upstream().await;
        let connector = Connector::new(addr, Duration::from_secs(5), 2);
        for (slot, made) in [(1, 1), (1, 1), (2, 2), (1, 2), (2, 2), (0, 3), (0, 3)] {
            crate::workers::enter(slot);
            call(&connector).await;
            assert_eq!(
                connections.load(Ordering::SeqCst),
                made,
                "after a call from worker slot {slot}"
            );
        }
        // A slot the connector was not made for shares slot 0's connection.
        crate::workers::enter(5);
        call(&connector).await;
        assert_eq!(connections.load(Ordering::SeqCst), 3);
        crate::workers::enter(0);
    }
}
