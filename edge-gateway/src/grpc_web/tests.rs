use super::*;

fn decode_all(mode: Mode, chunks: &[&[u8]]) -> Result<Vec<Frame>, FramingError> {
    let mut decoder = RequestDecoder::new(mode, 1 << 20);
    let mut frames = Vec::new();
    for chunk in chunks {
        decoder.push(chunk, &mut frames)?;
    }
    decoder.finish(&mut frames)?;
    Ok(frames)
}

#[test]
fn content_types() {
    assert_eq!(
        Mode::from_content_type("application/grpc-web"),
        Some(Mode::Binary)
    );
    assert_eq!(
        Mode::from_content_type("application/grpc-web+proto; charset=x"),
        Some(Mode::Binary)
    );
    assert_eq!(
        Mode::from_content_type("Application/gRPC-Web-Text"),
        Some(Mode::Text)
    );
    assert_eq!(Mode::from_content_type("application/grpc"), None);
}

#[test]
fn binary_frames_split_across_chunks() {
    let mut body = encode_frame(0, b"hello").to_vec();
    body.extend_from_slice(&encode_frame(0, b""));
    let chunks: Vec<&[u8]> = body.chunks(3).collect();
    let frames = decode_all(Mode::Binary, &chunks).unwrap();
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].payload, Bytes::from_static(b"hello"));
    assert!(frames[1].payload.is_empty());
}

#[test]
fn text_with_padding_in_the_middle_of_the_stream() {
    // Two frames base64-encoded separately, each padded, then concatenated.
    let first = STANDARD.encode(encode_frame(0, b"ab"));
    let second = STANDARD.encode(encode_frame(0, b"bc"));
    assert!(first.ends_with('='));
    let body = format!("{first}{second}");
    for split in 0..body.len() {
        let (a, b) = body.as_bytes().split_at(split);
        let frames = decode_all(Mode::Text, &[a, b]).unwrap();
        assert_eq!(frames.len(), 2, "split at {split}");
        assert_eq!(frames[1].payload, Bytes::from_static(b"bc"));
    }
}

#[test]
fn text_without_final_padding() {
    let encoded = STANDARD.encode(encode_frame(0, b"a"));
    let unpadded = encoded.trim_end_matches('=');
    let frames = decode_all(Mode::Text, &[unpadded.as_bytes()]).unwrap();
    assert_eq!(frames[0].payload, Bytes::from_static(b"a"));
}

#[test]
fn rejects_garbage() {
    assert_eq!(
        decode_all(Mode::Text, &[b"!!!!"]),
        Err(FramingError::Base64)
    );
    assert_eq!(
        decode_all(Mode::Text, &[b"A=AA"]),
        Err(FramingError::Base64)
    );
    assert_eq!(
        decode_all(Mode::Text, &[b"AAAAA"]),
        Err(FramingError::Base64)
    );
    assert_eq!(
        decode_all(Mode::Binary, &[&[0, 0, 0, 0, 9, 1]]),
        Err(FramingError::Truncated(6))
    );
    assert_eq!(
        decode_all(Mode::Binary, &[&[0, 0, 0]]),
        Err(FramingError::Truncated(3))
    );
    let mut decoder = RequestDecoder::new(Mode::Binary, 4);
    assert_eq!(
        decoder.push(&[0, 0, 0, 0, 5], &mut Vec::new()),
        Err(FramingError::TooLarge { size: 5, limit: 4 })
    );
}

#[test]
fn response_round_trip_in_both_modes() {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    trailers.insert("grpc-message", "ok".parse().unwrap());
    for mode in [Mode::Binary, Mode::Text] {
        let encoder = ResponseEncoder::new(mode);
        let chunks = [
            encoder.message(b"one"),
            encoder.message(b"two"),
            encoder.trailers(&trailers),
        ];
        let refs: Vec<&[u8]> = chunks.iter().map(|c| c.as_ref()).collect();
        let frames = decode_all(mode, &refs).unwrap();
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[1].payload, Bytes::from_static(b"two"));
        assert!(frames[2].is_trailers());
        let decoded = decode_trailers(&frames[2].payload);
        assert_eq!(decoded.get("grpc-status").unwrap(), "0");
        assert_eq!(decoded.get("grpc-message").unwrap(), "ok");
    }
}

#[test]
fn random_input_never_panics() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let alphabet = b"ABCDEFGHabcdefgh0123456789+/=\r\n \x00\x80\xff";
    for case in 0..5_000 {
        let len = rng.random_range(0..64);
        let body: Vec<u8> = (0..len)
            .map(|_| {
                if case % 2 == 0 {
                    rng.random()
                } else {
                    alphabet[rng.random_range(0..alphabet.len())]
                }
            })
            .collect();
        for mode in [Mode::Binary, Mode::Text] {
            let chunk = rng.random_range(1..8);
            let mut decoder = RequestDecoder::new(mode, 1024);
            let mut frames = Vec::new();
            let ok = body
                .chunks(chunk)
                .all(|piece| decoder.push(piece, &mut frames).is_ok());
            if ok {
                let _ = decoder.finish(&mut frames);
            }
        }
    }
}
