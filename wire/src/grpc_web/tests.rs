use super::*;
use crate::grpc::{encode_frame, message_frame};

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
    assert_eq!(Mode::from_content_type("application/grpc-web+json"), None);
}

#[test]
fn decodes_concatenated_padded_base64_chunks() {
    let first = message_frame(b"a");
    let second = message_frame(b"bcdef");
    let text = format!("{}{}\n", encode_text(&first), encode_text(&second));
    let mut expected = first.clone();
    expected.extend(&second);
    assert_eq!(decode_text(text.as_bytes()).unwrap(), expected);
    assert_eq!(decode_text(b"!!!!"), Err(FrameError::Base64));
}

#[test]
fn text_without_final_padding() {
    let encoded = encode_text(&message_frame(b"ab"));
    let unpadded = encoded.trim_end_matches('=');
    assert_eq!(encoded.len() - unpadded.len(), 2, "{encoded}");
    assert_eq!(
        decode_text(unpadded.as_bytes()).unwrap(),
        message_frame(b"ab")
    );
}

#[test]
fn text_rejects_garbage() {
    for bad in [&b"!!!!"[..], b"A=AA", b"AAAAA", b"QQ=A", b"Q"] {
        assert_eq!(decode_text(bad), Err(FrameError::Base64), "{bad:?}");
    }
}

#[test]
fn text_decodes_the_same_in_any_chunking() {
    // Two frames base64-encoded separately, each padded, then concatenated, with whitespace.
    let body = format!(
        "{} \r\n{}",
        encode_text(&message_frame(b"ab")),
        encode_text(&encode_frame(0x80, b"grpc-status:0\r\n"))
    );
    let whole = decode_text(body.as_bytes()).unwrap();
    for split in 0..body.len() {
        let (a, b) = body.as_bytes().split_at(split);
        let mut decoder = Base64Decoder::default();
        let mut out = Vec::new();
        decoder.push(a, &mut out).unwrap();
        decoder.push(b, &mut out).unwrap();
        decoder.finish(&mut out).unwrap();
        assert_eq!(out, whole, "split at {split}");
    }
}

#[cfg(feature = "stream")]
mod stream {
    use bytes::Bytes;
    use http::HeaderMap;

    use super::*;

    fn decode_all(mode: Mode, chunks: &[&[u8]]) -> Result<Vec<Frame>, FrameError> {
        let mut decoder = RequestDecoder::new(mode, 1 << 20);
        let mut frames = Vec::new();
        for chunk in chunks {
            decoder.push(chunk, &mut frames)?;
        }
        decoder.finish(&mut frames)?;
        Ok(frames)
    }

    #[test]
    fn binary_frames_split_across_chunks() {
        let mut body = message_frame(b"hello");
        body.extend_from_slice(&message_frame(b""));
        let chunks: Vec<&[u8]> = body.chunks(3).collect();
        let frames = decode_all(Mode::Binary, &chunks).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].payload, Bytes::from_static(b"hello"));
        assert!(frames[1].payload.is_empty());
    }

    #[test]
    fn shared_chunks_split_anywhere_give_the_same_frames() {
        let body: Vec<u8> = [
            message_frame(b"first message"),
            message_frame(b""),
            encode_frame(0x80, b"grpc-status:0"),
            message_frame(&[7; 300]),
        ]
        .concat();
        let whole = decode_all(Mode::Binary, &[&body]).unwrap();
        assert_eq!(whole.len(), 4);
        for first in 0..body.len() {
            for second in [first, (first + 7).min(body.len()), body.len()] {
                let mut decoder = FrameDecoder::new(1 << 20);
                let mut frames = Vec::new();
                let body = Bytes::from(body.clone());
                for piece in [
                    body.slice(..first),
                    body.slice(first..second),
                    body.slice(second..),
                ] {
                    decoder.push_bytes(piece, &mut frames).unwrap();
                }
                decoder.finish().unwrap();
                assert_eq!(frames, whole, "split at {first} and {second}");
            }
        }
    }

    #[test]
    fn a_payload_within_one_shared_chunk_is_not_copied() {
        let chunk = Bytes::from([message_frame(b"one"), message_frame(b"two")].concat());
        let mut decoder = FrameDecoder::new(1 << 20);
        let mut frames = Vec::new();
        decoder.push_bytes(chunk.clone(), &mut frames).unwrap();
        let within = |payload: &Bytes| {
            let start = chunk.as_ptr() as usize;
            let at = payload.as_ptr() as usize;
            at >= start && at + payload.len() <= start + chunk.len()
        };
        assert_eq!(frames.len(), 2);
        assert!(frames.iter().all(|frame| within(&frame.payload)));
        // Split across chunks, the payload is gathered once the prefix announced its size.
        let body = message_frame(b"split payload");
        let (head, tail) = body.split_at(9);
        decoder
            .push_bytes(Bytes::copy_from_slice(head), &mut frames)
            .unwrap();
        assert_eq!(frames.len(), 2);
        decoder
            .push_bytes(Bytes::copy_from_slice(tail), &mut frames)
            .unwrap();
        assert_eq!(frames[2].payload, Bytes::from_static(b"split payload"));
        decoder.finish().unwrap();
    }

    #[test]
    fn text_with_padding_in_the_middle_of_the_stream() {
        // Two frames base64-encoded separately, each padded, then concatenated.
        let first = encode_text(&message_frame(b"ab"));
        let second = encode_text(&message_frame(b"bc"));
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
        let encoded = encode_text(&message_frame(b"ab"));
        let unpadded = encoded.trim_end_matches('=');
        let frames = decode_all(Mode::Text, &[unpadded.as_bytes()]).unwrap();
        assert_eq!(frames[0].payload, Bytes::from_static(b"ab"));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(decode_all(Mode::Text, &[b"!!!!"]), Err(FrameError::Base64));
        assert_eq!(decode_all(Mode::Text, &[b"A=AA"]), Err(FrameError::Base64));
        assert_eq!(decode_all(Mode::Text, &[b"AAAAA"]), Err(FrameError::Base64));
        assert_eq!(
            decode_all(Mode::Binary, &[&[0, 0, 0, 0, 9, 1]]),
            Err(FrameError::Truncated(6))
        );
        assert_eq!(
            decode_all(Mode::Binary, &[&[0, 0, 0]]),
            Err(FrameError::Truncated(3))
        );
        let mut decoder = RequestDecoder::new(Mode::Binary, 4);
        assert_eq!(
            decoder.push(&[0, 0, 0, 0, 5], &mut Vec::new()),
            Err(FrameError::TooLarge { size: 5, limit: 4 })
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
            // The whole-body readers agree with the streaming decoder.
            let body: Vec<u8> = refs.concat();
            let binary = match mode {
                Mode::Binary => body,
                Mode::Text => decode_text(&body).unwrap(),
            };
            assert_eq!(
                crate::grpc::first_message(&binary).unwrap(),
                Some(&b"one"[..])
            );
            assert_eq!(crate::grpc::trailer_frame_status(&binary), Some(0));
        }
    }

    #[test]
    fn random_input_never_panics_and_chunking_never_matters() {
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
                let chunked = body
                    .chunks(chunk)
                    .try_for_each(|piece| decoder.push(piece, &mut frames))
                    .and_then(|()| decoder.finish(&mut frames))
                    .map(|()| frames);
                let whole = decode_all(mode, &[&body]);
                assert_eq!(chunked.is_ok(), whole.is_ok(), "{body:?}");
                if let (Ok(a), Ok(b)) = (&chunked, &whole) {
                    assert_eq!(a, b);
                }
            }
        }
    }
}
