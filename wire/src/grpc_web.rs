//! gRPC-web: its content types and the grpc-web-text encoding. Text bodies are base64 that may
//! carry padding at any quantum boundary (clients may concatenate independently padded
//! pieces), so [`Base64Decoder`] decodes in 4-character quanta, a run ending at each padded
//! quantum; whitespace is skipped and an unpadded final quantum is accepted.
//!
//! With feature `stream`, [`RequestDecoder`] turns request body chunks into frames and
//! [`ResponseEncoder`] messages and trailers into body chunks; the trailers travel as the final
//! frame with flag `0x80`, so they survive HTTP/1.1. In text mode every chunk is base64 on its own.

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};

use crate::content_type::{Protocol, grpc_protobuf};
use crate::grpc::FrameError;

#[cfg(feature = "stream")]
mod stream;
#[cfg(feature = "stream")]
pub use stream::{
    Frame, FrameDecoder, RequestDecoder, ResponseEncoder, decode_trailers, encode_trailers,
};

/// Padding optional, so a short final quantum is accepted too (also `grpc-status-details-bin`,
/// which senders may pad or not).
pub(crate) const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Binary,
    Text,
}

impl Mode {
    /// Recognises `application/grpc-web[-text][+proto]` (parameters and case ignored).
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        match grpc_protobuf(content_type)? {
            Protocol::GrpcWeb => Some(Self::Binary),
            Protocol::GrpcWebText => Some(Self::Text),
            Protocol::Grpc | Protocol::Http => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Binary => "application/grpc-web+proto",
            Self::Text => "application/grpc-web-text+proto",
        }
    }
}

/// Streaming grpc-web-text decoder, tolerant of padding at any quantum boundary.
#[derive(Debug, Default)]
pub struct Base64Decoder {
    /// Text not decoded yet (whitespace removed): less than one quantum between calls.
    pending: Vec<u8>,
}

impl Base64Decoder {
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        self.pending
            .extend(chunk.iter().copied().filter(|b| !b.is_ascii_whitespace()));
        let whole = self.pending.len() / 4 * 4;
        decode_quanta(&self.pending[..whole], out)?;
        self.pending.drain(..whole);
        Ok(())
    }

    /// End of input: an unpadded final quantum of 2 or 3 characters is accepted.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        match self.pending.len() {
            0 => Ok(()),
            1 => Err(FrameError::Base64),
            _ => {
                decode_quanta(&self.pending, out)?;
                self.pending.clear();
                Ok(())
            }
        }
    }
}

/// Decodes whole quanta (or a final short one). Padding may only end a quantum, so the text
/// is decoded in runs, each ending at the first quantum holding a `=`: within a run, padding
/// can only be at its end, where the engine checks it.
fn decode_quanta(mut text: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    while !text.is_empty() {
        let end = text
            .iter()
            .position(|&b| b == b'=')
            .map_or(text.len(), |at| (at / 4 + 1) * 4)
            .min(text.len());
        LENIENT
            .decode_vec(&text[..end], out)
            .map_err(|_| FrameError::Base64)?;
        text = &text[end..];
    }
    Ok(())
}

/// Decodes a whole grpc-web-text body to the binary frames it carries.
pub fn decode_text(body: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut decoder = Base64Decoder::default();
    let mut out = Vec::with_capacity(body.len() / 4 * 3 + 3);
    decoder.push(body, &mut out)?;
    decoder.finish(&mut out)?;
    Ok(out)
}

/// A body as text-mode chunks are sent: standard padded base64.
pub fn encode_text(binary: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(binary)
}

#[cfg(test)]
mod tests;
