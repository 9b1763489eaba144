//! gRPC-web framing, binary and text, as pure state machines.
//!
//! - [`RequestDecoder`]: request body chunks → gRPC frames. In text mode the chunks are base64
//!   that may carry padding anywhere (clients may concatenate independently padded pieces), so
//!   the decoder works in 4-character quanta, each decoded on its own.
//! - [`ResponseEncoder`]: messages and trailers → body chunks; the trailers travel as the final
//!   frame with flag `0x80`, so they survive HTTP/1.1. In text mode every chunk is base64 on its own.

use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose::STANDARD};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::HeaderMap;

/// Flag bit of a trailers frame.
pub const TRAILERS_FLAG: u8 = 0x80;
/// Flag bit of a compressed message.
pub const COMPRESSED_FLAG: u8 = 0x01;

/// Per-quantum decoding: padding optional, so a short final quantum is accepted too.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Binary,
    Text,
}

impl Mode {
    /// Recognises `application/grpc-web[-text][+proto]` (parameters ignored).
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        match crate::protocol::media_type(content_type).as_str() {
            "application/grpc-web" | "application/grpc-web+proto" => Some(Self::Binary),
            "application/grpc-web-text" | "application/grpc-web-text+proto" => Some(Self::Text),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Binary => "application/grpc-web+proto",
            Self::Text => "application/grpc-web-text+proto",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("invalid base64 in grpc-web-text body")]
    Base64,
    #[error("truncated gRPC frame: {0} bytes left over")]
    Truncated(usize),
    #[error("gRPC frame of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub flags: u8,
    pub payload: Bytes,
}

impl Frame {
    pub fn is_trailers(&self) -> bool {
        self.flags & TRAILERS_FLAG != 0
    }
}

/// Streaming base64 decoder tolerant of padding at any quantum boundary.
#[derive(Debug, Default)]
pub struct Base64Decoder {
    pending: Vec<u8>,
}

impl Base64Decoder {
    pub fn push(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), FramingError> {
        for &byte in chunk {
            if byte.is_ascii_whitespace() {
                continue;
            }
            self.pending.push(byte);
            if self.pending.len() == 4 {
                self.flush_quantum(out)?;
            }
        }
        Ok(())
    }

    /// End of input: an unpadded final quantum of 2 or 3 characters is accepted.
    pub fn finish(&mut self, out: &mut BytesMut) -> Result<(), FramingError> {
        match self.pending.len() {
            0 => Ok(()),
            1 => Err(FramingError::Base64),
            _ => self.flush_quantum(out),
        }
    }

    fn flush_quantum(&mut self, out: &mut BytesMut) -> Result<(), FramingError> {
        let mut buf = [0u8; 3];
        let written = LENIENT
            .decode_slice(&self.pending, &mut buf)
            .map_err(|_| FramingError::Base64)?;
        out.extend_from_slice(&buf[..written]);
        self.pending.clear();
        Ok(())
    }
}

#[derive(Debug)]
enum FrameState {
    /// Waiting for the 5-byte prefix.
    Prefix,
    /// Prefix read; waiting for `len` payload bytes.
    Payload { flags: u8, len: usize },
}

/// Splits a byte stream into length-prefixed gRPC frames.
#[derive(Debug)]
pub struct FrameDecoder {
    buffer: BytesMut,
    state: FrameState,
    max_frame: usize,
}

impl FrameDecoder {
    pub fn new(max_frame: usize) -> Self {
        Self {
            buffer: BytesMut::new(),
            state: FrameState::Prefix,
            max_frame,
        }
    }

    pub fn push(&mut self, bytes: &[u8], frames: &mut Vec<Frame>) -> Result<(), FramingError> {
        self.buffer.extend_from_slice(bytes);
        loop {
            match self.state {
                FrameState::Prefix => {
                    if self.buffer.len() < 5 {
                        return Ok(());
                    }
                    let flags = self.buffer.get_u8();
                    let len = self.buffer.get_u32() as usize;
                    if len > self.max_frame {
                        return Err(FramingError::TooLarge {
                            size: len,
                            limit: self.max_frame,
                        });
                    }
                    self.state = FrameState::Payload { flags, len };
                }
                FrameState::Payload { flags, len } => {
                    if self.buffer.len() < len {
                        return Ok(());
                    }
                    let payload = self.buffer.split_to(len).freeze();
                    frames.push(Frame { flags, payload });
                    self.state = FrameState::Prefix;
                }
            }
        }
    }

    pub fn finish(&self) -> Result<(), FramingError> {
        let left = self.buffer.len()
            + match self.state {
                FrameState::Prefix => 0,
                FrameState::Payload { .. } => 5,
            };
        if left == 0 {
            Ok(())
        } else {
            Err(FramingError::Truncated(left))
        }
    }
}

/// A gRPC-web request body decoder: base64 (text mode) then framing.
#[derive(Debug)]
pub struct RequestDecoder {
    mode: Mode,
    base64: Base64Decoder,
    frames: FrameDecoder,
    scratch: BytesMut,
}

impl RequestDecoder {
    pub fn new(mode: Mode, max_frame: usize) -> Self {
        Self {
            mode,
            base64: Base64Decoder::default(),
            frames: FrameDecoder::new(max_frame),
            scratch: BytesMut::new(),
        }
    }

    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<Frame>) -> Result<(), FramingError> {
        match self.mode {
            Mode::Binary => self.frames.push(chunk, out),
            Mode::Text => {
                self.base64.push(chunk, &mut self.scratch)?;
                let decoded = self.scratch.split();
                self.frames.push(&decoded, out)
            }
        }
    }

    pub fn finish(&mut self, out: &mut Vec<Frame>) -> Result<(), FramingError> {
        if self.mode == Mode::Text {
            self.base64.finish(&mut self.scratch)?;
            let decoded = self.scratch.split();
            self.frames.push(&decoded, out)?;
        }
        self.frames.finish()
    }
}

/// Encodes one gRPC frame.
pub fn encode_frame(flags: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + payload.len());
    out.put_u8(flags);
    out.put_u32(payload.len() as u32);
    out.extend_from_slice(payload);
    out.freeze()
}

/// Serialises trailers as HTTP/1 header lines (lower-case names), the gRPC-web trailer payload.
pub fn encode_trailers(trailers: &HeaderMap) -> Bytes {
    let mut out = BytesMut::new();
    for (name, value) in trailers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b":");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    encode_frame(TRAILERS_FLAG, &out)
}

/// Parses a trailers frame payload back into a header map (used by clients and tests).
pub fn decode_trailers(payload: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in payload.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = http::HeaderName::from_bytes(line[..colon].trim_ascii());
        let value = http::HeaderValue::from_bytes(line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) = (name, value) {
            map.append(name, value);
        }
    }
    map
}

/// Turns gRPC messages and trailers into gRPC-web body chunks.
#[derive(Debug, Clone, Copy)]
pub struct ResponseEncoder {
    mode: Mode,
}

impl ResponseEncoder {
    pub fn new(mode: Mode) -> Self {
        Self { mode }
    }

    pub fn message(&self, message: &[u8]) -> Bytes {
        self.wrap(encode_frame(0, message))
    }

    pub fn trailers(&self, trailers: &HeaderMap) -> Bytes {
        self.wrap(encode_trailers(trailers))
    }

    fn wrap(&self, frame: Bytes) -> Bytes {
        match self.mode {
            Mode::Binary => frame,
            Mode::Text => STANDARD.encode(frame).into(),
        }
    }
}

#[cfg(test)]
mod tests;
