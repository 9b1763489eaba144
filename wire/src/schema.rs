//! A compact schema of a `FileDescriptorSet`: messages with their fields (names, numbers,
//! types, presence), enums, and methods with their `google.api.http` and `meshgate.api.rest`
//! options; plus a protobuf wire reader that checks an encoded message against it and reads a
//! scalar at a field path. This is what the .wasm filters need of the descriptors, without a
//! reflection library: the set is decoded with `prost` into the few descriptor.proto fields
//! read here (extensions included, as the plain fields they are on the wire) and resolved once.
//!
//! Decoding follows what a reflecting decoder accepts: a known field on a wrong wire type, a
//! string that is not UTF-8, a truncated or overlong value is an error; unknown fields are
//! skipped. Reading follows proto3 semantics: the last value of a field wins, embedded messages
//! merge, and a field without presence reads as absent at its default value.

use std::collections::BTreeMap;

use base64::Engine as _;

use crate::routes::{
    FieldShape, HttpRuleSpec, MethodRules, RouteBuildError, RouterOf, RuleSource, Side,
};

/// The descriptor.proto fields read here (tags as in descriptor.proto).
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FileSet {
        #[prost(message, repeated, tag = "1")]
        pub file: Vec<File>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct File {
        #[prost(string, optional, tag = "2")]
        pub package: Option<String>,
        #[prost(message, repeated, tag = "4")]
        pub message_type: Vec<Message>,
        #[prost(message, repeated, tag = "5")]
        pub enum_type: Vec<Enum>,
        #[prost(message, repeated, tag = "6")]
        pub service: Vec<Service>,
        #[prost(message, repeated, tag = "7")]
        pub extension: Vec<Field>,
        #[prost(string, optional, tag = "12")]
        pub syntax: Option<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Message {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(message, repeated, tag = "2")]
        pub field: Vec<Field>,
        #[prost(message, repeated, tag = "3")]
        pub nested_type: Vec<Message>,
        #[prost(message, repeated, tag = "4")]
        pub enum_type: Vec<Enum>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Field {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub extendee: Option<String>,
        #[prost(int32, optional, tag = "3")]
        pub number: Option<i32>,
        #[prost(int32, optional, tag = "4")]
        pub label: Option<i32>,
        #[prost(int32, optional, tag = "5")]
        pub kind: Option<i32>,
        #[prost(string, optional, tag = "6")]
        pub type_name: Option<String>,
        #[prost(int32, optional, tag = "9")]
        pub oneof_index: Option<i32>,
        #[prost(string, optional, tag = "10")]
        pub json_name: Option<String>,
        #[prost(bool, optional, tag = "17")]
        pub proto3_optional: Option<bool>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Enum {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(message, repeated, tag = "2")]
        pub value: Vec<EnumValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EnumValue {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(int32, optional, tag = "2")]
        pub number: Option<i32>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Service {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(message, repeated, tag = "2")]
        pub method: Vec<Method>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Method {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub input_type: Option<String>,
        #[prost(string, optional, tag = "3")]
        pub output_type: Option<String>,
        #[prost(message, optional, tag = "4")]
        pub options: Option<MethodOptions>,
        #[prost(bool, optional, tag = "6")]
        pub server_streaming: Option<bool>,
    }

    /// `google.protobuf.MethodOptions` with the two extensions the routes read.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MethodOptions {
        #[prost(message, optional, tag = "72295728")]
        pub http: Option<HttpRule>,
        #[prost(message, optional, tag = "58201")]
        pub rest: Option<RestResponse>,
    }

    /// `google.api.HttpRule`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HttpRule {
        #[prost(string, optional, tag = "2")]
        pub get: Option<String>,
        #[prost(string, optional, tag = "3")]
        pub put: Option<String>,
        #[prost(string, optional, tag = "4")]
        pub post: Option<String>,
        #[prost(string, optional, tag = "5")]
        pub delete: Option<String>,
        #[prost(string, optional, tag = "6")]
        pub patch: Option<String>,
        #[prost(string, optional, tag = "7")]
        pub body: Option<String>,
        #[prost(message, optional, tag = "8")]
        pub custom: Option<CustomPattern>,
        #[prost(message, repeated, tag = "11")]
        pub additional_bindings: Vec<HttpRule>,
        #[prost(string, optional, tag = "12")]
        pub response_body: Option<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CustomPattern {
        #[prost(string, optional, tag = "1")]
        pub kind: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub path: Option<String>,
    }

    /// `meshgate.api.RestResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RestResponse {
        #[prost(uint32, optional, tag = "1")]
        pub success_code: Option<u32>,
        #[prost(string, optional, tag = "2")]
        pub location: Option<String>,
    }
}

