use http::Method;
use prost_reflect::ReflectMessage;

use super::*;
use crate::routes::Router;

fn route(method: Method, path: &str) -> (std::sync::Arc<Route>, Vec<(String, String)>) {
    Router::from_pool(meshgate_proto::descriptor_pool())
        .unwrap()
        .lookup(&method, path)
        .unwrap()
}

#[test]
fn body_star_reads_json_and_proto_names() {
    let (route, bindings) = route(Method::POST, "/v1/users");
    let message = build_request(
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
    let message = build_request(&route, &bindings, None, br#"{"id":"other","name":"B"}"#).unwrap();
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
    let message = build_request(&route, &bindings, Some("page=2&limit=5"), b"").unwrap();
    assert_eq!(message.get_field_by_name("page").unwrap().as_i32(), Some(2));
    assert_eq!(
        message.get_field_by_name("limit").unwrap().as_i32(),
        Some(5)
    );
}

#[test]
fn errors_name_the_problem() {
    let (route, bindings) = route(Method::POST, "/v1/users");
    let malformed = build_request(&route, &bindings, None, b"{\"name\":").unwrap_err();
    assert!(
        matches!(malformed, TranscodeError::MalformedJson(_)),
        "{malformed}"
    );
    let unknown = build_request(&route, &bindings, None, br#"{"nickname":"x"}"#).unwrap_err();
    assert!(unknown.to_string().contains("nickname"), "{unknown}");
    let wrong_type =
        build_request(&route, &bindings, None, br#"{"name":"a","age":"old"}"#).unwrap_err();
    assert!(
        matches!(&wrong_type, TranscodeError::InvalidField { field, .. } if field == "age"),
        "{wrong_type}"
    );
    let array = build_request(&route, &bindings, None, b"[1]").unwrap_err();
    assert_eq!(array, TranscodeError::NotAnObject);

    let (route, bindings) = self::route(Method::GET, "/v1/users");
    let unknown_query = build_request(&route, &bindings, Some("color=red"), b"").unwrap_err();
    assert_eq!(
        unknown_query,
        TranscodeError::UnknownQueryParameter("color".into())
    );
    let bad_query = build_request(&route, &bindings, Some("page=two"), b"").unwrap_err();
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
    assert_eq!(json["user"]["createdAt"], "1700000000");
    assert_eq!(json["message"], "created");
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
        let _ = build_request(route, &bindings, Some(query), body.as_bytes());
    }
}

#[test]
fn query_cannot_set_the_body_field() {
    // `PATCH /v1/sinks/{id}/nested` with `body: "nested"`: a query value under `nested` used to
    // replace a non-object body silently (body `5` + `?nested.label=x` was accepted as
    // `{"label":"x"}`) or merge into it. Noticed while writing the json_to_message fuzz target.
    let pool = prost_reflect::DescriptorPool::decode(
        &include_bytes!(concat!(env!("OUT_DIR"), "/kitchen_descriptor.bin"))[..],
    )
    .unwrap();
    let router = Router::from_pool(&pool).unwrap();
    let (route, bindings) = router
        .lookup(&Method::PATCH, "/v1/sinks/s1/nested")
        .unwrap();
    for (query, body) in [
        ("nested.label=x", &b"5"[..]),
        ("nested.label=x", &br#"{"label":"a"}"#[..]),
        ("nested.values=1", &b""[..]),
    ] {
        let error = build_request(&route, &bindings, Some(query), body).unwrap_err();
        assert!(
            matches!(&error, TranscodeError::BadQueryParameter { reason, .. } if reason.contains("request body")),
            "{query}: {error}"
        );
    }
    // Other fields still come from the query, and the body still fills its field.
    let message = build_request(&route, &bindings, Some("color=RED"), br#"{"label":"a"}"#).unwrap();
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
