//! A call's response as the terminated paths read it: the head's headers, then the messages as
//! the HTTP/2 stream delivers them (split by [`super::decode`]), then the trailers. Dropping the
//! response or its [`Messages`] before the end resets the upstream stream (h2 sends
//! RST_STREAM(CANCEL) for a stream nothing refers to any more), which is how a departed client
//! cancels the call.

use bytes::Bytes;
use h2::RecvStream;
use http::HeaderMap;
use tonic::Status;

use super::client::transport_status;
use super::decode::{MAX_MESSAGE_BYTES, MessageDecoder, head_outcome};

/// An upstream's answer whose head said messages follow (or a trailers-only OK).
#[derive(Debug)]
pub struct UpstreamResponse {
    headers: HeaderMap,
    messages: Messages,
}

impl UpstreamResponse {
    /// The response, or the status its head already decided (trailers-only failure, HTTP
    /// status other than 200).
    pub(super) fn from_http(response: http::Response<RecvStream>) -> Result<Self, Status> {
        let (head, body) = response.into_parts();
        let body = match head_outcome(head.status, &head.headers) {
            None => Some(body),
            // Trailers-only OK: no messages, and the body has already ended.
            Some(Ok(())) => None,
            Some(Err(status)) => return Err(status),
        };
        Ok(Self {
            headers: head.headers,
            messages: Messages {
                body,
                decoder: MessageDecoder::new(MAX_MESSAGE_BYTES),
                trailers: None,
            },
        })
    }

    /// The response headers (the upstream's metadata, and for a trailers-only answer its
    /// status fields).
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    pub fn into_parts(self) -> (HeaderMap, Messages) {
        (self.headers, self.messages)
    }

    pub fn into_messages(self) -> Messages {
        self.messages
    }
}

/// The messages of a response, then its trailers.
#[derive(Debug)]
pub struct Messages {
    /// `None` once the body ended (or failed): reading stops.
    body: Option<RecvStream>,
    decoder: MessageDecoder,
    /// The trailers of a stream that ended with OK, until taken.
    trailers: Option<HeaderMap>,
}

impl Messages {
    /// The next message; `Ok(None)` after the last one of a stream that ended with OK; the
    /// upstream's status, or a transport failure (its `source()` set), otherwise. After an
    /// error or the end, always `Ok(None)`.
    pub async fn message(&mut self) -> Result<Option<Bytes>, Status> {
        loop {
            match self.decoder.next() {
                Ok(Some(message)) => return Ok(Some(message)),
                Ok(None) => {}
                Err(status) => {
                    // Dropping the body resets the stream.
                    self.body = None;
                    return Err(status);
                }
            }
            let Some(body) = self.body.as_mut() else {
                return Ok(None);
            };
            match body.data().await {
                Some(Ok(chunk)) => {
                    // The bytes are the decoder's now: the upstream may send as much again.
                    let _ = body.flow_control().release_capacity(chunk.len());
                    self.decoder.push(chunk);
                    continue;
                }
                Some(Err(error)) => {
                    self.body = None;
                    return Err(transport_status(error));
                }
                None => {}
            }
            // The data has ended; the trailers (if any) are the stream's last frame.
            let trailers = match body.trailers().await {
                Ok(trailers) => trailers,
                Err(error) => {
                    self.body = None;
                    return Err(transport_status(error));
                }
            };
            self.body = None;
            self.decoder.finish(trailers.as_ref())?;
            self.trailers = trailers;
            return Ok(None);
        }
    }

    /// The trailers of a stream that ended with OK (read to its end first, skipping the
    /// messages not taken yet); `None` when it ended without any (trailers-only answer).
    pub async fn trailers(&mut self) -> Result<Option<HeaderMap>, Status> {
        while self.message().await?.is_some() {}
        Ok(self.trailers.take())
    }
}

#[cfg(test)]
mod tests {
    use std::{convert::Infallible, net::SocketAddr, time::Duration};

    use http::{HeaderValue, Request, Response, StatusCode, Uri};
    use http_body_util::{BodyExt as _, StreamBody};
    use hyper::body::{Frame, Incoming};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use meshgate_wire::grpc::message_frame;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::Code;

    use super::*;
    use crate::upstream::client::{Connector, grpc_request};

    /// What the test writes a response body with.
    type Feed = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

    /// A real h2c server for one connection: every request is answered with `status` and
    /// `headers` at once, and handed to the test with the feed of its response body.
    struct Upstream {
        addr: SocketAddr,
        calls: mpsc::UnboundedReceiver<(Request<Incoming>, Feed)>,
        server: tokio::task::JoinHandle<()>,
    }

