//! OpenAPI 3.1 from the route table and the message descriptors, built once at start-up.
//! Schemas follow the proto3 JSON mapping as the gateway serves it ([`JsonOptions`]: field
//! names, 64-bit integers, error bodies), enums by name, well-known types as their JSON forms,
//! and the `buf.validate` rules as schema keywords (`minLength`, `maximum`, `format`, `required`).

use std::collections::{BTreeMap, BTreeSet};

use meshgate_wire::routes::{BodyTarget, Route, Router, resolve_field_path};
use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use crate::auth::policy::AuthPolicy;
use crate::transcode::JsonOptions;
use crate::validate::schema_keywords;

pub fn document(router: &Router, title: &str, options: JsonOptions) -> Value {
    let mut schemas = BTreeMap::new();
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut operation_ids: BTreeMap<String, usize> = BTreeMap::new();
    for route in router.routes() {
        let method = route.http_method.as_str().to_ascii_lowercase();
        // OpenAPI 3.1 path items only know the standard methods; custom HttpRule kinds
        // (e.g. SEARCH) stay routable but undocumented.
        if !STANDARD_METHODS.contains(&method.as_str()) {
            continue;
        }
        let path = openapi_path(route);
        let mut operation = operation(route, &mut schemas, options);
        // Additional bindings share the method: operationIds must stay unique.
        let base_id = operation["operationId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let seen = operation_ids.entry(base_id.clone()).or_default();
        *seen += 1;
        if *seen > 1 {
            operation["operationId"] = json!(format!("{base_id}_{seen}"));
        }
        paths.entry(path).or_default().insert(method, operation);
    }
    mark_always_present(router, &mut schemas, options);
    schemas.insert("google.rpc.Status".to_owned(), status_schema());
    if options.error_detail {
        schemas.insert("HTTPError".to_owned(), http_error_schema());
        schemas.insert(
            "HTTPValidationError".to_owned(),
            http_validation_error_schema(),
        );
        schemas.insert("ValidationError".to_owned(), validation_error_schema());
    }
    schemas.insert("HealthResponse".to_owned(), health_schema());
    for (path, item) in admin_paths() {
        if let Value::Object(item) = item {
            paths.insert(path.to_owned(), item);
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": title, "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": { "schemas": schemas },
    })
}

/// Marks the operations a `gateway.auth` rule covers: the bearer scheme, and their 401 / 403
/// answers (the document's error schema).
pub fn require_bearer(document: &mut Value, router: &Router, policy: &AuthPolicy) {
    let mut covered = false;
    for route in router.routes() {
        if policy
            .rule_for(&route.grpc_path, Some(&route.label()))
            .is_none()
        {
            continue;
        }
        let method = route.http_method.as_str().to_ascii_lowercase();
        let operation = document
            .get_mut("paths")
            .and_then(|paths| paths.get_mut(openapi_path(route)))
            .and_then(|item| item.get_mut(method.as_str()))
            .and_then(Value::as_object_mut);
        let Some(operation) = operation else {
            // A custom method: routed but not documented.
            continue;
        };
        covered = true;
        let error = operation
            .get("responses")
            .and_then(|responses| responses.get("default"))
            .and_then(|default| default.get("content"))
            .cloned()
            .unwrap_or(Value::Null);
        operation.insert("security".into(), json!([{ "bearerAuth": [] }]));
        if let Some(Value::Object(responses)) = operation.get_mut("responses") {
            responses.insert(
                "401".into(),
                json!({"description": "Missing or invalid bearer token (UNAUTHENTICATED)", "content": error}),
            );
            responses.insert(
                "403".into(),
                json!({"description": "The token lacks a required claim (PERMISSION_DENIED)", "content": error}),
            );
        }
    }
    if covered {
        document["components"]["securitySchemes"] = json!({
            "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
        });
    }
}

/// With `emit_defaults` every field of a response message is written: messages only ever
/// answered (never sent) list them all as `required`.
fn mark_always_present(
    router: &Router,
    schemas: &mut BTreeMap<String, Value>,
    options: JsonOptions,
) {
    if !options.emit_defaults {
        return;
    }
    let (mut sent, mut answered) = (BTreeSet::new(), BTreeSet::new());
    for route in router.routes() {
        reachable(&route.input(), &mut sent);
        let output = route.output();
        match route
            .response_body
            .as_deref()
            .and_then(|name| output.get_field_by_name(name))
        {
            Some(field) => {
                if let Kind::Message(inner) = field.kind() {
                    reachable(&inner, &mut answered);
                }
            }
            None => reachable(&output, &mut answered),
        }
    }
    for name in answered.difference(&sent) {
        let Some(schema) = schemas.get_mut(name) else {
            continue;
        };
        let Some(message) = router
            .routes()
            .first()
            .and_then(|r| r.method.parent_pool().get_message_by_name(name))
        else {
            continue;
        };
        // In declaration order; members of a oneof are written only when set.
        let required: Vec<Value> = message
            .fields()
            .filter(|f| f.containing_oneof().is_none())
            .map(|f| Value::String(json_name(&f, options)))
            .collect();
        if !required.is_empty() {
            schema["required"] = Value::Array(required);
        }
    }
}

fn reachable(message: &MessageDescriptor, seen: &mut BTreeSet<String>) {
    if wkt_schema(message).is_some() || !seen.insert(message.full_name().to_owned()) {
        return;
    }
    for field in message.fields() {
        if let Kind::Message(inner) = field.kind() {
            reachable(&inner, seen);
        }
    }
}

/// The gateway's own endpoints.
fn admin_paths() -> Vec<(&'static str, Value)> {
    let text = |description: &str| json!({"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}});
    vec![
        (
            "/healthz",
            json!({"get": {
                "operationId": "gateway_health",
                "tags": ["gateway"],
                "summary": "The gateway and its upstreams' grpc.health.v1 state",
                "responses": {"200": {
                    "description": "The gateway answers; grpc_user_status tells the upstreams' health",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HealthResponse"}}},
                }},
            }}),
        ),
        (
            "/livez",
            json!({"get": {
                "operationId": "gateway_liveness",
                "tags": ["gateway"],
                "summary": "The gateway process is up (liveness probe)",
                "responses": {"200": text("ok")},
            }}),
        ),
        (
            "/readyz",
            json!({"get": {
                "operationId": "gateway_readiness",
                "tags": ["gateway"],
                "summary": "At least one upstream is healthy (readiness probe)",
                "responses": {"200": text("ready"), "503": text("no healthy upstream")},
            }}),
        ),
    ]
}

const STANDARD_METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

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

fn operation(route: &Route, schemas: &mut BTreeMap<String, Value>, options: JsonOptions) -> Value {
    let input = route.input();
    let mut parameters = Vec::new();
    let bound: Vec<&str> = route.template.field_paths().collect();
    for path in &bound {
        let field = resolve_field_path(&input, path);
        parameters.push(json!({
            "name": path,
            "in": "path",
            "required": true,
            "schema": field.map_or(json!({"type": "string"}), |f| field_schema(&f, schemas, options)),
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
                "name": json_name(&field, options),
                "in": "query",
                "required": false,
                "schema": field_schema(&field, schemas, options),
            }));
        }
    }
    let service = route.method.parent_service();
    let success = if route.server_streaming() {
        streaming_success(response_schema(route, schemas, options), options)
    } else {
        json!({
            "description": "Success",
            "content": { "application/json": { "schema": response_schema(route, schemas, options) } },
        })
    };
    let mut op = json!({
        // Package-qualified: versions of one service (user.UserService, user.v2.UserService)
        // share their method names.
        "operationId": format!("{}_{}", service.full_name().replace('.', "_"), route.method.name()),
        "tags": [service.full_name()],
        "parameters": parameters,
        "responses": { route.success_code.to_string(): success },
    });
    let error = |description: &str, schema: &str| {
        json!({
            "description": description,
            "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } },
        })
    };
    if options.error_detail {
        op["responses"]["422"] = error(
            "Validation error: one `detail` item per problem",
            "HTTPValidationError",
        );
        op["responses"]["default"] = error("Error (google.rpc.Status with `detail`)", "HTTPError");
    } else {
        op["responses"]["default"] = error("Error (google.rpc.Status)", "google.rpc.Status");
    }
    op["summary"] = json!(format!("{}.{}", service.full_name(), route.method.name()));
    let body_schema = match &route.body {
        BodyTarget::None => None,
        BodyTarget::Whole => Some(message_ref(&input, schemas, options)),
        BodyTarget::Field(name) => input
            .get_field_by_name(name)
            .map(|f| field_schema(&f, schemas, options)),
    };
    if let Some(schema) = body_schema {
        op["requestBody"] = json!({
            "required": true,
            "content": { "application/json": { "schema": schema } },
        });
    }
    op
}

/// A server stream's answer: Server-Sent Events when asked for (`Accept: text/event-stream`),
/// else one JSON array once the stream has ended. OpenAPI 3.1 cannot type the events, so their
/// `data` schema is the `x-sse-data` extension.
fn streaming_success(message: Value, options: JsonOptions) -> Value {
    let error_schema = if options.error_detail {
        "HTTPError"
    } else {
        "google.rpc.Status"
    };
    json!({
        "description": "Success. With `Accept: text/event-stream`: Server-Sent Events as the \
            messages arrive, each `id:` (1, 2, ...) and one `data:` line of the message's JSON; \
            comment lines while idle (heartbeats); a failure after the start is an `event: error` \
            whose data is the google.rpc.Status JSON, then the stream ends. Otherwise the \
            messages as one JSON array once the stream has ended.",
        "content": {
            "text/event-stream": {
                "schema": { "type": "string" },
                "x-sse-data": message.clone(),
                "x-sse-error-data": { "$ref": format!("#/components/schemas/{error_schema}") },
            },
            "application/json": { "schema": { "type": "array", "items": message } },
        },
    })
}

fn response_schema(
    route: &Route,
    schemas: &mut BTreeMap<String, Value>,
    options: JsonOptions,
) -> Value {
    let output = route.output();
    match &route.response_body {
        Some(name) => output
            .get_field_by_name(name)
            .map_or(json!({}), |f| field_schema(&f, schemas, options)),
        None => message_ref(&output, schemas, options),
    }
}

fn json_name(field: &FieldDescriptor, options: JsonOptions) -> String {
    if options.use_proto_field_names {
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
    options: JsonOptions,
) -> Value {
    if let Some(schema) = wkt_schema(message) {
        return schema;
    }
    let name = message.full_name().to_owned();
    if !schemas.contains_key(&name) {
        // Placeholder first: recursive messages refer to themselves.
        schemas.insert(name.clone(), json!({}));
        let mut properties = Map::new();
        let mut required = Vec::new();
        for field in message.fields() {
            let key = json_name(&field, options);
            if schema_keywords(field.parent_pool(), &field).1 {
                required.push(Value::String(key.clone()));
            }
            properties.insert(key, field_schema(&field, schemas, options));
        }
        let mut schema = json!({"type": "object", "properties": properties});
        if !required.is_empty() {
            schema["required"] = Value::Array(required);
        }
        schemas.insert(name.clone(), schema);
    }
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn kind_schema(kind: &Kind, schemas: &mut BTreeMap<String, Value>, options: JsonOptions) -> Value {
    match kind {
        Kind::Double | Kind::Float => json!({"type": "number"}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({"type": "integer", "format": "int32"})
        }
        Kind::Uint32 | Kind::Fixed32 => json!({"type": "integer", "format": "int64", "minimum": 0}),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 if options.int64_as_number => json!({
            "type": ["integer", "string"],
            "format": "int64",
            "description": "A JSON number while within ±(2^53 − 1), a decimal string beyond",
        }),
        Kind::Uint64 | Kind::Fixed64 if options.int64_as_number => json!({
            "type": ["integer", "string"],
            "format": "uint64",
            "minimum": 0,
            "description": "A JSON number while within 2^53 − 1, a decimal string beyond",
        }),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => json!({"type": "string", "format": "int64"}),
        Kind::Uint64 | Kind::Fixed64 => json!({"type": "string", "format": "uint64"}),
        Kind::Bool => json!({"type": "boolean"}),
        Kind::String => json!({"type": "string"}),
        Kind::Bytes => json!({"type": "string", "contentEncoding": "base64"}),
        Kind::Enum(e) => {
            json!({"type": "string", "enum": e.values().map(|v| v.name().to_owned()).collect::<Vec<_>>()})
        }
        Kind::Message(m) => message_ref(m, schemas, options),
    }
}

fn field_schema(
    field: &FieldDescriptor,
    schemas: &mut BTreeMap<String, Value>,
    options: JsonOptions,
) -> Value {
    if field.is_map()
        && let Kind::Message(entry) = field.kind()
    {
        let value = entry.map_entry_value_field().kind();
        return json!({
            "type": "object",
            "additionalProperties": kind_schema(&value, schemas, options),
        });
    }
    let item = kind_schema(&field.kind(), schemas, options);
    if field.is_list() {
        return json!({"type": "array", "items": item});
    }
    let (keywords, _) = schema_keywords(field.parent_pool(), field);
    match item {
        Value::Object(mut schema) if !schema.contains_key("$ref") => {
            schema.extend(keywords);
            Value::Object(schema)
        }
        // A `$ref` takes no siblings worth relying on: rules on message fields stay implicit.
        other => other,
    }
}

/// google.rpc.Status plus `detail` (`gateway.json.error_detail`).
fn http_error_schema() -> Value {
    let mut schema = status_schema();
    schema["properties"]["detail"] =
        json!({"type": "string", "description": "The message, as the replaced facade answered it"});
    schema["required"] = json!(["code", "message", "detail"]);
    schema
}

fn http_validation_error_schema() -> Value {
    let mut schema = status_schema();
    schema["properties"]["detail"] = json!({
        "type": "array",
        "items": { "$ref": "#/components/schemas/ValidationError" },
    });
    schema["required"] = json!(["code", "message", "detail"]);
    schema
}

/// FastAPI's (pydantic's) validation error item.
fn validation_error_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "loc": {
                "type": "array",
                "items": { "anyOf": [{"type": "string"}, {"type": "integer"}] },
                "description": "Where: `body`, `query` or `path`, then the field path (or the character offset of a JSON syntax error)",
            },
            "msg": {"type": "string"},
            "type": {"type": "string", "description": "pydantic's error type, e.g. missing, string_too_short, less_than_equal"},
            "input": {"description": "The value sent"},
            "ctx": {"type": "object", "description": "The rule's bound, e.g. {\"le\": 150}"},
        },
        "required": ["loc", "msg", "type"],
    })
}

