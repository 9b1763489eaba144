//! gRPC framing: length-prefixed messages (1 flag byte, 4-byte big-endian length, payload),
//! the trailer block gRPC-web sends as its last frame, `/package.Service/Method` paths and the
//! status codes' names. [`MessageSizeGuard`] scans a stream for oversized messages without
//! buffering payloads.

/// Flag bit of a gRPC-web trailers frame.
pub const TRAILERS_FLAG: u8 = 0x80;
/// Flag bit of a compressed message.
pub const COMPRESSED_FLAG: u8 = 0x01;

/// Why a body could not be read as gRPC frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("invalid base64 in grpc-web-text body")]
    Base64,
    /// The body ended inside a frame: this many bytes of it (prefix included) were there.
    #[error("truncated gRPC frame: {0} bytes left over")]
    Truncated(usize),
    #[error("gRPC frame of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("compressed gRPC message (flag {0:#x}) cannot be inspected")]
    Compressed(u8),
}

/// One frame of a body held in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    pub flags: u8,
    pub payload: &'a [u8],
}

impl Frame<'_> {
    pub fn is_trailers(&self) -> bool {
        self.flags & TRAILERS_FLAG != 0
    }
}

/// The flags and payload length of a frame prefix, once its 5 bytes are there.
pub fn frame_prefix(bytes: &[u8]) -> Option<(u8, usize)> {
    let [flags, a, b, c, d] = *bytes.first_chunk::<5>()?;
    Some((flags, u32::from_be_bytes([a, b, c, d]) as usize))
}

/// Splits a whole body into frames; every frame, the last one included, must be complete.
pub fn frames(mut body: &[u8]) -> Result<Vec<Frame<'_>>, FrameError> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let (flags, len) = frame_prefix(body).ok_or(FrameError::Truncated(body.len()))?;
        let payload = body
            .get(5..)
            .and_then(|rest| rest.get(..len))
            .ok_or(FrameError::Truncated(body.len()))?;
        out.push(Frame { flags, payload });
        body = &body[5 + len..];
    }
    Ok(out)
}

/// The first data (non-trailer) message of a gRPC or gRPC-web binary body.
pub fn first_message(body: &[u8]) -> Result<Option<&[u8]>, FrameError> {
    for frame in frames(body)? {
        if frame.is_trailers() {
            continue;
        }
        if frame.flags & COMPRESSED_FLAG != 0 {
            return Err(FrameError::Compressed(frame.flags));
        }
        return Ok(Some(frame.payload));
    }
    Ok(None)
}

/// Encodes one frame.
pub fn encode_frame(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(flags);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Encodes one uncompressed message.
pub fn message_frame(payload: &[u8]) -> Vec<u8> {
    encode_frame(0, payload)
}

/// The `name: value` lines of a trailer block (`\r\n` or `\n` line ends), names and values
/// trimmed; lines without a colon are skipped.
pub fn trailer_fields(block: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    block.split(|&b| b == b'\n').filter_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        Some((line[..colon].trim_ascii(), line[colon + 1..].trim_ascii()))
    })
}

/// The `grpc-status` of a trailer block.
pub fn trailer_status(block: &[u8]) -> Option<u32> {
    trailer_fields(block).find_map(|(name, value)| {
        name.eq_ignore_ascii_case(b"grpc-status")
            .then(|| std::str::from_utf8(value).ok()?.parse().ok())
            .flatten()
    })
}

/// The `grpc-status` in the trailer frame of a gRPC-web body (gRPC-web carries trailers in the
/// body), if the body is well framed and has one.
pub fn trailer_frame_status(body: &[u8]) -> Option<u32> {
    let frames = frames(body).ok()?;
    let trailer = frames.iter().find(|f| f.is_trailers())?;
    trailer_status(trailer.payload)
}

/// A `/package.Service/Method` request path split into service and method (a query string is
/// ignored); `None` for anything else, a REST path included.
pub fn split_path(path: &str) -> Option<(&str, &str)> {
    let path = path.split('?').next().unwrap_or_default();
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    if service.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    Some((service, method))
}

/// gRPC status codes as numbers on the wire.
pub mod status {
    pub const OK: u32 = 0;
    pub const UNKNOWN: u32 = 2;
    pub const NOT_FOUND: u32 = 5;
    pub const PERMISSION_DENIED: u32 = 7;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
    pub const UNAUTHENTICATED: u32 = 16;

