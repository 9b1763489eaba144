//! `google.api.http` path templates: parsing and matching.
//!
//! Grammar (google/api/http.proto):
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! FieldPath = IDENT { "." IDENT } ;
//! Verb     = ":" LITERAL ;
//! ```
//! A template is flattened into segment matchers plus variable spans over them, so matching is
//! a single pass over the request path's segments. `**` must be the last segment (the spec's
//! rule), and a variable is bound at most once.

use std::fmt;

use crate::percent::decode_segment;

/// One position of the flattened template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    Single,
    /// `**`: zero or more segments; only allowed last.
    Multi,
}

/// A variable binding covering `segments[start..end]` (end is exclusive; for a trailing `**`
/// the span extends to the end of the request path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    /// Dotted field path, e.g. `user.id`.
    pub field_path: String,
    pub start: usize,
    pub end: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    pub segments: Vec<Segment>,
    pub variables: Vec<Variable>,
    pub verb: Option<String>,
    source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid path template {template:?}: {reason}")]
pub struct TemplateError {
    pub template: String,
    pub reason: String,
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
}

impl PathTemplate {
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let error = |reason: &str| TemplateError {
            template: template.to_owned(),
            reason: reason.to_owned(),
        };
        let Some(rest) = template.strip_prefix('/') else {
            return Err(error("must start with '/'"));
        };
        // The verb is the suffix after the last ':' that is outside of any `{}`.
        let (body, verb) = split_verb(rest);
        if let Some(verb) = verb
            && (verb.is_empty() || verb.contains(['/', '{', '}']))
        {
            return Err(error("invalid verb"));
        }
        let mut parser = Parser {
            input: body.as_bytes(),
            pos: 0,
            segments: Vec::new(),
            variables: Vec::new(),
        };
        parser.segments(false).map_err(|reason| error(&reason))?;
        if parser.pos != parser.input.len() {
            return Err(error(&format!(
                "unexpected character at offset {}",
                parser.pos + 1
            )));
        }
        let Parser {
            segments,
            variables,
            ..
        } = parser;
        if let Some(index) = segments.iter().position(|s| *s == Segment::Multi)
            && index != segments.len() - 1
        {
            return Err(error("'**' must be the last segment"));
        }
        // A handful of variables: a scan, not a HashSet (whose random seed would be one more
        // import for the .wasm modules).
        for (index, variable) in variables.iter().enumerate() {
            if variables[..index]
                .iter()
                .any(|earlier| earlier.field_path == variable.field_path)
            {
                return Err(error(&format!(
                    "variable {} bound twice",
                    variable.field_path
                )));
            }
        }
        Ok(Self {
            segments,
            variables,
            verb: verb.map(str::to_owned),
            source: template.to_owned(),
        })
    }

    /// Matches a request path (a query string or fragment is ignored). Returns the variable
    /// bindings, percent-decoded: a single-segment variable fully, a multi-segment one with
    /// `%2F` kept encoded.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        // (A byte scan: a `char` pattern decodes every char, on every template a router tries.)
        let end = path
            .bytes()
            .position(|b| b == b'?' || b == b'#')
            .unwrap_or(path.len());
        let path = path.get(..end)?.strip_prefix('/')?;
        let path = match &self.verb {
            Some(verb) => path.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => path,
        };
        // Checked before anything is allocated: a router tries most templates of a method on
        // every request, and only one of them matches.
        let count = if path.is_empty() {
            0
        } else {
            path.bytes().filter(|&b| b == b'/').count() + 1
        };
        let has_multi = self.segments.last() == Some(&Segment::Multi);
        let fixed = self.segments.len() - usize::from(has_multi);
        if count < fixed || (!has_multi && count != fixed) {
            return None;
        }
        for (segment, part) in self.segments.iter().zip(path.split('/')) {
            match segment {
                Segment::Literal(literal) => {
                    // A segment without escapes is its own decoding.
                    let equal = if part.contains('%') {
                        decode_segment(part, true)? == literal.as_str()
                    } else {
                        part == literal
                    };
                    if !equal {
                        return None;
                    }
                }
                Segment::Single => {
                    if part.is_empty() {
                        return None;
                    }
                }
                Segment::Multi => {}
            }
        }
        // The segments of multi-segment variables, split once if there are any.
        let mut parts: Option<Vec<&str>> = None;
        let mut bindings = Vec::with_capacity(self.variables.len());
        for variable in &self.variables {
            let end = if variable.end == self.segments.len() && has_multi {
                count
            } else {
                variable.end
            };
            // Whether "%2F" decodes depends on the variable's template, not on how many
            // segments the request happened to bring: `{path=**}` keeps it encoded even when
            // it matches a single segment.
            let single_segment = variable.end - variable.start == 1
                && self.segments[variable.start] != Segment::Multi;
            let value = if single_segment {
                decode_segment(path.split('/').nth(variable.start)?, true)?.into_owned()
            } else {
                let parts = parts.get_or_insert_with(|| {
                    if path.is_empty() {
                        Vec::new()
                    } else {
                        path.split('/').collect()
                    }
                });
                // Multi-segment values keep '/' as the separator; an encoded "%2F" stays encoded
                // so the segments remain distinguishable (per the HttpRule spec).
                parts
                    .get(variable.start..end)?
                    .iter()
                    .map(|part| decode_segment(part, false))
                    .collect::<Option<Vec<_>>>()?
                    .join("/")
            };
            bindings.push((variable.field_path.clone(), value));
        }
        Some(bindings)
    }

    /// Whether a request path of `segments` segments ([`request_segments`]) can match: the
    /// router's cheap test before [`PathTemplate::matches`].
    pub fn accepts_segments(&self, segments: usize) -> bool {
        let has_multi = self.segments.last() == Some(&Segment::Multi);
        let fixed = self.segments.len() - usize::from(has_multi);
        segments == fixed || (has_multi && segments > fixed)
    }

    /// Higher is more specific: literals beat wildcards, fixed length beats `**`.
    pub fn specificity(&self) -> (usize, bool, usize) {
        let literals = self
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        let fixed = self.segments.last() != Some(&Segment::Multi);
        (literals, fixed, self.segments.len())
    }

    /// The field paths bound by the path.
    pub fn field_paths(&self) -> impl Iterator<Item = &str> {
        self.variables.iter().map(|v| v.field_path.as_str())
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

/// The segments of a request path as templates count them (a query or fragment ignored, a
/// verb part of the last segment); `None` when it does not start with `/`.
pub fn request_segments(path: &str) -> Option<usize> {
    let path = path.strip_prefix('/')?;
    let end = path
        .bytes()
        .position(|b| b == b'?' || b == b'#')
        .unwrap_or(path.len());
    let path = path.get(..end)?;
    Some(if path.is_empty() {
        0
    } else {
        path.bytes().filter(|&b| b == b'/').count() + 1
    })
}

fn split_verb(rest: &str) -> (&str, Option<&str>) {
    let mut depth = 0usize;
    let mut split = None;
    for (index, byte) in rest.bytes().enumerate() {
        match byte {
            b'{' => depth += 1,
            b'}' => depth = depth.saturating_sub(1),
            b':' if depth == 0 => split = Some(index),
            _ => {}
        }
    }
    match split {
        Some(index) => (&rest[..index], Some(&rest[index + 1..])),
        None => (rest, None),
    }
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn segments(&mut self, in_variable: bool) -> Result<(), String> {
        loop {
            self.segment(in_variable)?;
            if self.peek() == Some(b'/') {
                self.pos += 1;
            } else {
                return Ok(());
            }
        }
    }

    fn segment(&mut self, in_variable: bool) -> Result<(), String> {
        match self.peek() {
            Some(b'*') => {
                if self.input.get(self.pos + 1) == Some(&b'*') {
                    self.pos += 2;
                    self.segments.push(Segment::Multi);
                } else {
                    self.pos += 1;
                    self.segments.push(Segment::Single);
                }
                Ok(())
            }
            Some(b'{') => {
                if in_variable {
                    return Err("nested variables are not allowed".into());
                }
                self.pos += 1;
                let field_path = self.field_path()?;
                let start = self.segments.len();
                match self.peek() {
                    Some(b'=') => {
                        self.pos += 1;
                        self.segments(true)?;
                    }
                    _ => self.segments.push(Segment::Single),
                }
                if self.peek() != Some(b'}') {
                    return Err(format!("expected '}}' after variable {field_path}"));
                }
                self.pos += 1;
                self.variables.push(Variable {
                    field_path,
                    start,
                    end: self.segments.len(),
                });
                Ok(())
            }
            _ => {
                let start = self.pos;
                while let Some(byte) = self.peek() {
                    if matches!(byte, b'/' | b'{' | b'}' | b'*' | b'=') {
                        break;
                    }
                    self.pos += 1;
                }
                if self.pos == start {
                    return Err(format!("empty segment at offset {}", start + 1));
                }
                let literal = std::str::from_utf8(&self.input[start..self.pos])
                    .map_err(|_| "literal is not UTF-8".to_owned())?;
                let literal = decode_segment(literal, true).ok_or("bad percent-encoding")?;
                self.segments.push(Segment::Literal(literal.into_owned()));
                Ok(())
            }
        }
    }

    fn field_path(&mut self) -> Result<String, String> {
        let start = self.pos;
        while let Some(byte) = self.peek() {
            if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'.' {
                self.pos += 1;
            } else {
                break;
            }
        }
        let path = std::str::from_utf8(&self.input[start..self.pos]).unwrap_or_default();
        if path.is_empty() || path.split('.').any(|ident| ident.is_empty()) {
            return Err(format!("invalid field path at offset {}", start + 1));
        }
        Ok(path.to_owned())
    }
}

#[cfg(test)]
mod tests;
