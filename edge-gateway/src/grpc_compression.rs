//! gRPC message compression on requests the gateway terminates (gRPC-web): the
//! `grpc-encoding` negotiation and size-bounded decompression, as pure functions.
//!
//! Rules (gRPC `doc/compression.md`, `PROTOCOL-HTTP2.md`), as grpc-go applies them:
//! - `grpc-encoding` absent or `identity`: messages must not carry the compressed flag;
//!   a flagged message is a protocol error, `INTERNAL`.
//! - `grpc-encoding: gzip`: flagged messages are gunzipped, unflagged ones pass as they are.
//! - any other encoding: `UNIMPLEMENTED`, with `grpc-accept-encoding` listing what is
//!   supported ([`ACCEPT_ENCODING`]); checked before any message is looked at.
//! - a message that inflates beyond the limit stops inflating at the limit (no unbounded
//!   allocation, whatever the ratio: a gzip bomb costs at most `limit` bytes): `RESOURCE_EXHAUSTED`.
//! - data that is not gzip: `INTERNAL` (grpc-go: "failed to decompress the received message").
//!
//! Messages are forwarded upstream uncompressed (the gateway never sends `grpc-encoding`).

use std::io::Read;

use bytes::Bytes;

/// What the gateway can decode, for `grpc-accept-encoding`.
pub const ACCEPT_ENCODING: &str = "identity,gzip";

/// A request's message encoding (`grpc-encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompressionError {
    /// `UNIMPLEMENTED`, answered with `grpc-accept-encoding`.
    #[error("grpc-encoding {0:?} is not supported (supported: {ACCEPT_ENCODING})")]
    Unsupported(String),
    /// `INTERNAL`: the compressed flag without a compressing `grpc-encoding`.
    #[error("compressed message but grpc-encoding is identity or absent")]
    FlagWithoutEncoding,
    /// `RESOURCE_EXHAUSTED`.
    #[error("decompressed message exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// `INTERNAL`: the payload is not valid gzip.
    #[error("failed to decompress the message: {0}")]
    Corrupt(String),
}

impl Encoding {
    /// Parses a `grpc-encoding` header value (`None`: the header is absent).
    pub fn from_header(value: Option<&str>) -> Result<Self, CompressionError> {
        let Some(value) = value else {
            return Ok(Self::Identity);
        };
        let value = value.trim();
        if value.eq_ignore_ascii_case("identity") || value.is_empty() {
            Ok(Self::Identity)
        } else if value.eq_ignore_ascii_case("gzip") {
            Ok(Self::Gzip)
        } else {
            Err(CompressionError::Unsupported(value.to_owned()))
        }
    }

    /// The message as the upstream must see it: `compressed` is the frame's flag.
    /// An uncompressed payload is returned as is (no copy).
    pub fn decode_message(
        self,
        compressed: bool,
        payload: Bytes,
        limit: usize,
    ) -> Result<Bytes, CompressionError> {
        match (self, compressed) {
            (_, false) => Ok(payload),
            (Self::Identity, true) => Err(CompressionError::FlagWithoutEncoding),
            (Self::Gzip, true) => gunzip(&payload, limit).map(Bytes::from),
        }
    }
}

