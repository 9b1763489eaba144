//! What the writers of server streams (gRPC-web, Server-Sent Events) share: what they wait on
//! (the next relayed message of [`crate::upstream::stream`], a timer of theirs such as a
//! deadline or heartbeat, or the client leaving, which ends the stream and, with the reader
//! dropped, the upstream call) and how their heads frame a body of unknown length.

use pingora::{http::ResponseHeader, proxy::Session};
use tokio::time::Instant;

use crate::upstream::stream::{Relayed, StreamReader};

pub(super) enum StreamStep {
    Relayed(Relayed),
    /// The writer's timer fired.
    Timer,
    /// The client closed the stream or the connection.
    ClientGone,
}

/// Waits for the next of: a relayed message or end, `timer`, the client leaving.
pub(super) async fn next_step(
    session: &mut Session,
    reader: &mut StreamReader,
    timer: Option<Instant>,
) -> StreamStep {
    tokio::select! {
        biased;
        relayed = reader.next() => StreamStep::Relayed(relayed),
        () = async {
            match timer {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        } => StreamStep::Timer,
        // The request was read whole: this only completes when the client goes away.
        _ = session.downstream_session.read_body_or_idle(true) => StreamStep::ClientGone,
    }
}

/// Frames a streamed body whose length is unknown when its head goes out. HTTP/1.1: chunked, so
/// the stream's end is marked and the connection stays usable; without it pingora frames the
/// body by closing the connection while the head still says `connection: keep-alive`.
/// HTTP/1.0 has no chunks; HTTP/2 frames by itself (pingora drops the header there).
pub(super) fn frame_streamed_body(session: &Session, head: &mut ResponseHeader) {
    if session.req_header().version == http::Version::HTTP_11 {
        let _ = head.insert_header("transfer-encoding", "chunked");
    }
}
