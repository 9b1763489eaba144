//! Shared by the targets: the two descriptor pools and their routers, and a renderer that turns
//! a path template plus arbitrary values into a request path together with the bindings the
//! matcher must return for it (the oracle for template matching).
#![allow(dead_code)]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use edge_gateway::validate::Validators;
use meshgate_wire::path_template::{PathTemplate, Segment};
use meshgate_wire::routes::Router;
use prost_reflect::DescriptorPool;

use meshgate_test_support::kitchen::DESCRIPTOR_SET as KITCHEN_DESCRIPTOR;

/// The real contract (`proto/user.proto`) and the gateway's test proto (every field kind and
/// HttpRule shape), each with its router.
pub struct Api {
    pub pool: DescriptorPool,
    pub router: Router,
    /// The `buf.validate` rules of the pool, as the gateway checks them.
    pub validators: Validators,
}

pub fn apis() -> &'static [Api; 2] {
    static APIS: OnceLock<[Api; 2]> = OnceLock::new();
    APIS.get_or_init(|| {
        let contract = meshgate_proto::descriptor_pool().clone();
        let kitchen =
            DescriptorPool::decode(KITCHEN_DESCRIPTOR).expect("build.rs encodes a valid set");
        [contract, kitchen].map(|pool| Api {
            router: Router::from_pool(&pool).expect("the routes of both protos build"),
            validators: Validators::from_pool(&pool).expect("the rules of both protos compile"),
            pool,
        })
    })
}

pub fn api(pick: bool) -> &'static Api {
    &apis()[usize::from(pick)]
}

/// Percent-encodes every byte outside RFC 3986's unreserved set, as a client expanding a
/// template would.
pub fn encode_segment(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Values for the wildcards of a template, consumed in order.
#[derive(Debug, Arbitrary)]
pub struct Fill {
    /// One value per `*` (an empty one is replaced: `*` never matches an empty segment).
    pub singles: Vec<String>,
    /// The segments that `**` expands to.
    pub multi: Vec<String>,
}

/// Renders a request path matching `template`, and the bindings the HttpRule spec says the
/// gateway must extract from it: a single-segment variable is fully percent-decoded; a
/// multi-segment one (`{x=a/*}`, `{x=**}`) keeps `%2F` encoded inside each segment.
pub fn render(template: &PathTemplate, fill: &Fill) -> (String, Vec<(String, String)>) {
    let mut singles = fill.singles.iter();
    // Raw (decoded) value of each template position; `**` may cover several.
    let mut raw: Vec<Vec<String>> = Vec::with_capacity(template.segments.len());
    for segment in &template.segments {
        raw.push(match segment {
            Segment::Literal(literal) => vec![literal.clone()],
            Segment::Single => {
                let value = singles.next().map(String::as_str).unwrap_or("");
                vec![if value.is_empty() {
                    "x".to_owned()
                } else {
                    value.to_owned()
                }]
            }
            Segment::Multi => fill.multi.clone(),
        });
    }
    let parts: Vec<String> = raw.iter().flatten().map(|s| encode_segment(s)).collect();
    let mut path = format!("/{}", parts.join("/"));
    if let Some(verb) = &template.verb {
        path.push(':');
        path.push_str(verb);
    }
    let bindings = template
        .variables
        .iter()
        .map(|variable| {
            let covered = &raw[variable.start..variable.end];
            let single_segment = variable.end - variable.start == 1
                && template.segments[variable.start] != Segment::Multi;
            let value = if single_segment {
                covered[0][0].clone()
            } else {
                covered
                    .iter()
                    .flatten()
                    .map(|s| s.replace('/', "%2F"))
                    .collect::<Vec<_>>()
                    .join("/")
            };
            (variable.field_path.clone(), value)
        })
        .collect();
    (path, bindings)
}