fn health_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "status": {"type": "string", "const": "healthy"},
            "service": {"type": "string"},
            "version": {"type": "string"},
            "grpc_user_status": {"type": "string", "enum": ["healthy", "unhealthy"]},
        },
        "required": ["status", "service", "version", "grpc_user_status"],
    })
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
    fn operations_a_rule_covers_require_the_bearer_scheme() {
        use crate::auth::policy::{AuthRule, AuthSettings, JwksSource};
        let router = Router::from_pool(meshgate_proto::descriptor_pool()).unwrap();
        let mut doc = document(&router, "meshgate", JsonOptions::default());
        let policy = AuthPolicy::new(AuthSettings {
            jwks: JwksSource::File("jwks.json".into()),
            refresh_interval: std::time::Duration::from_secs(1),
            min_refresh_interval: std::time::Duration::from_secs(1),
            fetch_timeout: std::time::Duration::from_secs(1),
            issuers: vec!["i".into()],
            audiences: vec!["a".into()],
            leeway: std::time::Duration::ZERO,
            rules: vec![AuthRule {
                name: "writes".into(),
                methods: vec!["/user.UserService/CreateUser".into()],
                routes: vec!["DELETE /v1/users/{id}".into()],
                claims: Vec::new(),
            }],
        });
        require_bearer(&mut doc, &router, &policy);
        for (path, method) in [("/v1/users", "post"), ("/v1/users/{id}", "delete")] {
            let operation = &doc["paths"][path][method];
            assert_eq!(operation["security"], json!([{"bearerAuth": []}]), "{path}");
            assert_eq!(
                operation["responses"]["401"]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/google.rpc.Status"
            );
            assert!(operation["responses"]["403"].is_object());
        }
        for (path, method) in [("/v1/users", "get"), ("/v1/users/{id}", "put")] {
            assert!(doc["paths"][path][method]["security"].is_null(), "{path}");
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["bearerAuth"]["scheme"],
            "bearer"
        );
    }

    #[test]
    fn user_api_document() {
        let router = Router::from_pool(meshgate_proto::descriptor_pool()).unwrap();
        let doc = document(&router, "meshgate", JsonOptions::default());
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
        assert_eq!(user["id"]["format"], "uuid");
        assert!(doc["paths"]["/healthz"]["get"].is_object());
        // `response_body: "user"`: the user itself.
        assert_eq!(
            create["responses"]["201"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/user.User"
        );
    }

    #[test]
    fn both_api_versions_are_documented_side_by_side() {
        let router = Router::from_pool(meshgate_proto::descriptor_pool()).unwrap();
        let doc = document(&router, "meshgate", JsonOptions::default());
        let v1 = &doc["paths"]["/v1/users"]["get"];
        let v2 = &doc["paths"]["/v2/users"]["get"];
        assert_eq!(v1["tags"], json!(["user.UserService"]));
        assert_eq!(v2["tags"], json!(["user.v2.UserService"]));
        assert_eq!(v1["operationId"], "user_UserService_ListUsers");
        assert_eq!(v2["operationId"], "user_v2_UserService_ListUsers");
        let names: Vec<_> = v2["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].clone())
            .collect();
        assert_eq!(names, vec![json!("pageSize"), json!("pageToken")]);
        let schemas = &doc["components"]["schemas"];
        // The same message names, kept apart by package.
        assert_eq!(
            schemas["user.User"]["properties"]["createdAt"]["format"],
            "int64"
        );
        assert_eq!(
            schemas["user.v2.User"]["properties"]["createdAt"],
            json!({"type": "string", "format": "date-time"})
        );
        // v2 answers the resource itself: 201 with the user, no envelope.
        assert_eq!(
            doc["paths"]["/v2/users"]["post"]["responses"]["201"]["content"]["application/json"]["schema"]
                ["$ref"],
            "#/components/schemas/user.v2.User"
        );
        let ids: Vec<_> = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .map(|op| op["operationId"].as_str().unwrap().to_owned())
            .collect();
        let unique: BTreeSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "{ids:?}");
    }

    #[test]
    fn a_server_stream_is_documented_as_server_sent_events() {
        let router = Router::from_pool(meshgate_proto::descriptor_pool()).unwrap();
        let doc = document(&router, "meshgate", JsonOptions::default());
        let watch = &doc["paths"]["/v1/users:watch"]["get"];
        let content = &watch["responses"]["200"]["content"];
        assert_eq!(content["text/event-stream"]["schema"]["type"], "string");
        assert_eq!(
            content["text/event-stream"]["x-sse-data"]["$ref"],
            "#/components/schemas/user.UserEvent"
        );
        assert_eq!(
            content["text/event-stream"]["x-sse-error-data"]["$ref"],
            "#/components/schemas/google.rpc.Status"
        );
        assert_eq!(content["application/json"]["schema"]["type"], "array");
        assert_eq!(watch["parameters"][0]["name"], "userId");
        assert_eq!(watch["parameters"][0]["in"], "query");
        assert_eq!(watch["parameters"][0]["schema"]["format"], "uuid");
        // A unary route keeps its single JSON answer.
        let get = &doc["paths"]["/v1/users/{id}"]["get"]["responses"]["200"]["content"];
        assert!(get.get("text/event-stream").is_none(), "{get}");
    }

    #[test]
    fn rules_and_the_fastapi_style_show_in_the_schemas() {
        let router = Router::from_pool(meshgate_proto::descriptor_pool()).unwrap();
        let options = JsonOptions {
            use_proto_field_names: true,
            int64_as_number: true,
            error_detail: true,
            ..JsonOptions::default()
        };
        let doc = document(&router, "meshgate", options);
        let schemas = &doc["components"]["schemas"];
        let create = &schemas["user.CreateUserRequest"];
        assert_eq!(create["required"], json!(["name", "email", "age"]));
        let create = &create["properties"];
        assert_eq!(create["name"]["minLength"], 1);
        assert_eq!(create["name"]["maxLength"], 100);
        assert_eq!(create["email"]["format"], "email");
        assert_eq!(create["age"]["minimum"], 0);
        assert_eq!(create["age"]["maximum"], 150);
        let user = &schemas["user.User"];
        assert_eq!(
            user["properties"]["created_at"]["type"],
            json!(["integer", "string"])
        );
        // Only ever answered, and every field written: all required.
        assert_eq!(
            user["required"],
            json!(["id", "name", "email", "age", "created_at", "updated_at"])
        );
        let list = &doc["paths"]["/v1/users"]["get"];
        let limit = list["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "limit")
            .unwrap();
        assert_eq!(limit["schema"]["minimum"], 1);
        assert_eq!(limit["schema"]["maximum"], 100);
        assert_eq!(
            list["responses"]["422"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/HTTPValidationError"
        );
        let get = &doc["paths"]["/v1/users/{id}"]["get"];
        assert_eq!(get["parameters"][0]["schema"]["format"], "uuid");
    }
}
