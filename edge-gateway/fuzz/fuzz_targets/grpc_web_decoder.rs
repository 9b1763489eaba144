//! gRPC-web request bodies (binary and text) through `meshgate_wire::grpc_web::RequestDecoder`,
//! pushed in arbitrary chunks, as the gateway's `proxy::grpc_web` does with the body it read,
//! and through the whole-body readers the filters use (`grpc_web::decode_text`, `grpc::frames`).
//!
//! Invariants beyond "no panic":
//! - chunking does not matter: any split of a body decodes to the same frames as one push,
//!   and is rejected exactly when one push is;
//! - the whole-body readers agree with the streaming decoder: same frames when it accepts,
//!   and a text body it refuses as base64 is refused by `decode_text` too;
//! - what the encoders produce decodes back: frames from `encode_frame`, the response encoder's
//!   chunks (text mode: each chunk base64-padded on its own, whitespace anywhere), and trailers;
//! - a frame over the limit is refused with `TooLarge`, never buffered.
#![no_main]

use arbitrary::Arbitrary;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use edge_gateway::error::GatewayError;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use meshgate_wire::grpc::{self, FrameError, TRAILERS_FLAG};
use meshgate_wire::grpc_web::{self, Frame, Mode, RequestDecoder, ResponseEncoder};

#[derive(Debug, Arbitrary)]
struct Input {
    text: bool,
    /// Frame size limit; small values exercise `TooLarge`.
    max_frame: u16,
    /// Chunk lengths, cycled over the body (0 means 1).
    chunks: Vec<u8>,
    body: Body,
}

#[derive(Debug, Arbitrary)]
enum Body {
    Raw(Vec<u8>),
    Frames {
        frames: Vec<(u8, Vec<u8>)>,
        trailers: Vec<(String, String)>,
        /// Text mode: base64 each frame separately (padding mid-stream) instead of once.
        per_frame: bool,
        drop_final_padding: bool,
        /// Text mode: positions at which whitespace is inserted.
        whitespace: Vec<u8>,
    },
}

fn decode(
    mode: Mode,
    max_frame: usize,
    body: &[u8],
    chunks: &[u8],
) -> Result<Vec<Frame>, FrameError> {
    let mut decoder = RequestDecoder::new(mode, max_frame);
    let mut frames = Vec::new();
    let mut rest = body;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let size = sizes
            .next()
            .map_or(rest.len(), |&n| usize::from(n).max(1))
            .min(rest.len());
        let (piece, tail) = rest.split_at(size);
        decoder.push(piece, &mut frames)?;
        rest = tail;
    }
    decoder.finish(&mut frames)?;
    Ok(frames)
}

fn check_error(error: FrameError) {
    let rescued = GatewayError::GrpcWebFraming(error).rescue();
    assert_eq!(rescued.http_status, 400);
    assert_eq!(rescued.grpc_code, 3, "INVALID_ARGUMENT");
}

/// The filters read a body they hold whole: text decoded at once, then split into frames.
fn check_whole_body_readers(mode: Mode, body: &[u8], streamed: &Result<Vec<Frame>, FrameError>) {
    let binary = match mode {
        Mode::Binary => Ok(body.to_vec()),
        Mode::Text => grpc_web::decode_text(body),
    };
    match (streamed, &binary) {
        (Ok(frames), Ok(binary)) => {
            let whole = grpc::frames(binary).expect("the streaming decoder accepted it");
            assert_eq!(whole.len(), frames.len());
            for (a, b) in whole.iter().zip(frames) {
                assert_eq!((a.flags, a.payload), (b.flags, &b.payload[..]));
            }
        }
        (Ok(_), Err(error)) => panic!("decode_text refused what streamed: {error:?}"),
        (Err(FrameError::Base64), Ok(_)) => panic!("decode_text accepted bad base64"),
        (Err(_), _) => {}
    }
}

/// Trailer names and values that survive the `name:value\r\n` text form.
fn trailers(pairs: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value.trim_matches(|c: char| c.is_ascii_whitespace())),
        ) else {
            continue;
        };
        if value.as_bytes().iter().any(|&b| b == b'\r' || b == b'\n') {
            continue;
        }
        map.append(name, value);
    }
    map
}