/// `google.api.http` and `meshgate.api.rest`: (package, name, field number on MethodOptions).
const HTTP_EXTENSION: (&str, &str, i32) = ("google.api", "http", 72_295_728);
const REST_EXTENSION: (&str, &str, i32) = ("meshgate.api", "rest", 58_201);
const METHOD_OPTIONS: &str = ".google.protobuf.MethodOptions";

/// How deep embedded messages may nest in a decoded message (prost's limit).
const RECURSION_LIMIT: u32 = 100;

pub type MessageId = usize;
pub type EnumId = usize;
pub type MethodId = usize;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("{0}")]
    Decode(String),
    #[error("field {field}: type {type_name} is not in the set")]
    Unresolved { field: String, type_name: String },
    #[error("field {field}: unsupported type {kind}")]
    Kind { field: String, kind: i32 },
}

/// A field's type; messages and enums by their index in the [`Schema`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Double,
    Float,
    Int64,
    Uint64,
    Int32,
    Fixed64,
    Fixed32,
    Bool,
    String,
    Bytes,
    Uint32,
    Sfixed32,
    Sfixed64,
    Sint32,
    Sint64,
    Enum(EnumId),
    Message(MessageId),
    /// A proto2 group: skipped on reading, never a readable value.
    Group(MessageId),
}

#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub json_name: String,
    pub number: u32,
    pub kind: Kind,
    /// `repeated` (maps included).
    pub repeated: bool,
    /// Whether an explicit default value counts as set (proto2, proto3 `optional`, oneof
    /// members, messages); without it a default value reads as absent.
    pub presence: bool,
}

#[derive(Debug, Clone)]
pub struct Message {
    pub full_name: String,
    pub fields: Vec<Field>,
}

impl Message {
    /// A field by its proto name.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// A field by its proto name, else its JSON name.
    pub fn field_or_json(&self, name: &str) -> Option<&Field> {
        self.field(name)
            .or_else(|| self.fields.iter().find(|f| f.json_name == name))
    }

    fn field_by_number(&self, number: u32) -> Option<&Field> {
        self.fields.iter().find(|f| f.number == number)
    }
}

#[derive(Debug, Clone)]
pub struct Enum {
    /// (number, name); the first name of a number is its name.
    pub values: Vec<(i32, String)>,
}

#[derive(Debug, Clone)]
pub struct Method {
    /// `package.Service`.
    pub service: String,
    pub name: String,
    pub input: MessageId,
    pub output: MessageId,
    pub server_streaming: bool,
    /// The `google.api.http` rule and its additional bindings (empty: no REST route).
    pub rules: Vec<HttpRuleSpec>,
    /// `meshgate.api.rest`: success code (0: unset) and location.
    pub rest: Option<(u32, Option<String>)>,
}

