//! gRPC-web bodies as a proxy streams them: request chunks → frames (payloads shared, not
//! copied, with the buffer they arrived in), messages and trailers → response chunks.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;

use super::{Base64Decoder, Mode};
use crate::grpc::{FrameError, TRAILERS_FLAG, encode_frame, frame_prefix, trailer_fields};

/// One frame of a streamed body.
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

#[derive(Debug)]
enum FrameState {
    /// Waiting for the 5-byte prefix.
    Prefix,
    /// Prefix read; waiting for `len` payload bytes.
    Payload { flags: u8, len: usize },
}

/// Splits a byte stream into length-prefixed gRPC frames; a prefix announcing more than
/// `max_frame` bytes is refused before its payload is buffered. A payload that arrives whole
/// within one chunk pushed with [`FrameDecoder::push_bytes`] shares that chunk's buffer; only
/// the pieces split across chunks are copied (into one buffer, sized from the prefix).
#[derive(Debug)]
pub struct FrameDecoder {
    /// The part of the current prefix or payload that arrived so far, when it spans chunks.
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

    /// Splits the next chunk (copied: [`FrameDecoder::push_bytes`] shares it instead).
    pub fn push(&mut self, bytes: &[u8], frames: &mut Vec<Frame>) -> Result<(), FrameError> {
        self.push_bytes(Bytes::copy_from_slice(bytes), frames)
    }

    /// Splits the next chunk; payloads wholly within it are slices of it, not copies.
    pub fn push_bytes(
        &mut self,
        mut chunk: Bytes,
        frames: &mut Vec<Frame>,
    ) -> Result<(), FrameError> {
        loop {
            match self.state {
                FrameState::Prefix => {
                    let Some((flags, len)) =
                        self.take(&mut chunk, 5).as_deref().and_then(frame_prefix)
                    else {
                        return Ok(());
                    };
                    if len > self.max_frame {
                        return Err(FrameError::TooLarge {
                            size: len,
                            limit: self.max_frame,
                        });
                    }
                    self.state = FrameState::Payload { flags, len };
                }
                FrameState::Payload { flags, len } => {
                    let Some(payload) = self.take(&mut chunk, len) else {
                        return Ok(());
                    };
                    frames.push(Frame { flags, payload });
                    self.state = FrameState::Prefix;
                }
            }
        }
    }

    /// The next `wanted` bytes of the stream once they are all there: a slice of `chunk` when
    /// nothing is buffered, else gathered in the buffer (what `chunk` has of them is taken).
    fn take(&mut self, chunk: &mut Bytes, wanted: usize) -> Option<Bytes> {
        if self.buffer.is_empty() && chunk.len() >= wanted {
            return Some(chunk.split_to(wanted));
        }
        let missing = wanted - self.buffer.len();
        let taken = missing.min(chunk.len());
        self.buffer.reserve(missing);
        self.buffer.extend_from_slice(&chunk[..taken]);
        chunk.advance(taken);
        (taken == missing).then(|| self.buffer.split().freeze())
    }

    pub fn finish(&self) -> Result<(), FrameError> {
        let left = self.buffer.len()
            + match self.state {
                FrameState::Prefix => 0,
                FrameState::Payload { .. } => 5,
            };
        if left == 0 {
            Ok(())
        } else {
            Err(FrameError::Truncated(left))
        }
    }
}

/// A gRPC-web request body decoder: base64 (text mode) then framing.
#[derive(Debug)]
pub struct RequestDecoder {
    mode: Mode,
    base64: Base64Decoder,
    frames: FrameDecoder,
    scratch: Vec<u8>,
}

impl RequestDecoder {
    pub fn new(mode: Mode, max_frame: usize) -> Self {
        Self {
            mode,
            base64: Base64Decoder::default(),
            frames: FrameDecoder::new(max_frame),
            scratch: Vec::new(),
        }
    }

    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<Frame>) -> Result<(), FrameError> {
        match self.mode {
            Mode::Binary => self.frames.push(chunk, out),
            Mode::Text => {
                self.scratch.clear();
                self.base64.push(chunk, &mut self.scratch)?;
                self.frames.push(&self.scratch, out)
            }
        }
    }

    pub fn finish(&mut self, out: &mut Vec<Frame>) -> Result<(), FrameError> {
        if self.mode == Mode::Text {
            self.scratch.clear();
            self.base64.finish(&mut self.scratch)?;
            self.frames.push(&self.scratch, out)?;
        }
        self.frames.finish()
    }
}

/// Serialises trailers as HTTP/1 header lines (lower-case names), the gRPC-web trailer frame.
pub fn encode_trailers(trailers: &HeaderMap) -> Bytes {
    let mut block = Vec::new();
    for (name, value) in trailers {
        block.extend_from_slice(name.as_str().as_bytes());
        block.extend_from_slice(b":");
        block.extend_from_slice(value.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    encode_frame(TRAILERS_FLAG, &block).into()
}

/// Parses a trailers frame payload back into a header map (used by clients and tests); lines
/// that are not a valid header are skipped.
pub fn decode_trailers(payload: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in trailer_fields(payload) {
        let name = http::HeaderName::from_bytes(name);
        let value = http::HeaderValue::from_bytes(value);
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
        self.wrap(encode_frame(0, message).into())
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
