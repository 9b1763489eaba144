//! gRPC wire framing: the protocol of a request, 5-byte message frames, and gRPC-web bodies
//! (binary and base64 "text").

use base64::Engine as _;

/// How a request speaks, decided from its `content-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `application/grpc[+proto]`.
    Grpc,
    /// `application/grpc-web[+proto]`.
    GrpcWeb,
    /// `application/grpc-web-text[+proto]`: the frames base64-encoded.
    GrpcWebText,
    /// Anything else: REST/JSON or plain HTTP.
    Http,
}

impl Protocol {
    pub fn from_content_type(content_type: Option<&str>) -> Self {
        let Some(value) = content_type else {
            return Self::Http;
        };
        let media = value
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let base = media.split('+').next().unwrap_or_default();
        match base {
            "application/grpc" => Self::Grpc,
            "application/grpc-web" => Self::GrpcWeb,
            "application/grpc-web-text" => Self::GrpcWebText,
            _ => Self::Http,
        }
    }

    pub fn is_grpc_family(self) -> bool {
        !matches!(self, Self::Http)
    }
}

/// Why a body could not be read as a gRPC message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("body shorter than the 5-byte gRPC frame header")]
    Truncated,
    #[error("gRPC frame declares {declared} bytes but {available} follow")]
    LengthMismatch { declared: usize, available: usize },
    #[error("compressed gRPC message (flag {0:#x}) cannot be inspected")]
    Compressed(u8),
    #[error("the gRPC-web text body is not valid base64")]
    BadBase64,
}

/// One length-prefixed message frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    pub flags: u8,
    pub payload: &'a [u8],
}

/// gRPC-web marks its trailer frame with the high bit of the flags byte.
const TRAILER_FLAG: u8 = 0x80;
const COMPRESSED_FLAG: u8 = 0x01;

/// Splits a body into frames; the last one must be complete.
pub fn frames(mut body: &[u8]) -> Result<Vec<Frame<'_>>, FrameError> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let header: [u8; 5] = body
            .get(..5)
            .and_then(|h| h.try_into().ok())
            .ok_or(FrameError::Truncated)?;
        let [flags, a, b, c, d] = header;
        let declared = u32::from_be_bytes([a, b, c, d]) as usize;
        let rest = &body[5..];
        let payload = rest.get(..declared).ok_or(FrameError::LengthMismatch {
            declared,
            available: rest.len(),
        })?;
        out.push(Frame { flags, payload });
        body = &rest[declared..];
    }
    Ok(out)
}

/// The first data (non-trailer) message of a gRPC or gRPC-web binary body.
pub fn first_message(body: &[u8]) -> Result<Option<&[u8]>, FrameError> {
    for frame in frames(body)? {
        if frame.flags & TRAILER_FLAG != 0 {
            continue;
        }
        if frame.flags & COMPRESSED_FLAG != 0 {
            return Err(FrameError::Compressed(frame.flags));
        }
        return Ok(Some(frame.payload));
    }
    Ok(None)
}

/// The `grpc-status` in a gRPC-web trailer frame (gRPC-web carries trailers in the body).
pub fn trailer_frame_status(body: &[u8]) -> Option<u32> {
    let frames = frames(body).ok()?;
    let trailer = frames.iter().find(|f| f.flags & TRAILER_FLAG != 0)?;
    let text = std::str::from_utf8(trailer.payload).ok()?;
    text.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("grpc-status")
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// Decodes a `grpc-web-text` body. Each write of the client may be padded separately, so the
/// body is a concatenation of base64 chunks: decode chunk by chunk, splitting after padding.
pub fn decode_grpc_web_text(body: &[u8]) -> Result<Vec<u8>, FrameError> {
    let clean: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    let mut start = 0;
    let mut i = 0;
    while i < clean.len() {
        // A chunk ends at its padding: after one or two '=' on a 4-byte boundary.
        if clean[i] == b'=' {
            let mut end = i + 1;
            while end < clean.len() && clean[end] == b'=' {
                end += 1;
            }
            decode_chunk(&clean[start..end], &mut out)?;
            start = end;
            i = end;
        } else {
            i += 1;
        }
    }
    decode_chunk(&clean[start..], &mut out)?;
    Ok(out)
}

fn decode_chunk(chunk: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    if chunk.is_empty() {
        return Ok(());
    }
    base64::engine::general_purpose::STANDARD
        .decode_vec(chunk, out)
        .map_err(|_| FrameError::BadBase64)
}

/// Encodes one message as a gRPC frame (used by tests and by clients of the embed host).
pub fn encode_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 5);
    out.push(0);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A `/package.Service/Method` request path split into service and method.
