//! Percent-decoding as the REST paths and query strings need it, on the `percent-encoding`
//! crate. Strict: a `%` that does not start a two-hex-digit escape, or a result that is not
//! UTF-8, is refused (the gateway answers 400; the filters read nothing), so a malformed escape
//! never reaches a message field as a different value.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

/// Whether every `%` starts an escape of exactly two hex digits (a sign is not a digit).
fn well_formed(input: &str) -> bool {
    let bytes = input.as_bytes();
    let mut index = 0;
    while let Some(offset) = bytes[index..].iter().position(|&b| b == b'%') {
        let at = index + offset;
        let hex = |i: usize| bytes.get(i).is_some_and(u8::is_ascii_hexdigit);
        if !(hex(at + 1) && hex(at + 2)) {
            return false;
        }
        index = at + 3;
    }
    true
}

/// The byte offset of the first `%2F`/`%2f` in `input`.
fn encoded_slash(input: &str) -> Option<usize> {
    input
        .as_bytes()
        .windows(3)
        .position(|w| w[0] == b'%' && w[1] == b'2' && (w[2] == b'F' || w[2] == b'f'))
}

/// Percent-decodes one path segment. With `decode_slash` false an encoded slash (`%2F`) stays
/// as it was written, so the segments of a multi-segment binding stay distinguishable (the
/// HttpRule spec). `None` for a malformed escape or a result that is not UTF-8.
pub fn decode_segment(input: &str, decode_slash: bool) -> Option<Cow<'_, str>> {
    if !well_formed(input) {
        return None;
    }
    if decode_slash || encoded_slash(input).is_none() {
        return percent_decode_str(input).decode_utf8().ok();
    }
    // 0x2F never occurs inside a multi-byte UTF-8 sequence, so decoding the pieces between
    // encoded slashes on their own checks UTF-8 exactly as decoding the whole would.
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = encoded_slash(rest) {
        out.push_str(&percent_decode_str(&rest[..at]).decode_utf8().ok()?);
        out.push_str(&rest[at..at + 3]);
        rest = &rest[at + 3..];
    }
    out.push_str(&percent_decode_str(rest).decode_utf8().ok()?);
    Some(Cow::Owned(out))
}

/// The raw `name=value` pairs of a query string (no `?`), empty pairs skipped; a pair without
/// `=` has an empty value. Decode each side with [`decode_query_component`].
pub fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// The query string of a request path (`/p?q#f` → `q`), if it has one.
pub fn query_of(path: &str) -> Option<&str> {
    let (_, query) = path.split_once('?')?;
    Some(query.split('#').next().unwrap_or_default())
}

/// One side of a query pair: `+` is a space (as HTML forms send it), then strict decoding.
pub fn decode_query_component(input: &str) -> Option<String> {
    let spaced: Cow<'_, str> = if input.contains('+') {
        Cow::Owned(input.replace('+', " "))
    } else {
        Cow::Borrowed(input)
    };
    decode_segment(&spaced, true).map(Cow::into_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(input: &str, decode_slash: bool) -> Option<String> {
        decode_segment(input, decode_slash).map(Cow::into_owned)
    }

    #[test]
    fn decodes_escapes_and_keeps_encoded_slashes_on_request() {
        assert_eq!(decode("a%20b", true).as_deref(), Some("a b"));
        assert_eq!(decode("%4a%4A", true).as_deref(), Some("JJ"));
        assert_eq!(decode("a%2Fb", true).as_deref(), Some("a/b"));
        assert_eq!(decode("a%2Fb%2f%28", false).as_deref(), Some("a%2Fb%2f("));
        assert_eq!(decode("%2F", false).as_deref(), Some("%2F"));
        assert_eq!(decode("%E2%9C%93", false).as_deref(), Some("✓"));
        assert!(matches!(
            decode_segment("plain", true),
            Some(Cow::Borrowed("plain"))
        ));
    }

    #[test]
    fn refuses_malformed_escapes_and_invalid_utf8() {
        // Found by the rest_router fuzz target: a sign is not a hex digit.
        for bad in [
            "%zz", "%f", "%", "%+F", "%-1", "%+0", "a%+Fb", "%FF", "%2F%FF",
        ] {
            assert_eq!(decode(bad, true), None, "{bad}");
            assert_eq!(decode(bad, false), None, "{bad}");
        }
    }

    #[test]
    fn query_pairs_split_and_decode_like_forms() {
        let pairs: Vec<_> = query_pairs("page=2&name=a+b%21&&flag").collect();
        assert_eq!(pairs, [("page", "2"), ("name", "a+b%21"), ("flag", "")]);
        assert_eq!(decode_query_component("a+b%21").as_deref(), Some("a b!"));
        assert_eq!(decode_query_component("100%"), None);
        assert_eq!(query_of("/v1/users?page=2#top"), Some("page=2"));
        assert_eq!(query_of("/v1/users"), None);
    }
}
