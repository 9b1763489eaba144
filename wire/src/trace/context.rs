//! A proxy's own span in the request's trace: the incoming context continued, or a new trace.

use rand::Rng;

use super::incoming;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lower-case hex digits.
    pub trace_id: String,
    /// The proxy's own span (16 hex digits).
    pub span_id: String,
    /// The caller's span, if any.
    pub parent_span_id: Option<String>,
    pub sampled: bool,
}

/// `N` random bytes as lower-case hex (one allocation; this runs on every request).
fn random_hex<const N: usize>() -> String {
    let bytes: [u8; N] = rand::rng().random();
    let mut hex = String::new();
    crate::hex::push_hex(&mut hex, &bytes);
    hex
}

impl TraceContext {
    /// Continues the incoming trace, or starts one. `header` looks up a request header.
    pub fn from_headers<'a>(header: impl Fn(&str) -> Option<&'a str>) -> Self {
        let span_id = random_hex::<8>();
        match incoming(header) {
            Some(found) => Self {
                trace_id: found.trace_id,
                span_id,
                parent_span_id: found.parent_span_id,
                sampled: found.sampled,
            },
            None => Self {
                trace_id: random_hex::<16>(),
                span_id,
                parent_span_id: None,
                sampled: true,
            },
        }
    }

    /// A per-request header value, marked never-indexed: it changes on every request, so
    /// adding it to HPACK's dynamic table only evicts the entries that do repeat.
    pub fn unindexed(value: &str) -> Option<http::HeaderValue> {
        let mut value = http::HeaderValue::from_str(value).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{}",
            self.trace_id,
            self.span_id,
            if self.sampled { "01" } else { "00" }
        )
    }

    /// Headers to send upstream (W3C and B3 multi-header).
    pub fn upstream_headers(&self) -> [(&'static str, String); 4] {
        [
            ("traceparent", self.traceparent()),
            ("x-b3-traceid", self.trace_id.clone()),
            ("x-b3-spanid", self.span_id.clone()),
            (
                "x-b3-sampled",
                if self.sampled { "1" } else { "0" }.to_owned(),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_id(s: &str, len: usize) -> bool {
        super::super::is_id(s, len)
    }

    #[test]
    fn fresh_ids_are_lower_case_hex_of_the_right_length() {
        let fresh = TraceContext::from_headers(|_| None);
        assert!(is_id(&fresh.trace_id, 32), "{}", fresh.trace_id);
        assert!(is_id(&fresh.span_id, 16), "{}", fresh.span_id);
        assert!(!fresh.trace_id.bytes().any(|b| b.is_ascii_uppercase()));
        assert_ne!(fresh.span_id, TraceContext::from_headers(|_| None).span_id);
    }

    #[test]
    fn per_request_values_are_never_indexed() {
        let value =
            TraceContext::unindexed("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
                .expect("a valid header value");
        assert!(value.is_sensitive());
        assert!(TraceContext::unindexed("bad\nvalue").is_none());
    }

    fn ctx(headers: &[(&str, &str)]) -> TraceContext {
        TraceContext::from_headers(|name| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v))
    }

    #[test]
    fn continues_w3c() {
        let c = ctx(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]);
        assert_eq!(c.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_ne!(c.span_id, "00f067aa0ba902b7");
        assert!(
            c.traceparent()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
    }

    #[test]
    fn continues_b3_single_and_multi() {
        let single = ctx(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")]);
        assert_eq!(single.trace_id, "80f198ee56343ba864fe8b2a57d3eff7");
        let multi = ctx(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-sampled", "0"),
        ]);
        assert_eq!(multi.trace_id, "0000000000000000a3ce929d0e0e4736");
        assert!(!multi.sampled);
        assert!(multi.traceparent().ends_with("-00"));
        let upstream = multi.upstream_headers();
        assert_eq!(upstream[1], ("x-b3-traceid", multi.trace_id.clone()));
        assert_eq!(upstream[3], ("x-b3-sampled", "0".to_owned()));
    }

    #[test]
    fn invalid_context_starts_a_new_trace() {
        let c = ctx(&[(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        )]);
        assert_eq!(c.parent_span_id, None);
        assert_eq!(c.trace_id.len(), 32);
        assert!(c.trace_id != "00000000000000000000000000000000");
    }
}
