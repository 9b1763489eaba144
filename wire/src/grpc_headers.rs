//! The gRPC-over-HTTP/2 header values: `grpc-timeout`, `grpc-message` (percent-encoded),
//! `grpc-status` and `grpc-status-details-bin` (base64).

use std::time::Duration;

use base64::Engine;
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

/// What `grpc-message` percent-encodes: everything outside printable ASCII, and `%` itself
/// (non-ASCII bytes are always encoded).
const GRPC_MESSAGE: &AsciiSet = &CONTROLS.add(b'%');

/// `grpc-timeout: 100m` → 100 ms; `None` for anything the spec does not allow (at most 8
/// digits and a unit).
pub fn parse_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// A timeout as `grpc-timeout`, in whole milliseconds within the spec's 8 digits.
pub fn format_timeout(timeout: Duration) -> String {
    format!("{}m", timeout.as_millis().clamp(1, 99_999_999))
}

/// A status message as `grpc-message`.
pub fn encode_message(message: &str) -> String {
    utf8_percent_encode(message, GRPC_MESSAGE).to_string()
}

/// A `grpc-message` back to text; stray `%` signs and invalid UTF-8 are kept, not refused.
pub fn decode_message(value: &str) -> String {
    percent_decode_str(value).decode_utf8_lossy().into_owned()
}

/// An encoded `google.rpc.Status` as `grpc-status-details-bin`.
pub fn encode_details(details: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(details)
}

/// A `grpc-status-details-bin` value back to the encoded `google.rpc.Status` (padded or not:
/// binary header values may be sent either way); `None` when it is not base64.
pub fn decode_details(value: &[u8]) -> Option<Vec<u8>> {
    crate::grpc_web::LENIENT.decode(value).ok()
}

/// The `grpc-status` of a header or trailer block, as the number on the wire.
#[cfg(feature = "stream")]
pub fn status_of(headers: &http::HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_round_trip() {
        assert_eq!(parse_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_timeout("9n"), Some(Duration::from_nanos(9)));
        assert_eq!(parse_timeout("5x"), None);
        assert_eq!(parse_timeout("m"), None);
        assert_eq!(parse_timeout("-1m"), None);
        assert_eq!(parse_timeout("1234567890m"), None);
        assert_eq!(format_timeout(Duration::from_millis(1500)), "1500m");
        assert_eq!(format_timeout(Duration::ZERO), "1m");
        assert_eq!(format_timeout(Duration::from_secs(10_000_000)), "99999999m");
    }

    #[test]
    fn message_is_percent_encoded() {
        assert_eq!(encode_message("50% done ✓"), "50%25 done %E2%9C%93");
        assert_eq!(encode_message("tab\there\x7f"), "tab%09here%7F");
        assert_eq!(encode_message("plain ~ text"), "plain ~ text");
    }

    #[test]
    fn message_decoding_keeps_stray_percent_signs() {
        assert_eq!(decode_message("50%25 done %E2%9C%93"), "50% done ✓");
        assert_eq!(decode_message("100%"), "100%");
        assert_eq!(decode_message("%zz%41"), "%zzA");
        assert_eq!(decode_message("%FF"), "\u{FFFD}");
    }

    #[test]
    fn details_are_unpadded_base64() {
        assert_eq!(encode_details(b"\x08\x05"), "CAU");
        assert_eq!(decode_details(b"CAU").as_deref(), Some(&b"\x08\x05"[..]));
        assert_eq!(decode_details(b"CAU=").as_deref(), Some(&b"\x08\x05"[..]));
        assert_eq!(decode_details(b"C@U"), None);
    }

    #[cfg(feature = "stream")]
    #[test]
    fn status_is_read_from_headers() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(status_of(&headers), None);
        headers.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(status_of(&headers), Some(14));
        headers.insert("grpc-status", "x".parse().unwrap());
        assert_eq!(status_of(&headers), None);
    }
}
