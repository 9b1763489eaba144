//! gRPC-web request decoding (binary and text) on arbitrary bytes, fed in arbitrary chunks.
//! Input layout: first byte = mode (bit 0) and chunk size (upper bits).
#![no_main]

use edge_gateway::grpc_web::{Mode, RequestDecoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&control, body)) = data.split_first() else {
        return;
    };
    let mode = if control & 1 == 0 { Mode::Binary } else { Mode::Text };
    let chunk = usize::from(control >> 1).max(1);
    let mut decoder = RequestDecoder::new(mode, 64 * 1024);
    let mut frames = Vec::new();
    for piece in body.chunks(chunk) {
        if decoder.push(piece, &mut frames).is_err() {
            return;
        }
    }
    let _ = decoder.finish(&mut frames);
});
