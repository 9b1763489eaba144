//! The transcoder is generic: a test-only service with every field kind and HttpRule shape.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn every_field_kind_round_trips_through_json() {
    let backend = Backend::start("k").await;
    let gw = spawn_gateway(&[backend.addr]).await;
    let sink = json!({
        "id": "s1",
        "color": "GREEN",
        "big": "-9007199254740993",
        "ubig": "18446744073709551615",
        "tags": ["a", "b"],
        "counts": {"x": 1, "y": 2},
        "nested": {"label": "n", "values": ["1", "2"]},
        "number": 7,
        "maybe": 0,
        "at": "2024-01-02T03:04:05.500Z",
        "ttl": "1.500s",
        "blob": "AAEC/w==",
        "flag": true,
        "ratio": 0.25,
        "items": [{"label": "i1", "values": []}],
        "maybeFlag": false,
        "colors": ["RED", "GREEN"],
    });
    for client in [h1(), h2()] {
        let response = client
            .post(gw.url("/v1/sinks"))
            .json(&sink)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let echoed: Value = response.json().await.unwrap();
        for key in [
            "color", "big", "ubig", "tags", "counts", "number", "at", "ttl", "blob", "flag",
            "ratio", "colors",
        ] {
            assert_eq!(echoed[key], sink[key], "field {key}: {echoed}");
        }
        assert_eq!(echoed["nested"]["values"], json!(["1", "2"]));
        assert_eq!(echoed["maybe"], 0, "a set wrapper holding 0 stays visible");
        assert_eq!(echoed["maybeFlag"], false);
        assert_eq!(echoed["servedBy"], "k");
        assert!(
            echoed.get("text").is_none(),
            "only the set oneof member appears: {echoed}"
        );
        // Proto field names are accepted on input too.
        let snake: Value = client
            .post(gw.url("/v1/sinks"))
            .json(&json!({"served_by": "client", "maybe_flag": true}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(snake["maybeFlag"], true);
    }
}

#[tokio::test]
async fn path_and_query_parameters_fill_scalar_repeated_and_nested_fields() {
    let backend = Backend::start("k").await;
    let gw = spawn_gateway(&[backend.addr]).await;
    let client = h1();
    let url = gw.url(
        "/v1/sinks/q1?color=RED&big=42&tags=a&tags=b%20c&nested.label=deep&nested.values=5&nested.values=6\
         &flag=true&ratio=1.5&maybe=3&at=2024-01-02T03:04:05Z&ttl=2s&blob=AQI%3D&maybeFlag=true&colors=GREEN",
    );
    let response = client.get(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let sink: Value = response.json().await.unwrap();
    assert_eq!(sink["id"], "q1");
    assert_eq!(sink["color"], "RED");
    assert_eq!(sink["big"], "42");
    assert_eq!(sink["tags"], json!(["a", "b c"]));
    assert_eq!(
        sink["nested"],
        json!({"label": "deep", "values": ["5", "6"]})
    );
    assert_eq!(sink["flag"], true);
    assert_eq!(sink["ratio"], 1.5);
    assert_eq!(sink["maybe"], 3);
    assert_eq!(sink["at"], "2024-01-02T03:04:05Z");
    assert_eq!(sink["ttl"], "2s");
    assert_eq!(sink["blob"], "AQI=");
    assert_eq!(sink["maybeFlag"], true);
    assert_eq!(sink["colors"], json!(["GREEN"]));

    // Additional bindings: a multi-segment `**` variable and a nested field in the path.
    let shelf: Value = get_json(&client, gw.url("/v1/shelves/7/sinks/a/b")).await;
    assert_eq!(shelf["name"], "shelves/7/sinks/a/b");
    let label: Value = get_json(&client, gw.url("/v1/labels/hello%20world")).await;
    assert_eq!(label["nested"]["label"], "hello world");

    let bad_enum = client
        .get(gw.url("/v1/sinks/q1?color=PURPLE"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_enum.status(), StatusCode::BAD_REQUEST);
    let bad_bool: Value = get_json(&client, gw.url("/v1/sinks/q1?flag=yes")).await;
    assert!(
        bad_bool["message"].as_str().unwrap().contains("flag"),
        "{bad_bool}"
    );
    let message_query = client
        .get(gw.url("/v1/sinks/q1?nested=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(message_query.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn body_field_response_body_verb_and_custom_method() {
    let backend = Backend::start("k").await;
    let gw = spawn_gateway(&[backend.addr]).await;
    let client = h2();
    let nested = client
        .patch(gw.url("/v1/sinks/s9/nested"))
        .json(&json!({"label": "L", "values": ["3"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(nested.status(), StatusCode::OK);
    assert_eq!(
        nested.json::<Value>().await.unwrap(),
        json!({"label": "s9:L", "values": ["3"]})
    );

    let cancelled: Value = client
        .post(gw.url("/v1/sinks/s3:cancel"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cancelled["name"], "cancelled s3");

    let search = reqwest::Method::from_bytes(b"SEARCH").unwrap();
    let found: Value = client
        .request(search, gw.url("/v1/sinks:search"))
        .json(&json!({"id": "z"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found["name"], "cancelled z");

    let replaced: Value = client
        .put(gw.url("/v1/sinks/p1"))
        .json(&json!({"id": "ignored", "tags": ["t"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(replaced["id"], "p1", "the path binding wins over the body");
}

#[tokio::test]
async fn server_streaming_over_rest_is_a_json_array_and_errors_carry_details() {
    let backend = Backend::start("k").await;
    let gw = spawn_gateway(&[backend.addr]).await;
    let client = h1();
    let ticks: Value = get_json(&client, gw.url("/v1/count/3")).await;
    assert_eq!(ticks, json!([{"index": 0}, {"index": 1}, {"index": 2}]));
    let failed = client
        .get(gw.url("/v1/count/2?failCode=8"))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), StatusCode::TOO_MANY_REQUESTS);

    for (code, http) in [
        (3, 400),
        (5, 404),
        (7, 403),
        (9, 400),
        (10, 409),
        (12, 501),
        (14, 503),
        (16, 401),
        (1, 499),
        (4, 504),
        (13, 500),
    ] {
        let response = client
            .post(gw.url("/v1/fail"))
            .json(&json!({"code": code, "message": "nope", "field": "name"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), http, "grpc code {code}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], code);
        assert_eq!(body["message"], "nope");
        assert_eq!(body["details"][0]["fieldViolations"][0]["field"], "name");
    }
}