    /// The code of a gRPC response that has no `grpc-status` and an HTTP status other than
    /// 200: gRPC's HTTP-to-gRPC mapping (doc/http-grpc-status-mapping.md), as its clients read
    /// such an answer from a proxy or server that is not speaking gRPC.
    pub fn from_http(http_status: u16) -> u32 {
        match http_status {
            400 => INTERNAL,
            401 => UNAUTHENTICATED,
            403 => PERMISSION_DENIED,
            404 => UNIMPLEMENTED,
            429 | 502 | 503 | 504 => UNAVAILABLE,
            _ => UNKNOWN,
        }
    }

    /// The canonical upper-case name of a status code, for span tags.
    pub fn name(code: u32) -> &'static str {
        match code {
            0 => "OK",
            1 => "CANCELLED",
            2 => "UNKNOWN",
            3 => "INVALID_ARGUMENT",
            4 => "DEADLINE_EXCEEDED",
            5 => "NOT_FOUND",
            6 => "ALREADY_EXISTS",
            7 => "PERMISSION_DENIED",
            8 => "RESOURCE_EXHAUSTED",
            9 => "FAILED_PRECONDITION",
            10 => "ABORTED",
            11 => "OUT_OF_RANGE",
            12 => "UNIMPLEMENTED",
            13 => "INTERNAL",
            14 => "UNAVAILABLE",
            15 => "DATA_LOSS",
            16 => "UNAUTHENTICATED",
            _ => "UNKNOWN",
        }
    }
}

/// A message over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("gRPC message of {length} bytes exceeds the limit of {limit} bytes")]
pub struct MessageTooLarge {
    pub length: u64,
    pub limit: usize,
}

/// Where the scanner is in the frame sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GuardState {
    /// Collecting the 5-byte prefix; `have` bytes of it so far.
    Prefix { have: usize, length: u64 },
    /// Skipping `remaining` payload bytes.
    Payload { remaining: u64 },
}

/// Scans a gRPC stream as it passes through, without buffering payloads, for the first prefix
/// announcing a message over the limit: a proxy refuses it with RESOURCE_EXHAUSTED, as the gRPC
/// spec asks of a receiver over its limit, before the message reaches the service.
#[derive(Debug, Clone)]
pub struct MessageSizeGuard {
    limit: usize,
    state: GuardState,
}

