//! Field paths (`id`, `user.email`) and reading them from encoded messages, REST path
//! bindings, query strings and JSON bodies.

use meshgate_wire::percent;
use meshgate_wire::schema::{Kind, MessageId, Schema, json_name};

/// A dotted path of field names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    dotted: String,
    parts: Vec<String>,
    /// The parts in proto3 JSON's `lowerCamelCase`, and joined with dots (spelled once).
    camel_parts: Vec<String>,
    camel_dotted: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldPathError {
    #[error("field path {0:?} is empty or has an empty segment")]
    Syntax(String),
    #[error("field path {path:?}: {message} has no field {segment:?}")]
    UnknownField {
        path: String,
        message: String,
        segment: String,
    },
    #[error("field path {path:?}: {segment:?} is not a message, cannot descend")]
    NotAMessage { path: String, segment: String },
    #[error("field path {0:?} does not end at a singular scalar field")]
    NotScalar(String),
}

impl FieldPath {
    pub fn parse(dotted: &str) -> Result<Self, FieldPathError> {
        let parts: Vec<String> = dotted.split('.').map(str::to_owned).collect();
        let valid = parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        if !valid {
            return Err(FieldPathError::Syntax(dotted.to_owned()));
        }
        let camel_parts: Vec<String> = parts.iter().map(|p| json_name(p)).collect();
        Ok(Self {
            dotted: dotted.to_owned(),
            camel_dotted: camel_parts.join("."),
            camel_parts,
            parts,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.dotted
    }

    /// `user.email` → `user-email` (for header names).
    pub fn dashed(&self) -> String {
        self.parts.join("-").replace('_', "-").to_ascii_lowercase()
    }

    /// Checks that the path names a singular scalar field of `message`.
    pub fn validate(&self, schema: &Schema, message: MessageId) -> Result<(), FieldPathError> {
        let mut current = message;
        let last = self.parts.len().saturating_sub(1);
        for (i, segment) in self.parts.iter().enumerate() {
            let message = &schema.messages[current];
            let field =
                message
                    .field_or_json(segment)
                    .ok_or_else(|| FieldPathError::UnknownField {
                        path: self.dotted.clone(),
                        message: message.full_name.clone(),
                        segment: segment.clone(),
                    })?;
            let is_message = matches!(field.kind, Kind::Message(_) | Kind::Group(_));
            if i == last {
                if field.repeated || is_message {
                    return Err(FieldPathError::NotScalar(self.dotted.clone()));
                }
            } else {
                match field.kind {
                    Kind::Message(next) if !field.repeated => current = next,
                    _ => {
                        return Err(FieldPathError::NotAMessage {
                            path: self.dotted.clone(),
                            segment: segment.clone(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// The value in an encoded (and checked) `message`, as text; `None` when unset or not a
    /// scalar.
    pub fn read_message(
        &self,
        schema: &Schema,
        message: MessageId,
        bytes: &[u8],
    ) -> Option<String> {
        schema.read_text(message, bytes, &self.parts)
    }

    /// The value in a proto3-JSON body (accepts `lowerCamelCase` and the proto names).
    pub fn read_json(&self, json: &serde_json::Value) -> Option<String> {
        let mut current = json;
        for segment in &self.parts {
            let object = current.as_object()?;
            current = object
                .get(segment)
                .or_else(|| object.get(&json_name(segment)))?;
        }
        match current {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// [`FieldPath::read_json`] straight from the JSON text, without building a `Value`: only
    /// the objects on the path are looked into, everything else is skipped. `None` also for
    /// text that is not JSON.
    pub fn read_json_text(&self, text: &[u8]) -> Option<String> {
        self.read_json_text_from(0, text)
    }

    /// The path's value below its first field `field` (e.g. `email` of `user.email` below
    /// `user`), from the JSON text of that field's value: a REST body or answer that is one
    /// field of the message. `None` when the path does not start with `field`.
    pub fn read_json_text_below(&self, field: &str, text: &[u8]) -> Option<String> {
        self.read_json_text_from(self.parts_below(field)?, text)
    }

    /// How many leading parts are `field` (a dotted prefix of the path), when the path goes on
    /// below it.
    pub fn parts_below(&self, field: &str) -> Option<usize> {
        let rest = self.dotted.strip_prefix(field)?.strip_prefix('.')?;
        Some(self.parts.len() - rest.split('.').count())
    }

    /// [`FieldPath::read_json_text`] of the parts after the first `skip`.
    pub fn read_json_text_from(&self, skip: usize, text: &[u8]) -> Option<String> {
        self.read_json_text_checked(skip, text).ok().flatten()
    }

    /// [`FieldPath::read_json_text_from`], telling text that is not JSON (an error) from a
    /// value that is not there (`None`): the read goes through the whole text either way.
    pub fn read_json_text_checked(
        &self,
        skip: usize,
        text: &[u8],
    ) -> Result<Option<String>, serde_json::Error> {
        let mut reader = serde_json::Deserializer::from_slice(text);
        let seed = PathSeed {
            parts: self.parts.get(skip..).unwrap_or_default(),
            camel: self.camel_parts.get(skip..).unwrap_or_default(),
        };
        let value = serde::de::DeserializeSeed::deserialize(seed, &mut reader)?;
        reader.end()?;
        Ok(value)
    }

    /// The value among `path=value` pairs (REST path bindings or a query string).
    pub fn read_pairs(&self, pairs: &[(String, String)]) -> Option<String> {
        pairs
            .iter()
            .find(|(k, _)| *k == self.dotted || *k == self.camel_dotted)
            .map(|(_, v)| v.clone())
    }
}

/// Descends a JSON document along `parts` (or their `camel` spelling), as
/// [`FieldPath::read_json`] does on a `Value`: an exact key wins over its camel spelling, the
/// last of duplicate keys wins, and only a string, number or bool at the end is a value.
struct PathSeed<'a> {
    parts: &'a [String],
    camel: &'a [String],
}

impl<'de> serde::de::DeserializeSeed<'de> for PathSeed<'_> {
    type Value = Option<String>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<String>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for PathSeed<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde::de::IgnoredAny;
        let (Some((part, rest)), Some((camel, camel_rest))) =
            (self.parts.split_first(), self.camel.split_first())
        else {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(None);
        };
        let (mut exact, mut camel_found) = (None, None);
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let next = || PathSeed {
                parts: rest,
                camel: camel_rest,
            };
            if *key == **part {
                exact = Some(map.next_value_seed(next())?);
            } else if *key == **camel {
                camel_found = Some(map.next_value_seed(next())?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(exact.or(camel_found).flatten())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.parts.is_empty().then(|| v.to_owned()))
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(self.parts.is_empty().then(|| v.to_string()))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(self.parts.is_empty().then(|| v.to_string()))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(self.parts.is_empty().then(|| v.to_string()))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
        // serde_json's own spelling of the number, as `Value` would give it.
        Ok(self
            .parts
            .is_empty()
            .then(|| serde_json::Number::from_f64(v).map(|n| n.to_string()))
            .flatten())
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// The decoded `key=value` pairs of a request path's query string (`+` is a space, as forms
/// send it). A pair with a malformed escape is skipped: the gateway refuses such a request.
pub fn query_pairs(path: &str) -> Vec<(String, String)> {
    let Some(query) = percent::query_of(path) else {
        return Vec::new();
    };
    percent::query_pairs(query)
        .filter_map(|(name, value)| {
            Some((
                percent::decode_query_component(name)?,
                percent::decode_query_component(value)?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    #[test]
    fn json_text_reads_what_the_value_reads() {
        let documents = [
            r#"{"user":{"id":"u1","email":"a@x","age":36,"ratio":0.5,"big":1e21,"ok":true}}"#,
            r#"{"user":{"createdAt":"t1","created_at":"t2"}}"#,
            r#"{"user":{"createdAt":"t1"},"user":{"createdAt":"t3"}}"#,
            r#"{"user":{"id":null,"email":["a"],"name":{"x":1}}}"#,
            r#"{"user":[{"id":"in-array"}],"id":"top"}"#,
            r#"{"user":{"id":"u1"},"user":{"email":"later"}}"#,
            r#"["not", "an", "object"]"#,
            r#""just a string""#,
            "{}",
        ];
        let paths = [
            "id",
            "user.id",
            "user.email",
            "user.age",
            "user.ratio",
            "user.big",
            "user.ok",
            "user.created_at",
            "user.name",
            "user.missing.deeper",
        ];
        for document in documents {
            let value: serde_json::Value = serde_json::from_str(document).unwrap();
            for path in paths {
                let path = FieldPath::parse(path).unwrap();
                assert_eq!(
                    path.read_json_text(document.as_bytes()),
                    path.read_json(&value),
                    "{} in {document}",
                    path.as_str()
                );
            }
        }
        let path = FieldPath::parse("id").unwrap();
        assert_eq!(path.read_json_text(br#"{"id":"x""#), None, "truncated");
        assert_eq!(path.read_json_text(br#"{"id":"x"} trailing"#), None);
    }
    use crate::catalog::Catalog;

    fn schema() -> Schema {
        Catalog::load(None).unwrap().schema().clone()
    }

    fn message(schema: &Schema, name: &str) -> MessageId {
        schema
            .messages
            .iter()
            .position(|m| m.full_name == name)
            .unwrap()
    }

    #[test]
    fn parses_and_dashes_paths() {
        let path = FieldPath::parse("user.email").unwrap();
        assert_eq!(path.dashed(), "user-email");
        assert_eq!(
            FieldPath::parse("created_at").unwrap().dashed(),
            "created-at"
        );
        for bad in ["", "a..b", ".a", "a.", "a-b"] {
            assert!(FieldPath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validates_against_descriptors() {
        let schema = schema();
        let response = message(&schema, "user.GetUserResponse");
        let validate =
            |path: &str, message| FieldPath::parse(path).unwrap().validate(&schema, message);
        validate("user.email", response).unwrap();
        // JSON names are accepted as well.
        validate("user.createdAt", response).unwrap();
        assert_eq!(
            validate("user.phone", response),
            Err(FieldPathError::UnknownField {
                path: "user.phone".into(),
                message: "user.User".into(),
                segment: "phone".into()
            })
        );
        assert!(matches!(
            validate("user", response),
            Err(FieldPathError::NotScalar(_))
        ));
        assert!(matches!(
            validate("message.x", response),
            Err(FieldPathError::NotAMessage { .. })
        ));
        let list = message(&schema, "user.ListUsersResponse");
        assert!(matches!(
            validate("users.email", list),
            Err(FieldPathError::NotAMessage { .. })
        ));
        assert!(matches!(
            validate("users", list),
            Err(FieldPathError::NotScalar(_))
        ));
    }

    #[test]
    fn reads_nested_fields_from_decoded_messages() {
        let response = meshgate_proto::user::GetUserResponse {
            user: Some(meshgate_proto::user::User {
                id: "u1".into(),
                email: "ada@example.com".into(),
                age: 36,
                ..Default::default()
            }),
            message: String::new(),
        };
        let schema = schema();
        let id = message(&schema, "user.GetUserResponse");
        let bytes = response.encode_to_vec();
        schema.check(id, &bytes).unwrap();
        let read = |p: &str| {
            FieldPath::parse(p)
                .unwrap()
                .read_message(&schema, id, &bytes)
        };
        assert_eq!(read("user.email").as_deref(), Some("ada@example.com"));
        assert_eq!(read("user.age").as_deref(), Some("36"));
        assert_eq!(
            read("user.name"),
            None,
            "unset proto3 scalar reads as absent"
        );
        assert_eq!(read("message"), None);
        assert_eq!(read("nope.x"), None);
    }

    #[test]
    fn reads_json_pairs_and_queries() {
        let json = serde_json::json!({"user": {"email": "a@b"}, "createdAt": 5, "ok": true});
        assert_eq!(
            FieldPath::parse("user.email")
                .unwrap()
                .read_json(&json)
                .as_deref(),
            Some("a@b")
        );
        assert_eq!(
            FieldPath::parse("created_at")
                .unwrap()
                .read_json(&json)
                .as_deref(),
            Some("5")
        );
        assert_eq!(FieldPath::parse("user").unwrap().read_json(&json), None);
        assert_eq!(
            query_pairs("/v1/users?bad=100%&page=3"),
            vec![("page".to_owned(), "3".to_owned())]
        );
        let query = query_pairs("/v1/users?page=2&name=a+b%21&flag");
        assert_eq!(
            query,
            vec![
                ("page".to_owned(), "2".to_owned()),
                ("name".to_owned(), "a b!".to_owned()),
                ("flag".to_owned(), String::new())
            ]
        );
        assert_eq!(
            FieldPath::parse("page")
                .unwrap()
                .read_pairs(&query)
                .as_deref(),
            Some("2")
        );
    }
}
