//! What the writers of server streams (gRPC-web, Server-Sent Events) wait on: the next relayed
//! message ([`crate::upstream::stream`]), a timer of theirs (deadline, heartbeat), or the client
//! leaving, which ends the stream and, with the reader dropped, the upstream call.

use pingora::proxy::Session;
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
