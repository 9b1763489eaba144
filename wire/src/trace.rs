//! Trace context: W3C `traceparent` and B3 (single `b3` header or `X-B3-*`). [`incoming`]
//! reads the caller's context (the filters record it, never rewrite it); with feature
//! `trace-ids`, [`TraceContext`] continues it or starts one with a span of its own (the gateway's
//! server span becomes the parent of the upstream call, propagated in both formats).

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

/// The trace context a request arrived with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub format: TraceFormat,
    /// 32 lower-case hex digits (a 64-bit B3 id left-padded with zeros, as W3C and
    /// OpenTelemetry carry it).
    pub trace_id: String,
    /// The caller's span (16 lower-case hex digits), if it sent one.
    pub parent_span_id: Option<String>,
    pub sampled: bool,
}

/// The request's trace context, if it carries a valid one: `traceparent` first, then `b3`,
/// then `x-b3-traceid` (with `x-b3-spanid`, `x-b3-sampled`). `header` looks up a request header.
pub fn incoming<S: AsRef<str>>(header: impl Fn(&str) -> Option<S>) -> Option<Incoming> {
    if let Some(found) = header("traceparent").and_then(|v| parse_traceparent(v.as_ref())) {
        return Some(found);
    }
    if let Some(found) = header("b3").and_then(|v| parse_b3_single(v.as_ref())) {
        return Some(found);
    }
    let trace_id = header("x-b3-traceid").and_then(|v| normalize_b3_trace_id(v.as_ref()))?;
    let parent_span_id = header("x-b3-spanid").and_then(|v| span_id(v.as_ref()));
    let sampled = header("x-b3-sampled").is_none_or(|v| v.as_ref().trim() != "0");
    Some(Incoming {
        format: TraceFormat::B3,
        trace_id,
        parent_span_id,
        sampled,
    })
}

/// `len` hex digits, not all zero (an all-zero id is invalid in both formats).
fn is_id(s: &str, len: usize) -> bool {
    is_hex(s, len) && s.bytes().any(|b| b != b'0')
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn span_id(value: &str) -> Option<String> {
    let value = value.trim();
    is_id(value, 16).then(|| value.to_ascii_lowercase())
}

/// `version-traceid-spanid-flags`: version hex and not `ff`, ids not all zero, and version
/// `00` has exactly these four fields (W3C Trace Context §3.2).
fn parse_traceparent(value: &str) -> Option<Incoming> {
    // The fields are at fixed offsets (`vv-` 32 `-` 16 `-ff`): cut there instead of splitting
    // (this runs on every request of every filter VM).
    let value = value.trim();
    let bytes = value.as_bytes();
    let dashes = [2, 35, 52].iter().all(|&at| bytes.get(at) == Some(&b'-'));
    if !dashes {
        return None;
    }
    let (version, trace) = (value.get(..2)?, value.get(3..35)?);
    let (span, flags) = (value.get(36..52)?, value.get(53..55)?);
    // Version 00 has exactly these four fields; later versions may append `-…`.
    let tail_ok = match bytes.get(55) {
        None => true,
        Some(&b'-') => version != "00",
        Some(_) => false,
    };
    let valid = tail_ok
        && is_hex(version, 2)
        && !version.eq_ignore_ascii_case("ff")
        && is_id(trace, 32)
        && is_id(span, 16)
        && is_hex(flags, 2);
    if !valid {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(Incoming {
        format: TraceFormat::W3c,
        trace_id: trace.to_ascii_lowercase(),
        parent_span_id: Some(span.to_ascii_lowercase()),
        sampled: flags & 1 == 1,
    })
}

fn normalize_b3_trace_id(value: &str) -> Option<String> {
    let value = value.trim();
    if is_id(value, 32) {
        Some(value.to_ascii_lowercase())
    } else if is_id(value, 16) {
        // 64-bit B3 ids are left-padded to W3C's 128 bits.
        Some(format!("{:0>32}", value.to_ascii_lowercase()))
    } else {
        None
    }
}

/// `b3: {trace}-{span}[-{sampled}[-{parent}]]`; a lone `0`/`1`/`d` carries no ids.
fn parse_b3_single(value: &str) -> Option<Incoming> {
    let mut parts = value.trim().split('-');
    let trace_id = normalize_b3_trace_id(parts.next()?)?;
    let parent_span_id = Some(span_id(parts.next()?)?);
    let sampled = parts.next() != Some("0");
    Some(Incoming {
        format: TraceFormat::B3,
        trace_id,
        parent_span_id,
        sampled,
    })
}

#[cfg(feature = "trace-ids")]
mod context;
#[cfg(feature = "trace-ids")]
pub use context::TraceContext;

#[cfg(test)]
mod tests {
    use super::*;

    fn from(headers: &[(&str, &str)]) -> Option<Incoming> {
        incoming(|name| headers.iter().find(|(k, _)| *k == name).map(|(_, v)| *v))
    }

    #[test]
    fn reads_w3c() {
        let found = from(&[(
            "traceparent",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        )])
        .unwrap();
        assert_eq!(found.format, TraceFormat::W3c);
        assert_eq!(found.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(found.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert!(found.sampled);
        let unsampled = from(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )]);
        assert!(!unsampled.unwrap().sampled);
        // A later version may add fields.
        assert!(
            from(&[(
                "traceparent",
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"
            )])
            .is_some()
        );
    }

    #[test]
    fn reads_b3_single_and_multi() {
        let single =
            from(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")]).unwrap();
        assert_eq!(single.format, TraceFormat::B3);
        assert_eq!(single.trace_id, "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(single.parent_span_id.as_deref(), Some("e457b5a2e4d86bd1"));
        assert!(single.sampled);
        let denied = from(&[("b3", "a3ce929d0e0e4736-e457b5a2e4d86bd1-0")]).unwrap();
        assert_eq!(denied.trace_id, "0000000000000000a3ce929d0e0e4736");
        assert!(!denied.sampled);
        let multi = from(&[
            ("x-b3-traceid", "463AC35C9F6413AD"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-sampled", "0"),
        ])
        .unwrap();
        assert_eq!(multi.trace_id, "0000000000000000463ac35c9f6413ad");
        assert_eq!(multi.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert!(!multi.sampled);
        let bare = from(&[("x-b3-traceid", "463ac35c9f6413ad")]).unwrap();
        assert_eq!(bare.parent_span_id, None);
        assert!(bare.sampled);
    }

    #[test]
    fn w3c_wins_over_b3() {
        let both = from(&[
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ]);
        assert_eq!(both.unwrap().format, TraceFormat::W3c);
    }

    #[test]
    fn ignores_invalid_contexts() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-x1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(from(&[("traceparent", bad)]), None, "{bad}");
        }
        for bad in [
            "1",
            "0",
            "d",
            "80f198ee56343ba864fe8b2a57d3eff7",
            "x-e457b5a2e4d86bd1",
        ] {
            assert_eq!(from(&[("b3", bad)]), None, "{bad}");
        }
        assert_eq!(from(&[("x-b3-traceid", "0000000000000000")]), None);
    }
}