impl Method {
    /// `package.Service/Method`.
    pub fn qualified_name(&self) -> String {
        format!("{}/{}", self.service, self.name)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Schema {
    pub messages: Vec<Message>,
    pub enums: Vec<Enum>,
    pub methods: Vec<Method>,
}

/// Names of messages and enums as declared, before their fields are resolved.
#[derive(Default)]
struct Names {
    types: BTreeMap<String, Kind>,
    /// (full name, the declaring file's syntax, the fields) of each message, by index.
    messages: Vec<(String, bool, Vec<proto::Field>)>,
}

impl Schema {
    /// Decodes an encoded `FileDescriptorSet` (imports included).
    pub fn decode(bytes: &[u8]) -> Result<Self, SchemaError> {
        let set = <proto::FileSet as prost::Message>::decode(bytes)
            .map_err(|e| SchemaError::Decode(e.to_string()))?;
        let mut schema = Self::default();
        let mut names = Names::default();
        let (mut has_http, mut has_rest) = (false, false);
        for file in &set.file {
            let package = file.package.as_deref().unwrap_or_default();
            let proto3 = file.syntax.as_deref() == Some("proto3");
            for message in &file.message_type {
                schema.declare_message(&mut names, package, message, proto3);
            }
            for e in &file.enum_type {
                schema.declare_enum(&mut names, package, e);
            }
            for extension in &file.extension {
                let declared = |(pkg, name, number): (&str, &str, i32)| {
                    package == pkg
                        && extension.name.as_deref() == Some(name)
                        && extension.number == Some(number)
                        && extension.extendee.as_deref() == Some(METHOD_OPTIONS)
                };
                has_http |= declared(HTTP_EXTENSION);
                has_rest |= declared(REST_EXTENSION);
            }
        }
        for (full_name, proto3, fields) in std::mem::take(&mut names.messages) {
            let fields = fields
                .iter()
                .map(|f| resolve_field(&names.types, &full_name, proto3, f))
                .collect::<Result<_, _>>()?;
            schema.messages.push(Message { full_name, fields });
        }
        for file in &set.file {
            let package = file.package.as_deref().unwrap_or_default();
            for service in &file.service {
                let service_name = qualify(package, service.name.as_deref().unwrap_or_default());
                for method in &service.method {
                    let name = method.name.clone().unwrap_or_default();
                    let message = |type_name: &Option<String>| {
                        let type_name = type_name.as_deref().unwrap_or_default();
                        match names.types.get(type_name.trim_start_matches('.')) {
                            Some(Kind::Message(id)) => Ok(*id),
                            _ => Err(SchemaError::Unresolved {
                                field: format!("{service_name}.{name}"),
                                type_name: type_name.to_owned(),
                            }),
                        }
                    };
                    let options = method.options.as_ref();
                    let rules = match options.and_then(|o| o.http.as_ref()) {
                        Some(rule) if has_http => std::iter::once(rule)
                            .chain(&rule.additional_bindings)
                            .map(rule_spec)
                            .collect(),
                        _ => Vec::new(),
                    };
                    let rest = options
                        .and_then(|o| o.rest.as_ref())
                        .filter(|_| has_rest)
                        .map(|r| (r.success_code.unwrap_or(0), r.location.clone()));
                    schema.methods.push(Method {
                        service: service_name.clone(),
                        input: message(&method.input_type)?,
                        output: message(&method.output_type)?,
                        server_streaming: method.server_streaming.unwrap_or(false),
                        name,
                        rules,
                        rest,
                    });
                }
            }
        }
        Ok(schema)
    }

    fn declare_message(
        &mut self,
        names: &mut Names,
        scope: &str,
        message: &proto::Message,
        proto3: bool,
    ) {
        let full_name = qualify(scope, message.name.as_deref().unwrap_or_default());
        names
            .types
            .insert(full_name.clone(), Kind::Message(names.messages.len()));
        names
            .messages
            .push((full_name.clone(), proto3, message.field.clone()));
        for nested in &message.nested_type {
            self.declare_message(names, &full_name, nested, proto3);
        }
        for e in &message.enum_type {
            self.declare_enum(names, &full_name, e);
        }
    }

    fn declare_enum(&mut self, names: &mut Names, scope: &str, e: &proto::Enum) {
        let full_name = qualify(scope, e.name.as_deref().unwrap_or_default());
        names.types.insert(full_name, Kind::Enum(self.enums.len()));
        self.enums.push(Enum {
            values: e
                .value
                .iter()
                .map(|v| (v.number.unwrap_or(0), v.name.clone().unwrap_or_default()))
                .collect(),
        });
    }

    /// A method by service (`package.Service`) and method name.
    pub fn method(&self, service: &str, method: &str) -> Option<MethodId> {
        self.methods
            .iter()
            .position(|m| m.name == method && m.service == service)
    }

    /// The REST routes of the methods' `google.api.http` rules.
    pub fn router(&self) -> Result<RouterOf<MethodId>, RouteBuildError> {
        let methods = self
            .methods
            .iter()
            .enumerate()
            .filter(|(_, m)| !m.rules.is_empty())
            .map(|(id, m)| MethodRules {
                method: id,
                full_name: format!("{}.{}", m.service, m.name),
                grpc_path: format!("/{}/{}", m.service, m.name),
                input_name: self.messages[m.input].full_name.clone(),
                output_name: self.messages[m.output].full_name.clone(),
                rules: m.rules.clone(),
                rest: m.rest.clone(),
            });
        RouterOf::build(self, methods)
    }

    /// Checks that `bytes` decode as `message`.
    pub fn check(&self, message: MessageId, bytes: &[u8]) -> Result<(), WireError> {
        self.check_at(message, bytes, 0)
    }

    fn check_at(&self, message: MessageId, bytes: &[u8], depth: u32) -> Result<(), WireError> {
        if depth > RECURSION_LIMIT {
            return Err(WireError::TooDeep);
        }
        let mut reader = Reader::new(bytes);
        while let Some((number, value)) = reader.next_field()? {
            let Some(field) = self.messages[message].field_by_number(number) else {
                continue;
            };
            let expected = wire_type(field.kind);
            match value {
                Value::Len(packed)
                    if field.repeated
                        && expected != WireType::Len
                        && expected != WireType::Group =>
                {
                    let mut values = Reader::new(packed);
                    while !values.at_end() {
                        values.value(expected)?;
                    }
                }
                value if value.wire_type() != expected => {
                    return Err(WireError::Mismatch(field.name.clone()));
                }
                Value::Len(inner) => match field.kind {
                    Kind::String => {
                        std::str::from_utf8(inner)
                            .map_err(|_| WireError::Utf8(field.name.clone()))?;
                    }
                    Kind::Message(id) => self.check_at(id, inner, depth + 1)?,
                    _ => {}
                },
                _ => {}
            }
        }
        Ok(())
    }

    /// The text of the singular scalar at `path` (proto field names) of `bytes`, a checked
    /// `message`: `None` when unset (or at its default without presence), when the path does
    /// not end at a singular scalar or passes through a repeated field.
    pub fn read_text<S: AsRef<str>>(
        &self,
        message: MessageId,
        bytes: &[u8],
        path: &[S],
    ) -> Option<String> {
        let (field, value) = self.last_value(message, bytes, path)?;
        scalar_text(self, field, value?)
    }

    /// The field at the end of `path` and its last value across merged occurrences.
    fn last_value<'a, S: AsRef<str>>(
        &'a self,
        message: MessageId,
        bytes: &'a [u8],
        path: &[S],
    ) -> Option<(&'a Field, Option<Value<'a>>)> {
        let (first, rest) = path.split_first()?;
        let field = self.messages[message].field(first.as_ref())?;
        if field.repeated {
            return None;
        }
        let mut reader = Reader::new(bytes);
        if rest.is_empty() {
            if matches!(field.kind, Kind::Message(_) | Kind::Group(_)) {
                return None;
            }
            let mut last = None;
            while let Ok(Some((number, value))) = reader.next_field() {
                if number == field.number {
                    last = Some(value);
                }
            }
            return Some((field, last));
        }
        let Kind::Message(inner) = field.kind else {
            return None;
        };
        let mut found: Option<(&Field, Option<Value<'a>>)> = None;
        while let Ok(Some((number, value))) = reader.next_field() {
            if number == field.number
                && let Value::Len(nested) = value
            {
                let (leaf, value) = self.last_value(inner, nested, rest)?;
                if value.is_some() || found.is_none() {
                    found = Some((leaf, value));
                }
            }
        }
        found
    }
}

impl RuleSource for Schema {
    type Method = MethodId;

    fn input_path(&self, method: &MethodId, path: &str) -> Option<FieldShape> {
        let mut current = self.methods[*method].input;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let field = self.messages[current].field_or_json(part)?;
            let shape = if field.repeated {
                FieldShape::Repeated
            } else if let Kind::Message(_) | Kind::Group(_) = field.kind {
                FieldShape::Message
            } else {
                FieldShape::Scalar
            };
            if parts.peek().is_none() {
                return Some(shape);
            }
            match (shape, field.kind) {
                (FieldShape::Message, Kind::Message(inner)) => current = inner,
                _ => return None,
            }
        }
        None
    }

    fn has_field(&self, method: &MethodId, side: Side, name: &str) -> bool {
        let method = &self.methods[*method];
        let message = match side {
            Side::Input => method.input,
            Side::Output => method.output,
        };
        self.messages[message].field(name).is_some()
    }
}

fn rule_spec(rule: &proto::HttpRule) -> HttpRuleSpec {
    let set = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    HttpRuleSpec {
        get: set(&rule.get),
        put: set(&rule.put),
        post: set(&rule.post),
        delete: set(&rule.delete),
        patch: set(&rule.patch),
        custom: rule
            .custom
            .as_ref()
            .and_then(|c| Some((set(&c.kind)?, set(&c.path)?))),
        body: set(&rule.body),
        response_body: set(&rule.response_body),
    }
}

fn qualify(scope: &str, name: &str) -> String {
    if scope.is_empty() {
        name.to_owned()
    } else {
        format!("{scope}.{name}")
    }
}

fn resolve_field(
    types: &BTreeMap<String, Kind>,
    message: &str,
    proto3: bool,
    field: &proto::Field,
) -> Result<Field, SchemaError> {
    let name = field.name.clone().unwrap_or_default();
    let type_code = field.kind.unwrap_or(0);
    let referenced = || {
        let type_name = field.type_name.as_deref().unwrap_or_default();
        types
            .get(type_name.trim_start_matches('.'))
            .copied()
            .ok_or_else(|| SchemaError::Unresolved {
                field: format!("{message}.{name}"),
                type_name: type_name.to_owned(),
            })
    };
    let kind = match type_code {
        1 => Kind::Double,
        2 => Kind::Float,
        3 => Kind::Int64,
        4 => Kind::Uint64,
        5 => Kind::Int32,
        6 => Kind::Fixed64,
        7 => Kind::Fixed32,
        8 => Kind::Bool,
        9 => Kind::String,
        12 => Kind::Bytes,
        13 => Kind::Uint32,
        15 => Kind::Sfixed32,
        16 => Kind::Sfixed64,
        17 => Kind::Sint32,
        18 => Kind::Sint64,
        10 => match referenced()? {
            Kind::Message(id) => Kind::Group(id),
            other => other,
        },
        11 | 14 => referenced()?,
        // A compiled set names the type; without one, the type name decides.
        0 => referenced()?,
        other => {
            return Err(SchemaError::Kind {
                field: format!("{message}.{name}"),
                kind: other,
            });
        }
    };
    let repeated = field.label == Some(3);
    let presence = !repeated
        && (!proto3
            || field.proto3_optional == Some(true)
            || field.oneof_index.is_some()
            || matches!(kind, Kind::Message(_) | Kind::Group(_)));
    Ok(Field {
        json_name: field
            .json_name
            .clone()
            .filter(|j| !j.is_empty())
            .unwrap_or_else(|| json_name(&name)),
        number: u32::try_from(field.number.unwrap_or(0)).unwrap_or(0),
        name,
        kind,
        repeated,
        presence,
    })
}

/// proto3 JSON's `lowerCamelCase` of a field name (`created_at` → `createdAt`).
pub fn json_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn scalar_text(schema: &Schema, field: &Field, value: Value<'_>) -> Option<String> {
    let is_default = match value {
        Value::Varint(v) | Value::Fixed64(v) => match field.kind {
            Kind::Double => f64::from_bits(v) == 0.0,
            _ => v == 0,
        },
        Value::Fixed32(v) => match field.kind {
            Kind::Float => f32::from_bits(v) == 0.0,
            _ => v == 0,
        },
        Value::Len(bytes) => bytes.is_empty(),
        Value::Group => return None,
    };
    if is_default && !field.presence {
        return None;
    }
    // Truncating casts are the protobuf rules for 32-bit varints.
    Some(match (field.kind, value) {
        (Kind::Bool, Value::Varint(v)) => (v != 0).to_string(),
        (Kind::Int32, Value::Varint(v)) => (v as i32).to_string(),
        (Kind::Int64, Value::Varint(v)) => (v as i64).to_string(),
        (Kind::Uint32, Value::Varint(v)) => (v as u32).to_string(),
        (Kind::Uint64, Value::Varint(v)) => v.to_string(),
        (Kind::Sint32, Value::Varint(v)) => {
            let v = v as u32;
            ((v >> 1) as i32 ^ -((v & 1) as i32)).to_string()
        }
        (Kind::Sint64, Value::Varint(v)) => ((v >> 1) as i64 ^ -((v & 1) as i64)).to_string(),
        (Kind::Fixed32, Value::Fixed32(v)) => v.to_string(),
        (Kind::Sfixed32, Value::Fixed32(v)) => (v as i32).to_string(),
        (Kind::Float, Value::Fixed32(v)) => f32::from_bits(v).to_string(),
        (Kind::Fixed64, Value::Fixed64(v)) => v.to_string(),
        (Kind::Sfixed64, Value::Fixed64(v)) => (v as i64).to_string(),
        (Kind::Double, Value::Fixed64(v)) => f64::from_bits(v).to_string(),
        (Kind::Enum(id), Value::Varint(v)) => {
            let number = v as i32;
            schema.enums[id]
                .values
                .iter()
                .find(|(n, _)| *n == number)
                .map_or_else(|| number.to_string(), |(_, name)| name.clone())
        }
        (Kind::String, Value::Len(bytes)) => std::str::from_utf8(bytes).ok()?.to_owned(),
        (Kind::Bytes, Value::Len(bytes)) => base64::engine::general_purpose::STANDARD.encode(bytes),
        _ => return None,
    })
}

/// Why bytes are not the message they should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated or overlong value")]
    Truncated,
    #[error("invalid field key")]
    Key,
    #[error("field {0}: wrong wire type")]
    Mismatch(String),
    #[error("field {0}: invalid UTF-8")]
    Utf8(String),
    #[error("unbalanced group")]
    Group,
    #[error("messages nested too deeply")]
    TooDeep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WireType {
    Varint,
    Fixed64,
    Len,
    Group,
    Fixed32,
}

fn wire_type(kind: Kind) -> WireType {
    match kind {
        Kind::Double | Kind::Fixed64 | Kind::Sfixed64 => WireType::Fixed64,
        Kind::Float | Kind::Fixed32 | Kind::Sfixed32 => WireType::Fixed32,
        Kind::String | Kind::Bytes | Kind::Message(_) => WireType::Len,
        Kind::Group(_) => WireType::Group,
        _ => WireType::Varint,
    }
}

/// One field value as it is on the wire.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Len(&'a [u8]),
    /// A group's content is skipped, not kept.
    Group,
    Fixed32(u32),
}

