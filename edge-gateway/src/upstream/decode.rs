//! A gRPC response to one of the gateway's calls, read without I/O: what its head decides (a
//! trailers-only answer, or an HTTP status that is not gRPC's), its messages split from the body
//! chunks as they arrive ([`meshgate_wire`]'s framing), and the status its trailers end it with.
//! [`super::response`] feeds it the HTTP/2 stream's data.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use meshgate_wire::grpc::{COMPRESSED_FLAG, FrameError, status as wire_status};
use meshgate_wire::grpc_headers;
use meshgate_wire::grpc_web::{Frame, FrameDecoder};
use tonic::{Code, Status};

/// The largest response message the gateway reads: tonic's default decode limit, which these
/// calls had while tonic decoded them.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// What tonic answers for a body that ended without `grpc-status` (kept word for word: clients
/// and logs saw it before the gateway decoded responses itself).
const MISSING_STATUS: &str = "protocol error: missing grpc-status trailer, stream was terminated \
                              without a final status (possible truncation by a proxy or load \
                              balancer)";

/// The upstream broke the gRPC framing of its response: a failed exchange, not an answer. Its
/// status carries this error as `source()`, so [`crate::error::GatewayError::from_upstream`]
/// treats it as a transport failure: the client gets the gateway's generic "upstream
/// unavailable", never this text (no internal error text reaches a client); it is logged here.
#[derive(Debug, thiserror::Error)]
#[error("upstream protocol error: {0}")]
pub struct ProtocolError(String);

/// INTERNAL (gRPC's code for a broken response) with the violation as its source.
fn protocol_error(detail: String) -> Status {
    tracing::warn!(%detail, "upstream protocol error");
    let mut status = Status::new(Code::Internal, detail.clone());
    status.set_source(std::sync::Arc::new(ProtocolError(detail)));
    status
}

/// The status a header or trailer block carries: `None` without `grpc-status`, `Ok` for OK.
/// `grpc-message` is percent-decoded; `grpc-status-details-bin` is kept when it is base64.
fn carried_status(fields: &HeaderMap) -> Option<Result<(), Status>> {
    if !fields.contains_key("grpc-status") {
        return None;
    }
    // A value that is no number is a status the client cannot know: UNKNOWN.
    let code = grpc_headers::status_of(fields).map_or(Code::Unknown, Code::from_i32);
    if code == Code::Ok {
        return Some(Ok(()));
    }
    let message = fields
        .get("grpc-message")
        .map(|value| grpc_headers::decode_message(&String::from_utf8_lossy(value.as_bytes())))
        .unwrap_or_default();
    let details = fields
        .get("grpc-status-details-bin")
        .and_then(|value| grpc_headers::decode_details(value.as_bytes()))
        .map(Bytes::from)
        .unwrap_or_default();
    Some(Err(Status::with_details(code, message, details)))
}

/// What a response head decides before any body is read: `None` when messages follow; `Ok`
/// for a trailers-only OK (no messages); the status of a trailers-only failure, or of an HTTP
/// status other than 200 without `grpc-status` (gRPC's HTTP mapping, as tonic reads it).
pub fn head_outcome(http_status: StatusCode, headers: &HeaderMap) -> Option<Result<(), Status>> {
    if let Some(outcome) = carried_status(headers) {
        return Some(outcome);
    }
    (http_status != StatusCode::OK).then(|| {
        let code = wire_status::from_http(http_status.as_u16());
        Err(Status::new(
            Code::from_i32(i32::try_from(code).unwrap_or(Code::Unknown as i32)),
            format!(
                "grpc-status header missing, mapped from HTTP status code {}",
                http_status.as_u16()
            ),
        ))
    })
}

/// The messages of a response body, pushed chunk by chunk; a message that arrived within one
/// chunk is a slice of it, not a copy.
#[derive(Debug)]
pub struct MessageDecoder {
    frames: FrameDecoder,
    /// Frames split off; those before `taken` were handed out.
    ready: Vec<Frame>,
    taken: usize,
    /// What went wrong while splitting, reported once the frames before it were taken.
    failed: Option<Status>,
    /// An error was reported: nothing more comes out.
    stopped: bool,
}

impl MessageDecoder {
    pub fn new(max_message: usize) -> Self {
        Self {
            frames: FrameDecoder::new(max_message),
            ready: Vec::new(),
            taken: 0,
            failed: None,
            stopped: false,
        }
    }

    /// The next body chunk.
    pub fn push(&mut self, chunk: Bytes) {
        if self.failed.is_some() || self.stopped {
            return;
        }
        if let Err(error) = self.frames.push_bytes(chunk, &mut self.ready) {
            self.failed = Some(match error {
                FrameError::TooLarge { size, limit } => Status::resource_exhausted(format!(
                    "the upstream's response message of {size} bytes exceeds the gateway's \
                     limit of {limit} bytes"
                )),
                other => protocol_error(other.to_string()),
            });
        }
    }