impl MessageSizeGuard {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            state: GuardState::Prefix { have: 0, length: 0 },
        }
    }

    /// Scans the next body chunk; fails at the first prefix announcing too large a message.
    pub fn push(&mut self, mut chunk: &[u8]) -> Result<(), MessageTooLarge> {
        while let Some((&byte, rest)) = chunk.split_first() {
            match &mut self.state {
                GuardState::Payload { remaining } => {
                    let skip = (*remaining).min(chunk.len() as u64);
                    *remaining -= skip;
                    chunk = &chunk[skip as usize..];
                    if *remaining == 0 {
                        self.state = GuardState::Prefix { have: 0, length: 0 };
                    }
                }
                GuardState::Prefix { have, length } => {
                    // Byte 0 is the compressed flag; bytes 1-4 the length.
                    if *have > 0 {
                        *length = (*length << 8) | u64::from(byte);
                    }
                    *have += 1;
                    chunk = rest;
                    if *have == 5 {
                        let length = *length;
                        if length > self.limit as u64 {
                            return Err(MessageTooLarge {
                                length,
                                limit: self.limit,
                            });
                        }
                        self.state = if length == 0 {
                            GuardState::Prefix { have: 0, length: 0 }
                        } else {
                            GuardState::Payload { remaining: length }
                        };
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_frames_and_skips_trailer_frames() {
        let mut body = encode_frame(TRAILERS_FLAG, b"hi");
        body.extend(message_frame(b"abc"));
        assert_eq!(first_message(&body).unwrap(), Some(&b"abc"[..]));
        assert_eq!(frames(&body).unwrap().len(), 2);
        assert!(frames(&body).unwrap()[0].is_trailers());
        assert_eq!(first_message(&[]).unwrap(), None);
        assert_eq!(frame_prefix(&[1, 0, 0, 1, 0, 9]), Some((1, 256)));
        assert_eq!(frame_prefix(&[1, 0, 0, 1]), None);
    }

    #[test]
    fn rejects_truncated_and_compressed_frames() {
        assert_eq!(first_message(&[0, 0, 0]), Err(FrameError::Truncated(3)));
        assert_eq!(
            first_message(&[0, 0, 0, 0, 9, 1, 2]),
            Err(FrameError::Truncated(7))
        );
        // A complete first message does not excuse a truncated second frame.
        let mut body = message_frame(b"ok");
        body.extend([0, 0, 0]);
        assert_eq!(first_message(&body), Err(FrameError::Truncated(3)));
        assert_eq!(
            first_message(&[1, 0, 0, 0, 1, 7]),
            Err(FrameError::Compressed(1))
        );
    }

    #[test]
    fn reads_the_status_of_a_trailer_frame() {
        let mut body = message_frame(b"msg");
        body.extend(encode_frame(
            TRAILERS_FLAG,
            b"grpc-status: 5\r\ngrpc-message: not found\r\n",
        ));
        assert_eq!(trailer_frame_status(&body), Some(5));
        assert_eq!(trailer_frame_status(&message_frame(b"msg")), None);
        assert_eq!(trailer_frame_status(&[0x80, 0, 0]), None);
        assert_eq!(trailer_status(b"Grpc-Status:14\n"), Some(14));
        assert_eq!(trailer_status(b"grpc-status: x\r\n"), None);
        let fields: Vec<_> = trailer_fields(b"a: 1\r\nno colon\nb:2").collect();
        assert_eq!(fields, [(&b"a"[..], &b"1"[..]), (&b"b"[..], &b"2"[..])]);
    }

    #[test]
    fn splits_grpc_paths() {
        assert_eq!(
            split_path("/user.UserService/GetUser"),
            Some(("user.UserService", "GetUser"))
        );
        assert_eq!(
            split_path("/user.UserService/GetUser?x=1"),
            Some(("user.UserService", "GetUser"))
        );
        assert_eq!(split_path("/v1/users/1"), None);
        assert_eq!(split_path("/x"), None);
        assert_eq!(split_path("//GetUser"), None);
        assert_eq!(split_path("/a/"), None);
    }

    #[test]
    fn names_statuses() {
        assert_eq!(
            status::name(status::RESOURCE_EXHAUSTED),
            "RESOURCE_EXHAUSTED"
        );
        assert_eq!(status::name(status::NOT_FOUND), "NOT_FOUND");
        assert_eq!(status::name(99), "UNKNOWN");
    }

    #[test]
    fn maps_http_statuses_without_grpc_status() {
        let mapped = |http| status::name(status::from_http(http));
        assert_eq!(mapped(400), "INTERNAL");
        assert_eq!(mapped(401), "UNAUTHENTICATED");
        assert_eq!(mapped(403), "PERMISSION_DENIED");
        assert_eq!(mapped(404), "UNIMPLEMENTED");
        for unavailable in [429, 502, 503, 504] {
            assert_eq!(mapped(unavailable), "UNAVAILABLE", "{unavailable}");
        }
        for unknown in [200, 301, 500, 418] {
            assert_eq!(mapped(unknown), "UNKNOWN", "{unknown}");
        }
    }

    fn frame(length: usize) -> Vec<u8> {
        message_frame(&vec![7u8; length])
    }

    #[test]
    fn messages_up_to_the_limit_pass_in_any_chunking() {
        let stream: Vec<u8> = [frame(0), frame(10), frame(100), frame(3)].concat();
        for chunk_size in [1, 2, 3, 5, 7, 64, stream.len()] {
            let mut guard = MessageSizeGuard::new(100);
            for chunk in stream.chunks(chunk_size) {
                guard.push(chunk).unwrap();
            }
        }
    }

    #[test]
    fn the_first_oversized_prefix_is_refused_even_split_across_chunks() {
        let stream: Vec<u8> = [frame(5), frame(101)].concat();
        for chunk_size in [1, 4, 6, 11] {
            let mut guard = MessageSizeGuard::new(100);
            let error = stream
                .chunks(chunk_size)
                .find_map(|chunk| guard.push(chunk).err())
                .expect("refused");
            assert_eq!(
                error,
                MessageTooLarge {
                    length: 101,
                    limit: 100
                }
            );
        }
        // A 4 GiB announcement is refused from its prefix alone.
        let mut guard = MessageSizeGuard::new(100);
        assert!(guard.push(&[1, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
