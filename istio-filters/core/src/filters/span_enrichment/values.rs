//! How span-enrichment writes a value: redacted as its field says, made header-safe and
//! bounded, as a request header and as filter state.

use std::borrow::Cow;

use sha2::{Digest, Sha256};

use super::Redaction;
use crate::host::Host;
use meshgate_wire::hex::push_hex;

/// Longest header / filter-state value written; longer values are cut (span tags are small).
const MAX_VALUE_LEN: usize = 256;

pub(super) const SERVICE_HEADER: &str = "x-meshgate-grpc-service";
pub(super) const METHOD_HEADER: &str = "x-meshgate-grpc-method";

/// Writes the request header `header` and the filter state `key`; `value` is header-safe and
/// bounded already ([`redact`], [`clip`]).
pub(super) fn emit(host: &mut dyn Host, header: &str, key: &str, value: &str) {
    host.set_request_header(header, Some(value));
    host.set_property(&[key], value.as_bytes());
}

/// Applies the field's redaction, header-safe and bounded; `None` = do not emit. (A digest is
/// safe and short as it is: only a value as read is clipped.)
pub(super) fn redact(redaction: Redaction, value: String) -> Option<String> {
    match redaction {
        Redaction::None => Some(match clip(&value) {
            Cow::Borrowed(_) => value,
            Cow::Owned(clipped) => clipped,
        }),
        Redaction::Drop => None,
        Redaction::Sha256 => {
            let mut redacted = String::with_capacity(71);
            redacted.push_str("sha256:");
            push_hex(&mut redacted, &Sha256::digest(value.as_bytes()));
            Some(redacted)
        }
    }
}

/// Header-safe and bounded: control characters become spaces, long values are cut.
pub(super) fn clip(value: &str) -> Cow<'_, str> {
    // Control characters are C0 and DEL (single bytes) and C1 (U+0080–U+009F, which UTF-8
    // spells with a leading 0xC2): a byte scan finds every value that may need the char walk.
    let plain = value.bytes().all(|b| b >= 0x20 && b != 0x7f && b != 0xc2);
    if value.len() <= MAX_VALUE_LEN && plain {
        return Cow::Borrowed(value);
    }
    Cow::Owned(
        value
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .scan(0usize, |len, c| {
                *len += c.len_utf8();
                (*len <= MAX_VALUE_LEN).then_some(c)
            })
            .collect(),
    )
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clips_values() {
        assert_eq!(clip("a\r\nb"), "a  b");
        assert_eq!(clip(&"x".repeat(1000)).len(), MAX_VALUE_LEN);
        assert_eq!(clip("a\u{85}b"), "a b");
        assert_eq!(clip("\u{a0}é\u{7f}"), "\u{a0}é ");
    }
}