pub fn split_grpc_path(path: &str) -> Option<(&str, &str)> {
    let path = path.split('?').next().unwrap_or_default();
    let rest = path.strip_prefix('/')?;
    let (service, method) = rest.split_once('/')?;
    if service.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    Some((service, method))
}

/// gRPC status codes the filters produce or name.
pub mod status {
    pub const OK: u32 = 0;
    pub const RESOURCE_EXHAUSTED: u32 = 8;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_content_types() {
        assert_eq!(
            Protocol::from_content_type(Some("application/grpc")),
            Protocol::Grpc
        );
        assert_eq!(
            Protocol::from_content_type(Some("application/grpc+proto")),
            Protocol::Grpc
        );
        assert_eq!(
            Protocol::from_content_type(Some("application/grpc-web+proto")),
            Protocol::GrpcWeb
        );
        assert_eq!(
            Protocol::from_content_type(Some("Application/GRPC-WEB-TEXT; charset=x")),
            Protocol::GrpcWebText
        );
        assert_eq!(
            Protocol::from_content_type(Some("application/json")),
            Protocol::Http
        );
        assert_eq!(Protocol::from_content_type(None), Protocol::Http);
    }

    #[test]
    fn parses_frames_and_skips_trailer_frames() {
        let mut body = vec![0x80, 0, 0, 0, 2, b'h', b'i'];
        body.extend(encode_frame(b"abc"));
        assert_eq!(first_message(&body).unwrap(), Some(&b"abc"[..]));
        assert_eq!(frames(&body).unwrap().len(), 2);
        assert_eq!(first_message(&[]).unwrap(), None);
    }

    #[test]
    fn rejects_truncated_and_lying_frames() {
        assert_eq!(first_message(&[0, 0, 0]), Err(FrameError::Truncated));
        assert_eq!(
            first_message(&[0, 0, 0, 0, 9, 1, 2]),
            Err(FrameError::LengthMismatch {
                declared: 9,
                available: 2
            })
        );
        assert_eq!(
            first_message(&[1, 0, 0, 0, 1, 7]),
            Err(FrameError::Compressed(1))
        );
    }

    #[test]
    fn decodes_concatenated_padded_base64_chunks() {
        use base64::engine::general_purpose::STANDARD;
        let first = encode_frame(b"a");
        let second = encode_frame(b"bcdef");
        let text = format!("{}{}\n", STANDARD.encode(&first), STANDARD.encode(&second));
        let mut expected = first.clone();
        expected.extend(&second);
        assert_eq!(decode_grpc_web_text(text.as_bytes()).unwrap(), expected);
        assert_eq!(decode_grpc_web_text(b"!!!!"), Err(FrameError::BadBase64));
    }

    #[test]
    fn reads_the_status_of_a_grpc_web_trailer_frame() {
        let trailer = b"grpc-status: 5\r\ngrpc-message: not found\r\n";
        let mut body = encode_frame(b"msg");
        body.push(0x80);
        body.extend_from_slice(&(trailer.len() as u32).to_be_bytes());
        body.extend_from_slice(trailer);
        assert_eq!(trailer_frame_status(&body), Some(5));
        assert_eq!(trailer_frame_status(&encode_frame(b"msg")), None);
        assert_eq!(trailer_frame_status(&[0x80, 0, 0]), None);
    }

    #[test]
    fn splits_grpc_paths() {
        assert_eq!(
            split_grpc_path("/user.UserService/GetUser"),
            Some(("user.UserService", "GetUser"))
        );
        assert_eq!(split_grpc_path("/v1/users/1"), None);
        assert_eq!(split_grpc_path("/x"), None);
        assert_eq!(split_grpc_path("//GetUser"), None);
    }

    #[test]
    fn names_statuses() {
        assert_eq!(status::name(8), "RESOURCE_EXHAUSTED");
        assert_eq!(status::name(99), "UNKNOWN");
    }
}
