//! Lower-case hex, as ids and digests are spelled on the wire (trace ids, ETags, redacted
//! values).

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Appends `bytes` as lower-case hex, spelled into a buffer and appended a buffer at a time
/// (the `hex` crate's `encode`, and `String::push` per digit, cost several times the work per
/// byte; digests are hexed on the filters' request path).
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    let mut buffer = [0u8; 64];
    for chunk in bytes.chunks(buffer.len() / 2) {
        for (pair, &byte) in buffer.chunks_exact_mut(2).zip(chunk) {
            pair[0] = DIGITS[usize::from(byte >> 4)];
            pair[1] = DIGITS[usize::from(byte & 0x0f)];
        }
        // Always ASCII digits.
        out.push_str(std::str::from_utf8(&buffer[..chunk.len() * 2]).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spells_every_byte_in_lower_case() {
        let bytes: Vec<u8> = (0..=255).collect();
        let mut out = String::from("x");
        push_hex(&mut out, &bytes);
        assert_eq!(out.len(), 1 + 512);
        for (byte, pair) in bytes.iter().zip(out.as_bytes()[1..].chunks(2)) {
            let pair = std::str::from_utf8(pair).unwrap();
            assert_eq!(u8::from_str_radix(pair, 16).unwrap(), *byte);
            assert_eq!(pair, pair.to_ascii_lowercase());
        }
    }
}
