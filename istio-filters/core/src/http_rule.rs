//! `google.api.http` path templates: parsing and matching.
//!
//! ```text
//! Template = "/" Segments [ ":" Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! ```
//! A variable without a pattern matches one segment (`*`). Matching yields the variable
//! bindings (field path → percent-decoded value), which is how REST path parameters become
//! request message fields.

use percent_encoding::percent_decode_str;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    One,
    /// `**`: zero or more segments.
    Many,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Variable {
    field_path: String,
    /// Index range of the variable's segments in `PathTemplate::segments`.
    start: usize,
    end: usize,
}

/// A compiled path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    source: String,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    verb: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid path template {template:?}: {reason}")]
pub struct TemplateError {
    pub template: String,
    pub reason: &'static str,
}

impl PathTemplate {
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let fail = |reason| TemplateError {
            template: template.to_owned(),
            reason,
        };
        let body = template
            .strip_prefix('/')
            .ok_or_else(|| fail("must start with '/'"))?;
        // The verb follows the last ':' that is outside braces.
        let (body, verb) = split_verb(body);
        let mut segments = Vec::new();
        let mut variables = Vec::new();
        for raw in split_outside_braces(body) {
            if let Some(inner) = raw.strip_prefix('{') {
                let inner = inner
                    .strip_suffix('}')
                    .ok_or_else(|| fail("unclosed '{'"))?;
                let (field_path, pattern) = match inner.split_once('=') {
                    Some((path, pattern)) => (path, pattern),
                    None => (inner, "*"),
                };
                if field_path.is_empty()
                    || !field_path.split('.').all(|p| {
                        !p.is_empty() && p.chars().all(|c| c.is_alphanumeric() || c == '_')
                    })
                {
                    return Err(fail("bad variable field path"));
                }
                let start = segments.len();
                for part in pattern.split('/') {
                    segments.push(parse_plain(part).ok_or_else(|| fail("bad variable pattern"))?);
                }
                variables.push(Variable {
                    field_path: field_path.to_owned(),
                    start,
                    end: segments.len(),
                });
            } else {
                segments.push(parse_plain(raw).ok_or_else(|| fail("bad segment"))?);
            }
        }
        if segments.iter().filter(|s| **s == Segment::Many).count() > 1 {
            return Err(fail("at most one '**'"));
        }
        Ok(Self {
            source: template.to_owned(),
            segments,
            variables,
            verb: verb.map(str::to_owned),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Matches a request path (query string ignored); returns the variable bindings.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let body = path.strip_prefix('/')?;
        let body = match &self.verb {
            Some(verb) => body.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => body,
        };
        let parts: Vec<&str> = if body.is_empty() {
            Vec::new()
        } else {
            body.split('/').collect()
        };
        // spans[i] = the request parts matched by template segment i.
        let mut spans = vec![(0usize, 0usize); self.segments.len()];
        if !match_from(&self.segments, 0, &parts, 0, &mut spans) {
            return None;
        }
        let bindings = self
            .variables
            .iter()
            .map(|var| {
                let from = spans.get(var.start).map_or(0, |s| s.0);
                let to = var
                    .end
                    .checked_sub(1)
                    .and_then(|last| spans.get(last))
                    .map_or(from, |s| s.1);
                let raw = parts.get(from..to).unwrap_or_default().join("/");
                let value = percent_decode_str(&raw).decode_utf8_lossy().into_owned();
                (var.field_path.clone(), value)
            })
            .collect();
        Some(bindings)
    }
}

fn match_from(
    segments: &[Segment],
    si: usize,
    parts: &[&str],
    pi: usize,
    spans: &mut [(usize, usize)],
) -> bool {
    let Some(segment) = segments.get(si) else {
        return pi == parts.len();
    };
    match segment {
        Segment::Literal(lit) => {
            if parts.get(pi) == Some(&lit.as_str()) {
                spans[si] = (pi, pi + 1);
                match_from(segments, si + 1, parts, pi + 1, spans)
            } else {
                false
            }
        }
        Segment::One => {
            if parts.get(pi).is_some_and(|p| !p.is_empty()) {
                spans[si] = (pi, pi + 1);
                match_from(segments, si + 1, parts, pi + 1, spans)
            } else {
                false
            }
        }
        Segment::Many => {
            // Greedy, backing off: '**' is usually last so this is one pass.
            for end in (pi..=parts.len()).rev() {
                spans[si] = (pi, end);
                if match_from(segments, si + 1, parts, end, spans) {
                    return true;
                }
            }
            false
        }
    }
}

fn parse_plain(raw: &str) -> Option<Segment> {
    match raw {
        "*" => Some(Segment::One),
        "**" => Some(Segment::Many),
        "" => None,
        lit if lit.contains(['{', '}', '=']) => None,
        lit => Some(Segment::Literal(lit.to_owned())),
    }
}

fn split_verb(body: &str) -> (&str, Option<&str>) {
    let mut depth = 0i32;
    let mut colon = None;
    for (i, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ':' if depth == 0 => colon = Some(i),
            _ => {}
        }
    }
    match colon {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    }
}

fn split_outside_braces(body: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            '/' if depth == 0 => {
                out.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&body[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(template: &str, path: &str) -> Option<Vec<(String, String)>> {
        PathTemplate::parse(template).unwrap().matches(path)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn literal_and_single_variable() {
        assert_eq!(bind("/v1/users", "/v1/users"), Some(vec![]));
        assert_eq!(bind("/v1/users", "/v1/users/x"), None);
        assert_eq!(
            bind("/v1/users/{id}", "/v1/users/abc?x=1"),
            Some(pairs(&[("id", "abc")]))
        );
        assert_eq!(bind("/v1/users/{id}", "/v1/users"), None);
        assert_eq!(bind("/v1/users/{id}", "/v1/users/"), None);
        assert_eq!(bind("/v1/users/{id}", "/v1/users/a/b"), None);
    }

    #[test]
    fn percent_decodes_bindings() {
        assert_eq!(
            bind("/v1/users/{id}", "/v1/users/a%20b"),
            Some(pairs(&[("id", "a b")]))
        );
    }

    #[test]
    fn nested_field_paths_and_patterns() {
        assert_eq!(
            bind(
                "/v1/{name=shelves/*}/books/{book.id}",
                "/v1/shelves/s1/books/b2"
            ),
            Some(pairs(&[("name", "shelves/s1"), ("book.id", "b2")]))
        );
        assert_eq!(
            bind("/v1/{name=files/**}", "/v1/files/a/b/c"),
            Some(pairs(&[("name", "files/a/b/c")]))
        );
        assert_eq!(
            bind("/v1/{name=files/**}", "/v1/files"),
            Some(pairs(&[("name", "files")]))
        );
        assert_eq!(bind("/v1/*/x", "/v1/anything/x"), Some(vec![]));
    }

    #[test]
    fn verbs() {
        assert_eq!(
            bind("/v1/users/{id}:undelete", "/v1/users/7:undelete"),
            Some(pairs(&[("id", "7")]))
        );
        assert_eq!(bind("/v1/users/{id}:undelete", "/v1/users/7"), None);
    }

    #[test]
    fn rejects_bad_templates() {
        for bad in [
            "v1/users",
            "/v1/{id",
            "/v1//x",
            "/v1/{=x}",
            "/v1/**/**",
            "/v1/{a b}",
        ] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