fuzz_target!(|input: Input| {
    let mode = if input.text { Mode::Text } else { Mode::Binary };
    let max_frame = usize::from(input.max_frame);
    match input.body {
        Body::Raw(body) => {
            let whole = decode(mode, max_frame, &body, &[]);
            let chunked = decode(mode, max_frame, &body, &input.chunks);
            match (&whole, &chunked) {
                (Ok(a), Ok(b)) => assert_eq!(a, b),
                (Err(_), Err(_)) => {}
                _ => panic!("chunking changed the outcome: {whole:?} vs {chunked:?}"),
            }
            if let Ok(frames) = &whole {
                if mode == Mode::Binary {
                    let total: usize = frames.iter().map(|f| 5 + f.payload.len()).sum();
                    assert_eq!(total, body.len());
                }
                assert!(frames.iter().all(|f| f.payload.len() <= max_frame));
            }
            check_whole_body_readers(mode, &body, &whole);
            if let Err(error) = whole {
                check_error(error);
            }
        }
        Body::Frames {
            frames,
            trailers: pairs,
            per_frame,
            drop_final_padding,
            whitespace,
        } => {
            let encoder = ResponseEncoder::new(mode);
            let trailer_map = trailers(&pairs);
            // Each frame as the gateway's encoders put it on the wire (flag 0x80 is reserved
            // for the trailers, so message frames keep the other flag bits only).
            let mut raw: Vec<Vec<u8>> = Vec::new();
            let mut encoded: Vec<Vec<u8>> = Vec::new();
            let mut expected: Vec<Frame> = Vec::new();
            for (flags, payload) in &frames {
                let flags = flags & !TRAILERS_FLAG;
                let frame = grpc::encode_frame(flags, payload);
                encoded.push(match (flags, mode) {
                    (0, _) => encoder.message(payload).to_vec(),
                    (_, Mode::Binary) => frame.clone(),
                    (_, Mode::Text) => STANDARD.encode(&frame).into_bytes(),
                });
                raw.push(frame);
                expected.push(Frame {
                    flags,
                    payload: payload.clone().into(),
                });
            }
            let trailer_frame = grpc_web::encode_trailers(&trailer_map);
            raw.push(trailer_frame.to_vec());
            encoded.push(encoder.trailers(&trailer_map).to_vec());
            let mut body: Vec<u8> = match mode {
                Mode::Binary => {
                    assert_eq!(encoded, raw, "binary mode adds nothing to the frames");
                    raw.concat()
                }
                // Each chunk padded on its own, as the gateway streams its responses.
                Mode::Text if per_frame => encoded.concat(),
                Mode::Text if drop_final_padding => {
                    STANDARD_NO_PAD.encode(raw.concat()).into_bytes()
                }
                Mode::Text => STANDARD.encode(raw.concat()).into_bytes(),
            };
            if mode == Mode::Text {
                for &at in whitespace.iter().take(16) {
                    let at = usize::from(at) % (body.len() + 1);
                    body.insert(at, b"\r\n\t "[at % 4]);
                }
            }
            let fits = frames.iter().all(|(_, p)| p.len() <= max_frame)
                && trailer_frame.len() - 5 <= max_frame;
            match decode(mode, max_frame, &body, &input.chunks) {
                Ok(decoded) => {
                    assert!(fits, "a frame over {max_frame} bytes was accepted");
                    assert_eq!(decoded.len(), expected.len() + 1);
                    assert_eq!(&decoded[..expected.len()], expected.as_slice());
                    let last = &decoded[expected.len()];
                    assert!(last.is_trailers());
                    assert_eq!(grpc_web::decode_trailers(&last.payload), trailer_map);
                }
                Err(FrameError::TooLarge { size, limit }) => {
                    assert!(!fits, "refused a body whose frames fit");
                    assert_eq!(limit, max_frame);
                    assert!(size > limit);
                }
                Err(other) => panic!("encoder output rejected: {other:?}"),
            }
        }
    }
});
