//! A server stream's messages handed from the upstream call to the client's writer through a
//! bounded buffer ([`relay`]).
//!
//! The upstream stream is always read, whatever the client does: an upstream HTTP/2 connection
//! is shared by many calls, and a stream whose data the gateway stopped reading would hold its
//! share of the connection's flow-control window (and with a few such streams stall every call
//! on it). A client that falls [`relay`]'s `capacity` messages behind therefore loses its stream
//! with RESOURCE_EXHAUSTED (after what was already buffered), and the upstream call is
//! cancelled. When the writer goes away (the client left), dropping the [`StreamReader`]
//! cancels the upstream call at once.

use std::future::Future;

use bytes::Bytes;
use http::HeaderMap;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

/// Messages buffered between the upstream and a client before the client is cut off.
pub const STREAM_BUFFER_MESSAGES: usize = 256;

/// What the relay reads: the upstream's messages, then its trailers.
pub trait MessageSource: Send + 'static {
    /// The next message; `Ok(None)` at the end of a successful stream.
    fn message(&mut self) -> impl Future<Output = Result<Option<Bytes>, Status>> + Send;
    /// The trailers after a successful end (custom metadata the client should see).
    fn trailers(&mut self) -> impl Future<Output = Option<HeaderMap>> + Send;
}

impl MessageSource for super::Messages {
    async fn message(&mut self) -> Result<Option<Bytes>, Status> {
        super::Messages::message(self).await
    }

    async fn trailers(&mut self) -> Option<HeaderMap> {
        super::Messages::trailers(self).await.ok().flatten()
    }
}

/// How a relayed stream ended.
#[derive(Debug)]
pub enum StreamEnd {
    /// The upstream finished with OK (and these trailers).
    Finished(HeaderMap),
    /// The upstream failed, or the gateway cut the stream (client too slow).
    Failed(Status),
}

/// What the writer gets next.
#[derive(Debug)]
pub enum Relayed {
    Message(Bytes),
    End(StreamEnd),
}

/// The writer's side of a relayed stream; dropping it cancels the upstream call.
pub struct StreamReader {
    messages: mpsc::Receiver<Bytes>,
    end: oneshot::Receiver<StreamEnd>,
    pump: tokio::task::JoinHandle<()>,
}

impl StreamReader {
    /// The next message, or the end once every buffered message was taken.
    pub async fn next(&mut self) -> Relayed {
        match self.messages.recv().await {
            Some(message) => Relayed::Message(message),
            None => Relayed::End((&mut self.end).await.unwrap_or_else(|_| {
                StreamEnd::Failed(Status::unavailable(
                    "the upstream stream ended unexpectedly",
                ))
            })),
        }
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

/// Reads `source` to its end on a task of its own, buffering at most `capacity` messages for
/// the reader.
pub fn relay<S: MessageSource>(mut source: S, capacity: usize) -> StreamReader {
    let (sender, messages) = mpsc::channel(capacity.max(1));
    let (end_sender, end) = oneshot::channel();
    let pump = tokio::spawn(async move {
        let end = loop {
            let next = tokio::select! {
                next = source.message() => next,
                // The reader is gone: stop reading, which cancels the upstream call.
                () = sender.closed() => return,
            };
            match next {
                Ok(Some(message)) => match sender.try_send(message) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        break StreamEnd::Failed(Status::resource_exhausted(format!(
                            "the client fell more than {capacity} messages behind the stream; \
                             the gateway ended it"
                        )));
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                },
                Ok(None) => break StreamEnd::Finished(source.trailers().await.unwrap_or_default()),
                Err(status) => break StreamEnd::Failed(status),
            }
        };
        // The upstream call ends (or is cancelled) before the reader learns the outcome.
        drop(source);
        drop(sender);
        let _ = end_sender.send(end);
    });
    StreamReader {
        messages,
        end,
        pump,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// A source fed by the test, which records whether it was dropped (= the call cancelled).
    struct Fed {
        messages: mpsc::Receiver<Result<Option<Bytes>, Status>>,
        dropped: Arc<AtomicBool>,
    }

    impl MessageSource for Fed {
        async fn message(&mut self) -> Result<Option<Bytes>, Status> {
            self.messages.recv().await.unwrap_or(Ok(None))
        }

        async fn trailers(&mut self) -> Option<HeaderMap> {
            let mut trailers = HeaderMap::new();
            trailers.insert("x-done", "yes".parse().unwrap());
            Some(trailers)
        }
    }

    impl Drop for Fed {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    /// What the test feeds the relayed stream with.
    type Feed = mpsc::Sender<Result<Option<Bytes>, Status>>;

    fn fed() -> (Feed, Fed, Arc<AtomicBool>) {
        let (sender, messages) = mpsc::channel(64);
        let dropped = Arc::new(AtomicBool::new(false));
        let source = Fed {
            messages,
            dropped: dropped.clone(),
        };
        (sender, source, dropped)
    }

    async fn wait_until(flag: &AtomicBool) {
        for _ in 0..500 {
            if flag.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        panic!("never happened");
    }

    #[tokio::test]
    async fn messages_pass_as_they_come_then_the_trailers() {
        let (upstream, source, _) = fed();
        let mut reader = relay(source, 4);
        upstream
            .send(Ok(Some(Bytes::from_static(b"a"))))
            .await
            .unwrap();
        assert!(matches!(reader.next().await, Relayed::Message(m) if m == "a"));
        upstream
            .send(Ok(Some(Bytes::from_static(b"b"))))
            .await
            .unwrap();
        upstream.send(Ok(None)).await.unwrap();
        assert!(matches!(reader.next().await, Relayed::Message(m) if m == "b"));
        match reader.next().await {
            Relayed::End(StreamEnd::Finished(trailers)) => assert_eq!(trailers["x-done"], "yes"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_reader_that_falls_behind_gets_the_buffer_then_resource_exhausted() {
        let (upstream, source, dropped) = fed();
        let mut reader = relay(source, 2);
        for index in 0..5u8 {
            upstream
                .send(Ok(Some(Bytes::from(vec![index]))))
                .await
                .unwrap();
        }
        // The upstream call is cancelled as soon as the buffer overflowed.
        wait_until(&dropped).await;
        assert!(matches!(reader.next().await, Relayed::Message(m) if m[..] == [0]));
        assert!(matches!(reader.next().await, Relayed::Message(m) if m[..] == [1]));
        match reader.next().await {
            Relayed::End(StreamEnd::Failed(status)) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted);
                assert!(status.message().contains("2 messages behind"), "{status:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn an_upstream_error_follows_the_messages() {
        let (upstream, source, _) = fed();
        let mut reader = relay(source, 4);
        upstream
            .send(Ok(Some(Bytes::from_static(b"a"))))
            .await
            .unwrap();
        upstream
            .send(Err(Status::unavailable("gone")))
            .await
            .unwrap();
        assert!(matches!(reader.next().await, Relayed::Message(_)));
        assert!(matches!(
            reader.next().await,
            Relayed::End(StreamEnd::Failed(status)) if status.code() == tonic::Code::Unavailable
        ));
    }

    #[tokio::test]
    async fn dropping_the_reader_cancels_the_upstream_call() {
        let (_upstream, source, dropped) = fed();
        let reader = relay(source, 4);
        drop(reader);
        wait_until(&dropped).await;
    }
}