/// Inflates gzip data (one or more members) into at most `limit` bytes.
pub fn gunzip(data: &[u8], limit: usize) -> Result<Vec<u8>, CompressionError> {
    let decoder = flate2::read::MultiGzDecoder::new(data);
    // Room for one byte past the limit tells "exactly the limit" from "more". The initial
    // capacity follows the input, not the claimed output, so a bomb cannot reserve memory.
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(limit));
    let read_limit = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    decoder
        .take(read_limit)
        .read_to_end(&mut out)
        .map_err(|e| CompressionError::Corrupt(e.to_string()))?;
    if out.len() > limit {
        return Err(CompressionError::TooLarge { limit });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn header_values() {
        assert_eq!(Encoding::from_header(None), Ok(Encoding::Identity));
        assert_eq!(
            Encoding::from_header(Some("identity")),
            Ok(Encoding::Identity)
        );
        assert_eq!(Encoding::from_header(Some(" GZIP ")), Ok(Encoding::Gzip));
        assert_eq!(
            Encoding::from_header(Some("br")),
            Err(CompressionError::Unsupported("br".into()))
        );
        assert_eq!(
            Encoding::from_header(Some("deflate")),
            Err(CompressionError::Unsupported("deflate".into()))
        );
    }

    #[test]
    fn gzip_round_trip_and_passthrough() {
        let message = b"\x0a\x05hello".repeat(100);
        let compressed = Bytes::from(gzip(&message));
        assert_eq!(
            Encoding::Gzip
                .decode_message(true, compressed, 1 << 20)
                .unwrap(),
            Bytes::from(message.clone())
        );
        // gzip announced, this message not flagged: passed through untouched.
        let plain = Bytes::from(message);
        let passed = Encoding::Gzip
            .decode_message(false, plain.clone(), 1 << 20)
            .unwrap();
        assert_eq!(passed.as_ptr(), plain.as_ptr(), "no copy for identity");
        assert_eq!(
            Encoding::Identity.decode_message(false, plain.clone(), 1),
            Ok(plain),
            "the limit is enforced by framing, not here, for uncompressed messages"
        );
    }

    #[test]
    fn flag_without_encoding_is_a_protocol_error() {
        assert_eq!(
            Encoding::Identity.decode_message(true, Bytes::from(gzip(b"x")), 1 << 20),
            Err(CompressionError::FlagWithoutEncoding)
        );
    }

    #[test]
    fn the_limit_is_exact() {
        let data = vec![7u8; 1000];
        assert_eq!(gunzip(&gzip(&data), 1000).unwrap(), data);
        assert_eq!(
            gunzip(&gzip(&data), 999),
            Err(CompressionError::TooLarge { limit: 999 })
        );
        assert_eq!(gunzip(&gzip(b""), 0).unwrap(), b"");
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_limit() {
        // 64 MiB of zeros compress to ~64 KiB; inflating stops after limit + 1 bytes.
        let bomb = {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..64 {
                encoder.write_all(&zeros).unwrap();
            }
            encoder.finish().unwrap()
        };
        assert!(bomb.len() < 1 << 17, "bomb is {} bytes", bomb.len());
        let limit = 1 << 20;
        assert_eq!(
            gunzip(&bomb, limit),
            Err(CompressionError::TooLarge { limit })
        );
    }

    #[test]
    fn concatenated_members_are_one_message() {
        let mut data = gzip(b"hello ");
        data.extend_from_slice(&gzip(b"world"));
        assert_eq!(gunzip(&data, 100).unwrap(), b"hello world");
    }

    #[test]
    fn corrupt_or_truncated_data_is_refused() {
        assert!(matches!(
            gunzip(b"definitely not gzip", 100),
            Err(CompressionError::Corrupt(_))
        ));
        let whole = gzip(&[1u8; 500]);
        assert!(matches!(
            gunzip(&whole[..whole.len() - 6], 1000),
            Err(CompressionError::Corrupt(_))
        ));
        // A corrupted CRC is caught too.
        let mut bad_crc = whole.clone();
        let crc_at = bad_crc.len() - 8;
        bad_crc[crc_at] ^= 0xff;
        assert!(matches!(
            gunzip(&bad_crc, 1000),
            Err(CompressionError::Corrupt(_))
        ));
    }

    #[test]
    fn random_input_never_panics() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for round in 0..2000 {
            let len = round % 64;
            let mut data: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            if round % 2 == 0 && len >= 2 {
                // gzip magic, so the decoder gets past the first check.
                data[0] = 0x1f;
                data[1] = 0x8b;
            }
            let _ = gunzip(&data, 256);
        }
    }
}
