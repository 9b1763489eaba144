//! The traffic side's HTTP/2 client: one h2c connection per endpoint, made on the first call and
//! again once it closed, shared by every call through a clone of hyper's `SendRequest`, and the
//! request of one call ([`grpc_request`]).
//!
//! No tonic client runs here: tonic's `Channel` put a `Buffer` worker task in front of its
//! connection (every call a hop through a queue and a wake-up of that task), plus `Reconnect`,
//! `GrpcTimeout` and `UserAgent` layers, and its `Grpc` client an encode stream per request and
//! `tonic::Streaming` per response. A call here is one `http::Request` with its single message
//! frame as the body, sent straight on the connection; the response is decoded by
//! [`super::response`]. The deadline is the caller's (`grpc-timeout` header and its own timer);
//! a failed connect is a [`ConnectError`], which tells the caller nothing was sent.

use std::{
    net::SocketAddr,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Uri, Version, header, uri::PathAndQuery};
use http_body_util::Full;
use hyper::{body::Incoming, client::conn::http2::SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meshgate_wire::grpc_headers;
use tonic::Status;

type Body = Full<Bytes>;

/// A transport failure (connect, reset, broken connection) as the call's status: tonic's mapping
/// of hyper and h2 errors, with the error kept as its `source()`, which is how the caller tells a
/// transport failure from an answer (passive health, [`super::sent_nothing`]).
pub(super) fn transport_status(
    error: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> Status {
    Status::from_error(error.into())
}

/// One gRPC call as an HTTP/2 request: POST to `path` at `origin` (whose authority is the
/// `:authority`), the gRPC headers with the remaining `timeout` as `grpc-timeout`, the call's
/// metadata, and `frame` (the request message with its 5-byte prefix) as the whole body.
pub(super) fn grpc_request(
    origin: &Uri,
    path: &PathAndQuery,
    frame: Bytes,
    metadata: &HeaderMap,
    timeout: Duration,
) -> http::Request<Body> {
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
    let mut request = http::Request::new(Full::new(frame));
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

/// An endpoint's traffic connection, made lazily and re-made after it closed.
#[derive(Debug)]
pub(super) struct Connector {
    addr: SocketAddr,
    connect_timeout: Duration,
    current: Mutex<Option<SendRequest<Body>>>,
    /// One connect at a time; callers that waited for a failed one fail with its error rather
    /// than queueing a connect timeout each (they fail over to another endpoint instead).
    connecting: tokio::sync::Mutex<Option<String>>,
    attempts: AtomicU64,
}

impl Connector {
    pub(super) fn new(addr: SocketAddr, connect_timeout: Duration) -> Self {
        Self {
            addr,
            connect_timeout,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(None),
            attempts: AtomicU64::new(0),
        }
    }

    fn open(&self) -> Option<SendRequest<Body>> {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        current
            .as_ref()
            .filter(|sender| !sender.is_closed())
            .cloned()
    }

    /// Sends `request` on the connection, made first if there is none.
    pub(super) async fn send(
        &self,
        request: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, Status> {
        let mut sender = self.sender().await.map_err(transport_status)?;
        sender.send_request(request).await.map_err(transport_status)
    }

    /// The open connection, or a new one.
    async fn sender(&self) -> Result<SendRequest<Body>, ConnectError> {
        if let Some(sender) = self.open() {
            return Ok(sender);
        }
        let seen = self.attempts.load(Ordering::Acquire);
        let mut last_failure = self.connecting.lock().await;
        if let Some(sender) = self.open() {
            return Ok(sender);
        }
        if self.attempts.load(Ordering::Acquire) != seen
            && let Some(reason) = last_failure.as_ref()
        {
            return Err(self.error(reason.clone()));
        }
        self.attempts.fetch_add(1, Ordering::AcqRel);
        match self.connect().await {
            Ok(sender) => {
                *last_failure = None;
                *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender.clone());
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
    /// runtime until either side closes it.
    async fn connect(&self) -> Result<SendRequest<Body>, String> {
        let stream = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect(self.addr),
        )
        .await
        .map_err(|_| format!("connect timed out after {:?}", self.connect_timeout))?
        .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .adaptive_window(true)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(upstream = %addr, %error, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}
