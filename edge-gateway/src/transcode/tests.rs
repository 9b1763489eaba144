use http::Method;
use meshgate_wire::routes::{Route, Router};
use prost::Message as _;
use prost_reflect::{DynamicMessage, ReflectMessage};
use serde_json::Value;

use super::*;
use crate::validate::{Validators, ViolationKind};

fn route(method: Method, path: &str) -> (std::sync::Arc<Route>, Vec<(String, String)>) {
    Router::from_pool(meshgate_proto::descriptor_pool())
        .unwrap()
        .lookup(&method, path)
        .unwrap()
}

/// Transcoding alone: no rules checked.
fn build(
    route: &Route,
    bindings: &[(String, String)],
    query: Option<&str>,
    body: &[u8],
) -> Result<DynamicMessage, TranscodeError> {
    build_request(
        route,
        bindings,
        query,
        body,
        JsonOptions::default(),
        &Validators::default(),
    )
}

/// Transcoding and the contract's buf.validate rules.
fn checked(
    method: Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> Result<DynamicMessage, TranscodeError> {
    let (route, bindings) = route(method, path);
    let validators = Validators::from_pool(meshgate_proto::descriptor_pool()).unwrap();
    build_request(
        &route,
        &bindings,
        query,
        body,
        JsonOptions::default(),
        &validators,
    )
}

fn problems(error: TranscodeError) -> Vec<(Source, String, Problem)> {
    match error {
        TranscodeError::Fields(fields) => fields
            .into_iter()
            .map(|f| (f.source, f.field, f.problem))
            .collect(),
        other => panic!("expected field problems, got {other:?}"),
    }
}

fn rule(problem: &Problem) -> &ViolationKind {
    match problem {
        Problem::Rule(violation) => &violation.kind,
        other => panic!("expected a rule violation, got {other:?}"),
    }
}

const ID: &str = "3f0c6a0e-9a51-4d2e-8f7a-1b2c3d4e5f60";

#[test]
fn body_star_reads_json_and_proto_names() {
    let (route, bindings) = route(Method::POST, "/v1/users");
    let message = build(
        &route,
        &bindings,
        None,
        br#"{"name":"Ada","email":"a@x.io","age":"36"}"#,
    )
    .unwrap();
    assert_eq!(
        message.get_field_by_name("name").unwrap().as_str(),
        Some("Ada")
    );
    assert_eq!(message.get_field_by_name("age").unwrap().as_i32(), Some(36));
}

#[test]
fn path_binding_overrides_body() {
    let (route, bindings) = route(Method::PUT, "/v1/users/u-1");
    let message = build(&route, &bindings, None, br#"{"id":"other","name":"B"}"#).unwrap();
    assert_eq!(
        message.get_field_by_name("id").unwrap().as_str(),
        Some("u-1")
    );
    assert_eq!(
        message.get_field_by_name("name").unwrap().as_str(),
        Some("B")
    );
}

#[test]
fn query_parameters_fill_scalars() {
    let (route, bindings) = route(Method::GET, "/v1/users");
    let message = build(&route, &bindings, Some("page=2&limit=5"), b"").unwrap();
    assert_eq!(message.get_field_by_name("page").unwrap().as_i32(), Some(2));
    assert_eq!(
        message.get_field_by_name("limit").unwrap().as_i32(),
        Some(5)
    );
}

#[test]
fn errors_name_the_problem() {
    let (route, bindings) = route(Method::POST, "/v1/users");
    let malformed = build(&route, &bindings, None, b"{\n  \"name\":").unwrap_err();
    assert!(
        matches!(malformed, TranscodeError::MalformedJson { offset: 11, .. }),
        "{malformed:?}"
    );
    let bad_char = build(&route, &bindings, None, br#"{"name": x}"#).unwrap_err();
    assert!(
        matches!(bad_char, TranscodeError::MalformedJson { offset: 9, .. }),
        "{bad_char:?}"
    );
    let unknown = build(&route, &bindings, None, br#"{"nickname":"x"}"#).unwrap_err();
    assert!(unknown.to_string().contains("nickname"), "{unknown}");
    assert_eq!(
        problems(unknown),
        [(Source::Body, "nickname".into(), Problem::Unknown)]
    );
    let wrong_type = build(&route, &bindings, None, br#"{"name":"a","age":"old"}"#).unwrap_err();
    assert!(wrong_type.to_string().contains("age"), "{wrong_type}");
    let wrong_type = problems(wrong_type);
    assert!(
        matches!(&wrong_type[..], [(Source::Body, field, Problem::WrongType { expected: Expected::Integer, .. })] if field == "age"),
        "{wrong_type:?}"
    );
    let array = build(&route, &bindings, None, b"[1]").unwrap_err();
    assert_eq!(array, TranscodeError::NotAnObject);
    assert_eq!(
        build(&route, &bindings, None, b" ").unwrap_err(),
        TranscodeError::MissingBody
    );

    let (route, bindings) = self::route(Method::GET, "/v1/users");
    let unknown_query = build(&route, &bindings, Some("color=red"), b"").unwrap_err();
    assert_eq!(
        problems(unknown_query),
        [(Source::Query, "color".into(), Problem::Unknown)]
    );
    let bad_query = build(&route, &bindings, Some("page=two"), b"").unwrap_err();
    assert!(bad_query.to_string().contains("page"), "{bad_query}");
}

#[test]
fn response_renders_int64_as_string_and_fills_location() {
    let (route, _) = route(Method::POST, "/v1/users");
    let user = meshgate_proto::user::CreateUserResponse {
        user: Some(meshgate_proto::user::User {
            id: "a b".into(),
            name: "Ada".into(),
            email: "a@x.io".into(),
            age: 36,
            created_at: 1_700_000_000,
            updated_at: 1_700_000_001,
        }),
        message: "created".into(),
    };
    let message = decode_response(&route.output(), &user.encode_to_vec()).unwrap();
    let json: Value =
        serde_json::from_slice(&render_response(&route, &message, JsonOptions::default()).unwrap())
            .unwrap();
    // `response_body: "user"`: the user itself, int64 as a string by default.
    assert_eq!(json["createdAt"], "1700000000");
    assert!(json.get("message").is_none(), "{json}");
    assert_eq!(
        fill_location("/v1/users/{user.id}", &message).as_deref(),
        Some("/v1/users/a%20b")
    );
    assert_eq!(fill_location("/v1/users/{user.nope}", &message), None);
    let snake = render_response(
        &route,
        &message,
        JsonOptions {
            use_proto_field_names: true,
            emit_defaults: false,
            ..JsonOptions::default()
        },
    )
    .unwrap();
    assert!(String::from_utf8(snake).unwrap().contains("created_at"));
    assert_eq!(message.descriptor().full_name(), "user.CreateUserResponse");
}

#[test]
fn garbage_response_is_an_error_not_a_panic() {
    let (route, _) = route(Method::GET, "/v1/users/x");
    assert!(decode_response(&route.output(), &[0xff, 0xff, 0xff]).is_err());
}

#[test]
fn random_json_never_panics() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let router = Router::from_pool(meshgate_proto::descriptor_pool()).unwrap();
    let validators = Validators::from_pool(meshgate_proto::descriptor_pool()).unwrap();
    let pieces: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"name\"",
        "\"age\"",
        "\"id\"",
        "\"page\"",
        "1",
        "-1",
        "1e400",
        "\"x\"",
        "null",
        "true",
        "\"\\u0000\"",
        "99999999999999999999",
        "{}",
        "\"nickname\"",
    ];
    let queries: &[&str] = &[
        "",
        "page=1",
        "limit=x",
        "page=%zz",
        "a.b.c=1",
        "page=1&page=2",
        "=",
        "&&",
    ];
    for _ in 0..5_000 {
        let body: String = (0..rng.random_range(0..12))
            .map(|_| pieces[rng.random_range(0..pieces.len())])
            .collect();
        let route = &router.routes()[rng.random_range(0..router.routes().len())];
        let query = queries[rng.random_range(0..queries.len())];
        let bindings = vec![("id".to_owned(), "x".to_owned())];
        let _ = build_request(
            route,
            &bindings,
            Some(query),
            body.as_bytes(),
            JsonOptions::default(),
            &validators,
        );
    }
}

#[test]
fn query_cannot_set_the_body_field() {
    // `PATCH /v1/sinks/{id}/nested` with `body: "nested"`: a query value under `nested` used to
    // replace a non-object body silently (body `5` + `?nested.label=x` was accepted as
    // `{"label":"x"}`) or merge into it. Noticed while writing the json_to_message fuzz target.
    let pool =
        prost_reflect::DescriptorPool::decode(meshgate_test_support::kitchen::DESCRIPTOR_SET)
            .unwrap();
    let router = Router::from_pool(&pool).unwrap();
    let (route, bindings) = router
        .lookup(&Method::PATCH, "/v1/sinks/s1/nested")
        .unwrap();
    for (query, body) in [
        ("nested.label=x", &b"5"[..]),
        ("nested.label=x", &br#"{"label":"a"}"#[..]),
        ("nested.values=1", &b"{}"[..]),
    ] {
        let error = build(&route, &bindings, Some(query), body).unwrap_err();
        assert!(
            problems(error.clone()).iter().any(|p| matches!(p, (Source::Query, _, Problem::Other(reason)) if reason.contains("request body"))),
            "{query}: {error}"
        );
    }
    // Other fields still come from the query, and the body still fills its field.
    let message = build(&route, &bindings, Some("color=RED"), br#"{"label":"a"}"#).unwrap();
    assert_eq!(
        message.get_field_by_name("color").unwrap().as_enum_number(),
        Some(1)
    );
    let nested = message.get_field_by_name("nested").unwrap();
    assert_eq!(
        nested
            .as_message()
            .unwrap()
            .get_field_by_name("label")
            .unwrap()
            .as_str(),
        Some("a")
    );
    assert_eq!(
        message.get_field_by_name("id").unwrap().as_str(),
        Some("s1")
    );
}

#[test]
fn every_broken_rule_is_reported_with_its_source() {
    let error = checked(
        Method::POST,
        "/v1/users",
        None,
        br#"{"name":"","email":"nope","age":151}"#,
    )
    .unwrap_err();
    let found = problems(error);
    let fields: Vec<_> = found.iter().map(|(s, f, _)| (*s, f.as_str())).collect();
    assert_eq!(
        fields,
        [
            (Source::Body, "name"),
            (Source::Body, "email"),
            (Source::Body, "age")
        ]
    );
    assert_eq!(rule(&found[0].2), &ViolationKind::TooShort(1));
    assert_eq!(rule(&found[1].2), &ViolationKind::Email);
    assert!(matches!(
        rule(&found[2].2),
        ViolationKind::Above {
            inclusive: true,
            ..
        }
    ));
}

#[test]
fn missing_and_wrong_typed_fields_are_reported_together() {
    let found = problems(checked(Method::POST, "/v1/users", None, b"{}").unwrap_err());
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(
        found
            .iter()
            .all(|(_, _, p)| rule(p) == &ViolationKind::Required)
    );
    // A wrong-typed field is a type problem, not also a missing one.
    let found = problems(
        checked(
            Method::POST,
            "/v1/users",
            None,
            br#"{"name":"Ada","age":"old"}"#,
        )
        .unwrap_err(),
    );
    assert!(
        matches!(&found[..], [(_, age, Problem::WrongType { .. }), (_, email, Problem::Rule(_))] if age == "age" && email == "email"),
        "{found:?}"
    );
    // The facade's bounds: 0 and 150 pass the edge (the service has its own, stricter, check).
    checked(
        Method::POST,
        "/v1/users",
        None,
        br#"{"name":"Ada","email":"ada@example.com","age":0}"#,
    )
    .unwrap();
}

#[test]
fn a_rest_field_is_set_when_the_request_names_it() {
    let path = format!("/v1/users/{ID}");
    // Left out: unchanged. Named with an empty value: checked.
    checked(Method::PUT, &path, None, b"{}").unwrap();
    checked(Method::PUT, &path, None, br#"{"age":37}"#).unwrap();
    let found = problems(checked(Method::PUT, &path, None, br#"{"name":""}"#).unwrap_err());
    assert_eq!(found[0].1, "name");
    assert_eq!(rule(&found[0].2), &ViolationKind::TooShort(1));
    assert_eq!(
        checked(Method::PUT, &path, None, b"").unwrap_err(),
        TranscodeError::MissingBody
    );
    // Paging: out of range is refused, not clamped; left out means the defaults.
    checked(Method::GET, "/v1/users", None, b"").unwrap();
    checked(Method::GET, "/v1/users", Some("page=3&limit=100"), b"").unwrap();
    for (query, field) in [
        ("page=0", "page"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("page=-1", "page"),
    ] {
        let found = problems(checked(Method::GET, "/v1/users", Some(query), b"").unwrap_err());
        assert!(
            matches!(&found[..], [(Source::Query, f, Problem::Rule(_))] if f == field),
            "{query}: {found:?}"
        );
    }
    let found = problems(checked(Method::GET, "/v1/users/not-a-uuid", None, b"").unwrap_err());
    assert!(
        matches!(&found[..], [(Source::Path, f, Problem::Rule(_))] if f == "id"),
        "{found:?}"
    );
}

#[test]
fn unknown_fields_can_be_ignored() {
    let (route, bindings) = route(Method::POST, "/v1/users");
    let options = JsonOptions {
        ignore_unknown_fields: true,
        ..JsonOptions::default()
    };
    let validators = Validators::from_pool(meshgate_proto::descriptor_pool()).unwrap();
    let body = br#"{"name":"Ada","email":"ada@example.com","age":36,"nickname":"x"}"#;
    build_request(&route, &bindings, None, body, options, &validators).unwrap();
    let (route, bindings) = self::route(Method::GET, "/v1/users");
    build_request(
        &route,
        &bindings,
        Some("colour=red&page=2"),
        b"",
        options,
        &validators,
    )
    .unwrap();
}

#[test]
fn int64_as_number_keeps_strings_beyond_two_to_the_53() {
    let (route, _) = route(Method::GET, &format!("/v1/users/{ID}"));
    let options = JsonOptions {
        use_proto_field_names: true,
        int64_as_number: true,
        ..JsonOptions::default()
    };
    let render = |created_at: i64| -> Value {
        let response = meshgate_proto::user::GetUserResponse {
            user: Some(meshgate_proto::user::User {
                id: ID.into(),
                created_at,
                ..Default::default()
            }),
            message: "ok".into(),
        };
        let message = decode_response(&route.output(), &response.encode_to_vec()).unwrap();
        serde_json::from_slice(&render_response(&route, &message, options).unwrap()).unwrap()
    };
    // `response_body: "user"`: the user itself.
    let user = render(1_700_000_000);
    assert_eq!(user["created_at"], 1_700_000_000);
    assert_eq!(user["id"], ID);
    assert!(user.get("user").is_none() && user.get("message").is_none());
    let safe = MAX_SAFE_INTEGER as i64;
    assert_eq!(render(safe)["created_at"], safe);
    assert_eq!(render(-safe)["created_at"], -safe);
    assert_eq!(render(safe + 1)["created_at"], (safe + 1).to_string());
    assert_eq!(render(i64::MIN)["created_at"], i64::MIN.to_string());
}

#[test]
fn a_response_body_message_renders_as_the_general_path_would_in_field_order() {
    let (route, _) = route(Method::GET, "/v1/users/x");
    let response = meshgate_proto::user::GetUserResponse {
        user: Some(meshgate_proto::user::User {
            id: "u1".into(),
            name: "Ada".into(),
            email: "a@x.io".into(),
            age: 0,
            created_at: 1_700_000_000,
            updated_at: 1_700_000_001,
        }),
        message: "ok".into(),
    };
    let message = decode_response(&route.output(), &response.encode_to_vec()).unwrap();
    let options = JsonOptions::default();
    let rendered = render_response(&route, &message, options).unwrap();
    let general = message_json(&message, options).unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&rendered).unwrap(),
        general["user"]
    );
    // Fields in the message's order (as protojson writes them), defaults included.
    assert_eq!(
        String::from_utf8(rendered).unwrap(),
        r#"{"id":"u1","name":"Ada","email":"a@x.io","age":0,"createdAt":"1700000000","updatedAt":"1700000001"}"#
    );
    // An unset `user` takes the general path: the field's default, as before.
    let empty = decode_response(&route.output(), &[]).unwrap();
    let general = message_json(&empty, options).unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&render_response(&route, &empty, options).unwrap())
            .unwrap(),
        general.get("user").cloned().unwrap_or(Value::Null)
    );
}
