//! OpenAPI 3.1 from the route table and the message descriptors, built once at start-up.
//! Schemas follow the proto3 JSON mapping (64-bit integers as strings, enums by name,
//! well-known types as their JSON forms).

use std::collections::BTreeMap;

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use crate::routes::{BodyTarget, Route, Router, resolve_field_path};

pub fn document(router: &Router, title: &str, use_proto_field_names: bool) -> Value {
    let mut schemas = BTreeMap::new();
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for route in router.routes() {
        let path = openapi_path(route);
        let operation = operation(route, &mut schemas, use_proto_field_names);
        paths
            .entry(path)
            .or_default()
            .insert(route.http_method.as_str().to_ascii_lowercase(), operation);
    }
    schemas.insert("google.rpc.Status".to_owned(), status_schema());
    json!({
        "openapi": "3.1.0",
        "info": { "title": title, "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": { "schemas": schemas },
    })
}

/// `/v1/{name=shelves/*}:cancel` → `/v1/{name}:cancel`.
fn openapi_path(route: &Route) -> String {
    let mut out = String::new();
    let mut depth = 0;
    let mut skipping = false;
    for c in route.template.as_str().chars() {
        match c {
            '{' => {
                depth += 1;
                out.push(c);
            }
            '=' if depth > 0 => skipping = true,
            '}' => {
                depth -= 1;
                skipping = false;
                out.push(c);
            }
            _ if !skipping => out.push(c),
            _ => {}
        }
    }
    out
}

fn operation(route: &Route, schemas: &mut BTreeMap<String, Value>, proto_names: bool) -> Value {
    let input = route.input();
    let mut parameters = Vec::new();
    let bound: Vec<&str> = route.template.field_paths().collect();
    for path in &bound {
        let field = resolve_field_path(&input, path);
        parameters.push(json!({
            "name": path,
            "in": "path",
            "required": true,
            "schema": field.map_or(json!({"type": "string"}), |f| field_schema(&f, schemas, proto_names)),
        }));
    }
    if route.body != BodyTarget::Whole {
        let body_field = match &route.body {
            BodyTarget::Field(name) => Some(name.as_str()),
            _ => None,
        };
        for field in input.fields() {
            if bound.contains(&field.name()) || Some(field.name()) == body_field {
                continue;
            }
            if field.is_map()
                || (matches!(field.kind(), Kind::Message(_)) && !is_scalar_wkt(&field))
            {
                continue;
            }
            parameters.push(json!({
                "name": json_name(&field, proto_names),
                "in": "query",
                "required": false,
                "schema": field_schema(&field, schemas, proto_names),
            }));
        }
    }
    let mut op = json!({
        "operationId": format!("{}_{}", route.method.parent_service().name(), route.method.name()),
        "tags": [route.method.parent_service().full_name()],
        "parameters": parameters,
        "responses": {
            route.success_code.to_string(): {
                "description": "Success",
                "content": { "application/json": { "schema": response_schema(route, schemas, proto_names) } },
            },
            "default": {
                "description": "Error (google.rpc.Status)",
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/google.rpc.Status" } } },
            },
        },
    });
    if let Some(summary) = route
        .method
        .parent_service()
        .full_name()
        .split('.')
        .next_back()
    {
        op["summary"] = json!(format!("{summary}.{}", route.method.name()));
    }
    let body_schema = match &route.body {
        BodyTarget::None => None,
        BodyTarget::Whole => Some(message_ref(&input, schemas, proto_names)),
        BodyTarget::Field(name) => input
            .get_field_by_name(name)
            .map(|f| field_schema(&f, schemas, proto_names)),
    };
    if let Some(schema) = body_schema {
        op["requestBody"] = json!({
            "required": true,
            "content": { "application/json": { "schema": schema } },
        });
    }
    op
}

fn response_schema(
    route: &Route,
    schemas: &mut BTreeMap<String, Value>,
    proto_names: bool,
) -> Value {
    let output = route.output();
    match &route.response_body {
        Some(name) => output
            .get_field_by_name(name)
            .map_or(json!({}), |f| field_schema(&f, schemas, proto_names)),
        None => message_ref(&output, schemas, proto_names),
    }
}

fn json_name(field: &FieldDescriptor, proto_names: bool) -> String {
    if proto_names {
        field.name().to_owned()
    } else {
        field.json_name().to_owned()
    }
}

fn is_scalar_wkt(field: &FieldDescriptor) -> bool {
    matches!(field.kind(), Kind::Message(m) if wkt_schema(&m).is_some())
}

fn wkt_schema(message: &MessageDescriptor) -> Option<Value> {
    Some(match message.full_name() {
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => {
            json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$"})
        }
        "google.protobuf.FieldMask" => json!({"type": "string"}),
        "google.protobuf.Empty" => json!({"type": "object"}),
        "google.protobuf.Struct" => json!({"type": "object"}),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.ListValue" => json!({"type": "array"}),
        "google.protobuf.Any" => {
            json!({"type": "object", "properties": {"@type": {"type": "string"}}})
        }
        "google.protobuf.StringValue" => json!({"type": ["string", "null"]}),
        "google.protobuf.BytesValue" => {
            json!({"type": ["string", "null"], "contentEncoding": "base64"})
        }
        "google.protobuf.BoolValue" => json!({"type": ["boolean", "null"]}),
        "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => {
            json!({"type": ["integer", "null"]})
        }
        "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => {
            json!({"type": ["string", "null"], "format": "int64"})
        }
        "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => {
            json!({"type": ["number", "null"]})
        }
        _ => return None,
    })
}

