//! The REST route matcher: `Router::lookup` on arbitrary methods and paths (what every REST
//! request goes through, and the static-file fallback too), `PathTemplate::parse` on arbitrary
//! templates with a match oracle, and `percent::decode_segment` against a strict reference.
//!
//! Invariants beyond "no panic":
//! - lookup agrees with the route table: it returns the first route (most specific first) whose
//!   template matches and whose method is the request's, with that template's bindings; 405
//!   lists exactly the other methods whose templates match, sorted, without duplicates; 404
//!   means no template matches;
//! - a parsed template prints back as its source and re-parses to the same template;
//! - a path rendered from a template matches it, with the bindings the HttpRule spec defines;
//! - `decode_segment` accepts exactly the strings whose every `%` starts a two-hex-digit escape
//!   (and whose result is UTF-8), and decodes them as the reference does.
#![no_main]

mod common;

use arbitrary::Arbitrary;
use http::Method;
use libfuzzer_sys::fuzz_target;
use meshgate_wire::path_template::PathTemplate;
use meshgate_wire::percent::decode_segment;
use meshgate_wire::routes::RouteMiss;

#[derive(Debug, Arbitrary)]
enum Input {
    Lookup {
        kitchen: bool,
        method: MethodPick,
        path: String,
    },
    Template {
        template: String,
        fill: common::Fill,
    },
    PercentDecode {
        text: String,
        decode_slash: bool,
    },
}

#[derive(Debug, Arbitrary)]
enum MethodPick {
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Other(String),
}

fn method(pick: &MethodPick) -> Method {
    match pick {
        MethodPick::Get => Method::GET,
        MethodPick::Post => Method::POST,
        MethodPick::Put => Method::PUT,
        MethodPick::Patch => Method::PATCH,
        MethodPick::Delete => Method::DELETE,
        MethodPick::Other(name) => Method::from_bytes(name.as_bytes()).unwrap_or(Method::OPTIONS),
    }
}

/// Strict reference: `%` must be followed by two hex digits.
fn reference_decode(text: &str, decode_slash: bool) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] != b'%' {
            out.push(bytes[index]);
            index += 1;
            continue;
        }
        let high = (*bytes.get(index + 1)? as char).to_digit(16)?;
        let low = (*bytes.get(index + 2)? as char).to_digit(16)?;
        let value = (high * 16 + low) as u8;
        if value == b'/' && !decode_slash {
            out.extend_from_slice(&bytes[index..index + 3]);
        } else {
            out.push(value);
        }
        index += 3;
    }
    String::from_utf8(out).ok()
}

fuzz_target!(|input: Input| match input {
    Input::Lookup {
        kitchen,
        method: pick,
        path,
    } => {
        let router = &common::api(kitchen).router;
        let method = method(&pick);
        let matching: Vec<_> = router
            .routes()
            .iter()
            .filter_map(|route| Some((route, route.template.matches(&path)?)))
            .collect();
        match router.lookup(&method, &path) {
            Ok((route, bindings)) => {
                let (first, expected) = matching
                    .iter()
                    .find(|(route, _)| route.http_method == method)
                    .expect("a route was found, so one matches");
                assert!(
                    std::sync::Arc::ptr_eq(&route, first),
                    "{path}: not the first match"
                );
                assert_eq!(&bindings, expected);
                let paths: Vec<&str> = route.template.field_paths().collect();
                assert_eq!(
                    bindings.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
                    paths
                );
            }
            Err(RouteMiss::NotFound) => assert!(matching.is_empty(), "{path}: matches exist"),
            Err(RouteMiss::MethodNotAllowed(allow)) => {
                let mut expected: Vec<Method> = matching
                    .iter()
                    .map(|(route, _)| route.http_method.clone())
                    .collect();
                expected.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                expected.dedup();
                assert!(!expected.contains(&method));
                assert_eq!(allow, expected, "{path}");
            }
        }
    }
    Input::Template { template, fill } => {
        let Ok(parsed) = PathTemplate::parse(&template) else {
            return;
        };
        assert_eq!(parsed.to_string(), template);
        assert_eq!(
            PathTemplate::parse(&parsed.to_string()).as_ref(),
            Ok(&parsed)
        );
        for variable in &parsed.variables {
            assert!(variable.start < variable.end && variable.end <= parsed.segments.len());
        }
        let (path, expected) = common::render(&parsed, &fill);
        assert_eq!(
            parsed.matches(&path),
            Some(expected),
            "template {template:?}, path {path:?}"
        );
    }
    Input::PercentDecode { text, decode_slash } => {
        assert_eq!(
            decode_segment(&text, decode_slash).map(|decoded| decoded.into_owned()),
            reference_decode(&text, decode_slash),
            "{text:?}"
        );
    }
});