    async fn upstream(status: StatusCode, headers: &[(&'static str, &'static str)]) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (calls_sender, calls) = mpsc::unbounded_channel();
        let headers: HeaderMap = headers
            .iter()
            .map(|(name, value)| (name.parse().unwrap(), HeaderValue::from_static(value)))
            .collect();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let (feed, frames) = mpsc::channel(8);
                calls_sender.send((request, feed)).unwrap();
                let mut response = Response::new(StreamBody::new(ReceiverStream::new(frames)));
                *response.status_mut() = status;
                *response.headers_mut() = headers.clone();
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        Upstream {
            addr,
            calls,
            server,
        }
    }

    /// A call of `/pkg.Service/Method` with message `hi`, as the endpoint of a resolved name.
    async fn call(connector: &Connector, metadata: &HeaderMap) -> Result<UpstreamResponse, Status> {
        let origin: Uri = "http://users.internal:50051".parse().unwrap();
        let path = "/pkg.Service/Method".parse().unwrap();
        let frame = Bytes::from(message_frame(b"hi"));
        let request = grpc_request(&origin, &path, metadata, Duration::from_millis(1500));
        UpstreamResponse::from_http(connector.send(request, frame).await?)
    }

    fn data(bytes: &[u8]) -> Result<Frame<Bytes>, Infallible> {
        Ok(Frame::data(Bytes::copy_from_slice(bytes)))
    }

    /// More than the stream's and the connection's flow-control windows (4 and 16 MiB) flows:
    /// the capacity of what was read is given back, or the upstream would stall once they
    /// were used up. The upstream writes only after the gateway has read what came before.
    #[tokio::test]
    async fn a_stream_larger_than_the_flow_control_windows_is_read_to_its_end() {
        let mut upstream = upstream(StatusCode::OK, &[("content-type", "application/grpc")]).await;
        let connector = Connector::new(upstream.addr, Duration::from_secs(5), 1);
        let response = call(&connector, &HeaderMap::new()).await.unwrap();
        let (_, feed) = upstream.calls.recv().await.unwrap();
        let message = vec![7u8; 3 << 20];
        let mut messages = response.into_messages();
        for _ in 0..8 {
            feed.send(data(&message_frame(&message))).await.unwrap();
            let read = tokio::time::timeout(Duration::from_secs(10), messages.message())
                .await
                .expect("the upstream stalled: flow-control capacity was not released");
            assert_eq!(read.unwrap().unwrap().len(), message.len());
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        feed.send(Ok(Frame::trailers(trailers))).await.unwrap();
        assert!(messages.message().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_call_is_one_grpc_request_and_its_messages_come_across_data_frames() {
        let mut upstream = upstream(
            StatusCode::OK,
            &[("content-type", "application/grpc"), ("x-answer", "a")],
        )
        .await;
        let connector = Connector::new(upstream.addr, Duration::from_secs(5), 1);
        let mut metadata = HeaderMap::new();
        metadata.insert("x-request-id", HeaderValue::from_static("r1"));
        // The gRPC headers are the client's own, whatever the metadata says.
        metadata.insert("content-type", HeaderValue::from_static("text/plain"));
        let response = call(&connector, &metadata).await.unwrap();
        assert_eq!(response.headers()["x-answer"], "a");

        let (request, feed) = upstream.calls.recv().await.unwrap();
        assert_eq!(request.method(), http::Method::POST);
        assert_eq!(
            request.uri().to_string(),
            "http://users.internal:50051/pkg.Service/Method"
        );
        let headers = request.headers();
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(headers.get_all("content-type").iter().count(), 1);
        assert_eq!(headers["te"], "trailers");
        assert_eq!(headers["grpc-timeout"], "1500m");
        assert_eq!(headers["x-request-id"], "r1");
        let body = request.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, message_frame(b"hi"));

        // One message split over two DATA frames, the second sharing its frame with another.
        let (first, second) = (message_frame(b"first"), message_frame(b"second"));
        feed.send(data(&first[..3])).await.unwrap();
        feed.send(data(&[&first[3..], &second[..]].concat()))
            .await
            .unwrap();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("x-trailer", HeaderValue::from_static("t"));
        feed.send(Ok(Frame::trailers(trailers))).await.unwrap();
        drop(feed);

        let mut messages = response.into_messages();
        assert_eq!(messages.message().await.unwrap().unwrap(), "first");
        assert_eq!(messages.message().await.unwrap().unwrap(), "second");
        let trailers = messages.trailers().await.unwrap().unwrap();
        assert_eq!(trailers["x-trailer"], "t");
        assert!(messages.message().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_answer_that_is_not_grpc_fails_with_the_mapped_status() {
        let upstream = upstream(StatusCode::SERVICE_UNAVAILABLE, &[]).await;
        let connector = Connector::new(upstream.addr, Duration::from_secs(5), 1);
        let status = call(&connector, &HeaderMap::new()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        // The upstream answered: no transport error behind it.
        assert!(std::error::Error::source(&status).is_none());
    }

    /// A call on `upstream` whose first message, `one`, was read: the connection, the rest of
    /// the messages, and the feed of the upstream's response body.
    async fn first_message_read(upstream: &mut Upstream) -> (Connector, Messages, Feed) {
        let connector = Connector::new(upstream.addr, Duration::from_secs(5), 1);
        let mut messages = call(&connector, &HeaderMap::new())
            .await
            .unwrap()
            .into_messages();
        let (_request, feed) = upstream.calls.recv().await.unwrap();
        feed.send(data(&message_frame(b"one"))).await.unwrap();
        assert_eq!(messages.message().await.unwrap().unwrap(), "one");
        (connector, messages, feed)
    }

    #[tokio::test]
    async fn dropping_the_messages_resets_the_upstream_stream() {
        let mut upstream = upstream(StatusCode::OK, &[]).await;
        let (_connector, messages, feed) = first_message_read(&mut upstream).await;
        drop(messages);
        // The server drops the body it was writing once the stream is reset.
        tokio::time::timeout(Duration::from_secs(5), feed.closed())
            .await
            .expect("the upstream stream was reset");
    }

    #[tokio::test]
    async fn a_connection_lost_mid_stream_is_a_transport_failure() {
        let mut upstream = upstream(StatusCode::OK, &[]).await;
        let (_connector, mut messages, _feed) = first_message_read(&mut upstream).await;
        upstream.server.abort();
        let status = messages.message().await.unwrap_err();
        assert!(
            std::error::Error::source(&status).is_some(),
            "a transport failure keeps its error: {status:?}"
        );
        assert!(messages.message().await.unwrap().is_none());
    }
}