fn message_ref(
    message: &MessageDescriptor,
    schemas: &mut BTreeMap<String, Value>,
    proto_names: bool,
) -> Value {
    if let Some(schema) = wkt_schema(message) {
        return schema;
    }
    let name = message.full_name().to_owned();
    if !schemas.contains_key(&name) {
        // Placeholder first: recursive messages refer to themselves.
        schemas.insert(name.clone(), json!({}));
        let mut properties = Map::new();
        for field in message.fields() {
            properties.insert(
                json_name(&field, proto_names),
                field_schema(&field, schemas, proto_names),
            );
        }
        schemas.insert(
            name.clone(),
            json!({"type": "object", "properties": properties}),
        );
    }
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn kind_schema(kind: &Kind, schemas: &mut BTreeMap<String, Value>, proto_names: bool) -> Value {
    match kind {
        Kind::Double | Kind::Float => json!({"type": "number"}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({"type": "integer", "format": "int32"})
        }
        Kind::Uint32 | Kind::Fixed32 => json!({"type": "integer", "format": "int64", "minimum": 0}),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => json!({"type": "string", "format": "int64"}),
        Kind::Uint64 | Kind::Fixed64 => json!({"type": "string", "format": "uint64"}),
        Kind::Bool => json!({"type": "boolean"}),
        Kind::String => json!({"type": "string"}),
        Kind::Bytes => json!({"type": "string", "contentEncoding": "base64"}),
        Kind::Enum(e) => {
            json!({"type": "string", "enum": e.values().map(|v| v.name().to_owned()).collect::<Vec<_>>()})
        }
        Kind::Message(m) => message_ref(m, schemas, proto_names),
    }
}

fn field_schema(
    field: &FieldDescriptor,
    schemas: &mut BTreeMap<String, Value>,
    proto_names: bool,
) -> Value {
    if field.is_map()
        && let Kind::Message(entry) = field.kind()
    {
        let value = entry.map_entry_value_field().kind();
        return json!({
            "type": "object",
            "additionalProperties": kind_schema(&value, schemas, proto_names),
        });
    }
    let item = kind_schema(&field.kind(), schemas, proto_names);
    if field.is_list() {
        json!({"type": "array", "items": item})
    } else {
        item
    }
}

fn status_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "code": {"type": "integer", "format": "int32", "description": "google.rpc.Code"},
            "message": {"type": "string"},
            "details": {"type": "array", "items": {"type": "object", "properties": {"@type": {"type": "string"}}}},
        },
        "required": ["code", "message"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_api_document() {
        let router = Router::from_pool(meshgate_proto::descriptor_pool()).unwrap();
        let doc = document(&router, "meshgate", false);
        assert_eq!(doc["openapi"], "3.1.0");
        let create = &doc["paths"]["/v1/users"]["post"];
        assert!(create["responses"]["201"].is_object(), "{create}");
        assert_eq!(
            create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/user.CreateUserRequest"
        );
        let get = &doc["paths"]["/v1/users/{id}"]["get"];
        assert_eq!(get["parameters"][0]["in"], "path");
        let list = &doc["paths"]["/v1/users"]["get"];
        let names: Vec<_> = list["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].clone())
            .collect();
        assert_eq!(names, vec![json!("page"), json!("limit")]);
        let user = &doc["components"]["schemas"]["user.User"]["properties"];
        assert_eq!(user["createdAt"]["type"], "string");
    }
}
