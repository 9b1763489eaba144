//! Trace context recognition (W3C `traceparent`, B3 single and multi header). The filters only
//! read it: a trace header is never rewritten, so an existing trace is never broken.

/// The trace id of the request, if it carries a valid W3C or B3 context (W3C wins).
pub fn trace_id(header: impl Fn(&str) -> Option<String>) -> Option<(TraceFormat, String)> {
    if let Some(id) = header("traceparent").as_deref().and_then(w3c_trace_id) {
        return Some((TraceFormat::W3c, id));
    }
    if let Some(id) = header("b3").as_deref().and_then(b3_single_trace_id) {
        return Some((TraceFormat::B3, id));
    }
    header("x-b3-traceid")
        .filter(|id| is_trace_id(id))
        .map(|id| (TraceFormat::B3, id.to_ascii_lowercase()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceFormat {
    W3c,
    B3,
}

impl TraceFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::W3c => "w3c",
            Self::B3 => "b3",
        }
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_trace_id(s: &str) -> bool {
    (is_hex(s, 32) || is_hex(s, 16)) && s.bytes().any(|b| b != b'0')
}

/// `version-traceid-spanid-flags`, version not `ff`, ids not all zero.
fn w3c_trace_id(value: &str) -> Option<String> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let valid = is_hex(version, 2)
        && !version.eq_ignore_ascii_case("ff")
        && is_hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && is_hex(span, 16)
        && span.bytes().any(|b| b != b'0')
        && is_hex(flags, 2)
        && (version != "00" || parts.next().is_none());
    valid.then(|| trace.to_ascii_lowercase())
}

/// `traceid-spanid[-sampled[-parentspanid]]` (a lone `0`/`1`/`d` carries no trace id).
fn b3_single_trace_id(value: &str) -> Option<String> {
    let mut parts = value.trim().split('-');
    let trace = parts.next()?;
    let span = parts.next()?;
    (is_trace_id(trace) && is_hex(span, 16)).then(|| trace.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(headers: &[(&str, &str)]) -> Option<(TraceFormat, String)> {
        trace_id(|name| {
            headers
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn reads_w3c_and_b3() {
        let w3c = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            from(&[("traceparent", w3c)]),
            Some((TraceFormat::W3c, "4bf92f3577b34da6a3ce929d0e0e4736".into()))
        );
        assert_eq!(
            from(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")]),
            Some((TraceFormat::B3, "80f198ee56343ba864fe8b2a57d3eff7".into()))
        );
        assert_eq!(
            from(&[("x-b3-traceid", "463ac35c9f6413ad")]),
            Some((TraceFormat::B3, "463ac35c9f6413ad".into()))
        );
    }

    #[test]
    fn ignores_invalid_contexts() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            assert_eq!(from(&[("traceparent", bad)]), None, "{bad}");
        }
        assert_eq!(from(&[("b3", "1")]), None);
    }
}
