//! The traffic side's HTTP/2 client: one h2c connection per endpoint, made on the first call and
//! again once it closed, shared by every call through a clone of hyper's `SendRequest`.
//!
//! tonic's `Channel` put a `Buffer` worker task in front of its connection (every call a hop
//! through a queue and a wake-up of that task), plus `Reconnect`, `GrpcTimeout` and
//! `UserAgent` layers. Calls here go straight to the connection: [`Traffic`] is the tower
//! service tonic's `Grpc` client runs over, so requests are still encoded and responses decoded
//! (`tonic::Streaming`) by tonic. The deadline is the caller's (`grpc-timeout` header and its
//! own timer); a failed connect is a [`ConnectError`], which tells the caller nothing was sent.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tonic::body::Body;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

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

/// The tower service tonic's `Grpc` client sends an endpoint's calls through.
#[derive(Debug, Clone)]
pub struct Traffic(pub(super) Arc<super::Endpoint>);

impl tower::Service<http::Request<Body>> for Traffic {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // HTTP/2 multiplexes: a call waits for nothing but the connection, made in `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let endpoint = self.0.clone();
        Box::pin(async move {
            let mut sender = endpoint.traffic.sender().await?;
            Ok(sender.send_request(request).await?)
        })
    }
}
