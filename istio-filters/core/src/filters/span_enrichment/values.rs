//! How span-enrichment writes a value: redacted as its field says, made header-safe and
//! bounded, as a request header and as filter state.

use sha2::{Digest, Sha256};

use super::Redaction;
use crate::host::Host;

/// Longest header / filter-state value written; longer values are cut (span tags are small).
const MAX_VALUE_LEN: usize = 256;

pub(super) const SERVICE_HEADER: &str = "x-meshgate-grpc-service";
pub(super) const METHOD_HEADER: &str = "x-meshgate-grpc-method";

/// Writes the request header `header` and the filter state `key`.
pub(super) fn emit(host: &mut dyn Host, header: &str, key: &str, value: &str) {
    let value = clip(value);
    host.set_request_header(header, Some(&value));
    host.set_property(&[key], value.as_bytes());
}

/// Applies the field's redaction; `None` = do not emit.
pub(super) fn redact(redaction: Redaction, value: &str) -> Option<String> {
    match redaction {
        Redaction::None => Some(value.to_owned()),
        Redaction::Drop => None,
        Redaction::Sha256 => Some(format!(
            "sha256:{}",
            hex::encode(Sha256::digest(value.as_bytes()))
        )),
    }
}

/// Header-safe and bounded: control characters become spaces, long values are cut.
pub(super) fn clip(value: &str) -> String {
    if value.len() <= MAX_VALUE_LEN && !value.chars().any(char::is_control) {
        return value.to_owned();
    }
    value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .scan(0usize, |len, c| {
            *len += c.len_utf8();
            (*len <= MAX_VALUE_LEN).then_some(c)
        })
        .collect()
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clips_values() {
        assert_eq!(clip("a\r\nb"), "a  b");
        assert_eq!(clip(&"x".repeat(1000)).len(), MAX_VALUE_LEN);
    }
}