    /// The next whole message; `Ok(None)` until more is pushed. The first error is the last
    /// thing returned.
    pub fn next(&mut self) -> Result<Option<Bytes>, Status> {
        if self.stopped {
            return Ok(None);
        }
        let Some(frame) = self.ready.get_mut(self.taken) else {
            return match self.failed.take() {
                Some(status) => self.stop(status),
                None => Ok(None),
            };
        };
        self.taken += 1;
        let flags = frame.flags;
        let message = std::mem::take(&mut frame.payload);
        if self.taken == self.ready.len() {
            self.ready.clear();
            self.taken = 0;
        }
        match flags {
            0 => Ok(Some(message)),
            // The gateway sends no grpc-accept-encoding, so a compressed message is the
            // upstream's mistake (the compression spec's INTERNAL).
            COMPRESSED_FLAG => self.stop(protocol_error(
                "a compressed message, though the gateway accepts no compression".to_owned(),
            )),
            other => self.stop(protocol_error(format!(
                "a message with invalid flags {other:#04x} (valid are 0 and 1)"
            ))),
        }
    }

    fn stop(&mut self, status: Status) -> Result<Option<Bytes>, Status> {
        self.stopped = true;
        self.ready.clear();
        self.taken = 0;
        Err(status)
    }

    /// How the call ended, once the body did (with its trailers, if it had any): a failure the
    /// trailers carry; a [`ProtocolError`] for a body cut inside a message; UNKNOWN without
    /// `grpc-status` (as tonic answered: no source, so it passes through).
    pub fn finish(&mut self, trailers: Option<&HeaderMap>) -> Result<(), Status> {
        let outcome = trailers.and_then(carried_status);
        if let Some(Err(status)) = outcome {
            return Err(status);
        }
        if let Err(FrameError::Truncated(left)) = self.frames.finish() {
            return Err(protocol_error(format!(
                "the response ended inside a message ({left} bytes of it arrived)"
            )));
        }
        match outcome {
            Some(ok) => ok,
            None => Err(Status::unknown(MISSING_STATUS)),
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use meshgate_wire::grpc::{encode_frame, message_frame};

    use super::*;

    fn fields(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    /// Every message of `chunks`, then how the body ended.
    fn decode(chunks: &[Bytes], trailers: Option<&HeaderMap>) -> (Vec<Bytes>, Result<(), Status>) {
        let mut decoder = MessageDecoder::new(64);
        let mut messages = Vec::new();
        for chunk in chunks {
            decoder.push(chunk.clone());
            loop {
                match decoder.next() {
                    Ok(Some(message)) => messages.push(message),
                    Ok(None) => break,
                    Err(status) => return (messages, Err(status)),
                }
            }
        }
        (messages, decoder.finish(trailers))
    }

    /// A broken response, which the client sees as the gateway's "upstream unavailable".
    fn is_protocol_error(status: &Status) -> bool {
        let from_upstream = crate::error::GatewayError::from_upstream(status.clone());
        std::error::Error::source(status).is_some_and(|source| source.is::<ProtocolError>())
            && matches!(
                from_upstream,
                crate::error::GatewayError::UpstreamUnavailable
            )
    }

    fn ok() -> HeaderMap {
        fields(&[("grpc-status", "0")])
    }

    #[test]
    fn messages_split_anywhere_across_chunks_come_out_whole() {
        let body = Bytes::from(
            [
                message_frame(b"first"),
                message_frame(b""),
                message_frame(b"third message"),
            ]
            .concat(),
        );
        let expected = [&b"first"[..], b"", b"third message"];
        for first in 0..=body.len() {
            for second in first..=body.len() {
                let chunks = [
                    body.slice(..first),
                    body.slice(first..second),
                    body.slice(second..),
                ];
                let (messages, end) = decode(&chunks, Some(&ok()));
                assert_eq!(messages, expected, "split at {first} and {second}");
                end.unwrap();
            }
        }
    }

    #[test]
    fn a_message_within_one_chunk_is_a_slice_of_it() {
        let chunk = Bytes::from(message_frame(b"in one piece"));
        let mut decoder = MessageDecoder::new(64);
        decoder.push(chunk.clone());
        let message = decoder.next().unwrap().unwrap();
        assert_eq!(message.as_ptr(), chunk[5..].as_ptr());
    }

    #[test]
    fn the_trailers_decide_the_end() {
        let body = [Bytes::from(message_frame(b"m"))];
        let (messages, end) = decode(&body, Some(&ok()));
        assert_eq!(messages.len(), 1);
        end.unwrap();

        let details = grpc_headers::encode_details(b"\x08\x06");
        let mut failed = fields(&[
            ("grpc-status", "6"),
            ("grpc-message", "already%20there %E2%9C%93"),
        ]);
        failed.insert(
            "grpc-status-details-bin",
            HeaderValue::from_str(&details).unwrap(),
        );
        let status = decode(&body, Some(&failed)).1.unwrap_err();
        assert_eq!(status.code(), Code::AlreadyExists);
        assert_eq!(status.message(), "already there ✓");
        assert_eq!(status.details(), b"\x08\x06");
        // No transport error behind it: the upstream answered.
        assert!(std::error::Error::source(&status).is_none());

        // Details that are not base64 are dropped, the status kept.
        let garbled = fields(&[("grpc-status", "14"), ("grpc-status-details-bin", "@@")]);
        let status = decode(&body, Some(&garbled)).1.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.details().is_empty());

        for (value, code) in [("99", Code::Unknown), ("x", Code::Unknown)] {
            let odd = fields(&[("grpc-status", value)]);
            assert_eq!(decode(&body, Some(&odd)).1.unwrap_err().code(), code);
        }
    }

    #[test]
    fn a_missing_status_is_unknown_as_tonic_says() {
        for trailers in [None, Some(fields(&[("x-other", "1")]))] {
            let status = decode(&[Bytes::from(message_frame(b"m"))], trailers.as_ref())
                .1
                .unwrap_err();
            assert_eq!(status.code(), Code::Unknown);
            assert_eq!(status.message(), MISSING_STATUS);
        }
    }

    #[test]
    fn a_body_cut_inside_a_message_is_internal_unless_the_trailers_failed_first() {
        let mut cut = message_frame(b"whole");
        cut.extend_from_slice(&message_frame(b"partial")[..7]);
        let (messages, end) = decode(&[Bytes::from(cut.clone())], Some(&ok()));
        assert_eq!(messages, [&b"whole"[..]]);
        let status = end.unwrap_err();
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().contains("7 bytes"), "{status:?}");
        assert!(is_protocol_error(&status));
        let failed = fields(&[("grpc-status", "13"), ("grpc-message", "boom")]);
        let status = decode(&[Bytes::from(cut)], Some(&failed)).1.unwrap_err();
        assert_eq!(status.message(), "boom");
    }

    #[test]
    fn compressed_and_oversized_messages_fail_after_the_messages_before_them() {
        let compressed = [message_frame(b"ok"), encode_frame(COMPRESSED_FLAG, b"zz")].concat();
        let (messages, end) = decode(&[Bytes::from(compressed)], Some(&ok()));
        assert_eq!(messages, [&b"ok"[..]]);
        let status = end.unwrap_err();
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().contains("compressed"), "{status:?}");
        assert!(is_protocol_error(&status));

        let flagged = [message_frame(b"ok"), encode_frame(0x80, b"trailers?")].concat();
        let status = decode(&[Bytes::from(flagged)], Some(&ok())).1.unwrap_err();
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().contains("0x80"), "{status:?}");
        assert!(is_protocol_error(&status));

