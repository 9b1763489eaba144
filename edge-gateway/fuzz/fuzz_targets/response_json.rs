//! Upstream answers → REST responses, as `proxy::rest` renders them: arbitrary bytes as
//! a route's response message (`transcode::decode_response`), then proto3 JSON
//! (`transcode::render_response`, honouring `response_body` and the JSON options) and the
//! `Location` header (`transcode::fill_location`).
//!
//! Invariants beyond "no panic":
//! - whatever decodes renders to valid JSON (or a typed decode error, which becomes a 500);
//! - rendered whole messages parse back as the same message (proto3 JSON round trip);
//! - a filled Location is the template with each placeholder replaced by a non-empty,
//!   percent-encoded value: no `{`, `}`, `/` or `?` can come from the message.
#![no_main]

mod common;

use arbitrary::Arbitrary;
use edge_gateway::transcode::{self, JsonOptions};
use libfuzzer_sys::fuzz_target;
use prost_reflect::DynamicMessage;

#[derive(Debug, Arbitrary)]
struct Input {
    kitchen: bool,
    route: u8,
    use_proto_field_names: bool,
    emit_defaults: bool,
    int64_as_number: bool,
    location: Option<String>,
    bytes: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let api = common::api(input.kitchen);
    let routes = api.router.routes();
    let route = &routes[usize::from(input.route) % routes.len()];
    let output = route.output();
    let Ok(message) = transcode::decode_response(&output, &input.bytes) else {
        return;
    };
    let options = JsonOptions {
        use_proto_field_names: input.use_proto_field_names,
        emit_defaults: input.emit_defaults,
        int64_as_number: input.int64_as_number,
        ..JsonOptions::default()
    };
    let rendered = match transcode::render_response(route, &message, options) {
        Ok(rendered) => rendered,
        // Values proto3 JSON cannot express (e.g. a Timestamp out of range): a typed error.
        Err(error) => {
            assert_eq!(error.message, output.full_name());
            return;
        }
    };
    let json: serde_json::Value =
        serde_json::from_slice(&rendered).expect("rendered JSON is valid");
    if route.response_body.is_none() {
        let reparsed = DynamicMessage::deserialize(output.clone(), json.clone())
            .unwrap_or_else(|e| panic!("{} does not parse back: {e}", json));
        assert_eq!(
            transcode::message_json(&reparsed, options).as_ref(),
            Ok(&json)
        );
    }
    if let Some(template) = input.location.as_deref().or(route.location.as_deref())
        && let Some(location) = transcode::fill_location(template, &message)
    {
        // Rebuild it placeholder by placeholder: literal text is kept, each value is non-empty
        // and made of unreserved characters and %XX escapes only.
        let mut rebuilt = String::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            rebuilt.push_str(&rest[..open]);
            let close = open + rest[open..].find('}').expect("filled, so closed");
            let value =
                transcode::fill_location(&format!("{{{}}}", &rest[open + 1..close]), &message)
                    .expect("each placeholder of a filled template fills");
            assert!(!value.is_empty());
            assert!(
                value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)),
                "{value:?} is not a percent-encoded path segment"
            );
            assert!(meshgate_wire::percent::decode_segment(&value, true).is_some());
            rebuilt.push_str(&value);
            rest = &rest[close + 1..];
        }
        rebuilt.push_str(rest);
        assert_eq!(location, rebuilt);
    }
});