impl Value<'_> {
    fn wire_type(&self) -> WireType {
        match self {
            Self::Varint(_) => WireType::Varint,
            Self::Fixed64(_) => WireType::Fixed64,
            Self::Len(_) => WireType::Len,
            Self::Group => WireType::Group,
            Self::Fixed32(_) => WireType::Fixed32,
        }
    }
}

/// Reads fields off an encoded message.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn at_end(&self) -> bool {
        self.bytes.is_empty()
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let bytes = self.bytes;
        let mut value = 0u64;
        for (i, byte) in bytes.iter().take(10).enumerate() {
            // The tenth byte carries the 64th bit only.
            if i == 9 && *byte > 1 {
                return Err(WireError::Truncated);
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.bytes = &bytes[i + 1..];
                return Ok(value);
            }
        }
        Err(WireError::Truncated)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.bytes.len() {
            return Err(WireError::Truncated);
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn key(&mut self) -> Result<(u32, u64), WireError> {
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).map_err(|_| WireError::Key)?;
        if number == 0 || number > 536_870_911 {
            return Err(WireError::Key);
        }
        Ok((number, key & 7))
    }

    /// The next field's number and value; `None` at the end.
    fn next_field(&mut self) -> Result<Option<(u32, Value<'a>)>, WireError> {
        if self.at_end() {
            return Ok(None);
        }
        let (number, wire) = self.key()?;
        let value = match wire {
            0 => self.value(WireType::Varint)?,
            1 => self.value(WireType::Fixed64)?,
            2 => self.value(WireType::Len)?,
            3 => {
                self.skip_group(number, 0)?;
                Value::Group
            }
            5 => self.value(WireType::Fixed32)?,
            _ => return Err(WireError::Key),
        };
        Ok(Some((number, value)))
    }

    fn value(&mut self, wire: WireType) -> Result<Value<'a>, WireError> {
        Ok(match wire {
            WireType::Varint => Value::Varint(self.varint()?),
            WireType::Fixed64 => {
                let bytes = self.take(8)?;
                let mut array = [0u8; 8];
                array.copy_from_slice(bytes);
                Value::Fixed64(u64::from_le_bytes(array))
            }
            WireType::Fixed32 => {
                let bytes = self.take(4)?;
                let mut array = [0u8; 4];
                array.copy_from_slice(bytes);
                Value::Fixed32(u32::from_le_bytes(array))
            }
            WireType::Len => {
                let len = usize::try_from(self.varint()?).map_err(|_| WireError::Truncated)?;
                Value::Len(self.take(len)?)
            }
            WireType::Group => return Err(WireError::Group),
        })
    }

    /// Skips a group's fields up to its end marker.
    fn skip_group(&mut self, number: u32, depth: u32) -> Result<(), WireError> {
        if depth > RECURSION_LIMIT {
            return Err(WireError::TooDeep);
        }
        loop {
            if self.at_end() {
                return Err(WireError::Group);
            }
            let (inner, wire) = self.key()?;
            match wire {
                0 => {
                    self.value(WireType::Varint)?;
                }
                1 => {
                    self.value(WireType::Fixed64)?;
                }
                2 => {
                    self.value(WireType::Len)?;
                }
                3 => self.skip_group(inner, depth + 1)?,
                4 if inner == number => return Ok(()),
                5 => {
                    self.value(WireType::Fixed32)?;
                }
                _ => return Err(WireError::Group),
            }
        }
    }
}

#[cfg(test)]
mod tests;