        // Refused from the prefix alone, before the payload is buffered.
        let oversized = [
            message_frame(b"ok"),
            encode_frame(0, &[0; 65])[..5].to_vec(),
        ]
        .concat();
        let (messages, end) = decode(&[Bytes::from(oversized)], Some(&ok()));
        assert_eq!(messages, [&b"ok"[..]]);
        let status = end.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("65 bytes"), "{status:?}");
        assert!(status.message().contains("limit of 64"), "{status:?}");
    }

    #[test]
    fn the_head_decides_trailers_only_answers_and_non_grpc_statuses() {
        assert!(
            head_outcome(
                StatusCode::OK,
                &fields(&[("content-type", "application/grpc")])
            )
            .is_none()
        );
        assert!(matches!(head_outcome(StatusCode::OK, &ok()), Some(Ok(()))));
        let trailers_only = fields(&[("grpc-status", "5"), ("grpc-message", "no%20user")]);
        let status = head_outcome(StatusCode::OK, &trailers_only)
            .unwrap()
            .unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::NotFound, "no user")
        );
        // grpc-status wins over the HTTP status, as in tonic.
        let status = head_outcome(StatusCode::BAD_GATEWAY, &trailers_only)
            .unwrap()
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        for (http, code) in [
            (400, Code::Internal),
            (401, Code::Unauthenticated),
            (403, Code::PermissionDenied),
            (404, Code::Unimplemented),
            (429, Code::Unavailable),
            (502, Code::Unavailable),
            (503, Code::Unavailable),
            (504, Code::Unavailable),
            (500, Code::Unknown),
        ] {
            let status = head_outcome(StatusCode::from_u16(http).unwrap(), &HeaderMap::new())
                .unwrap()
                .unwrap_err();
            assert_eq!(status.code(), code, "{http}");
            assert!(status.message().contains(&http.to_string()), "{status:?}");
        }
    }
}
