//! The user API over REST, every route and error path, over HTTP/1.1 and HTTP/2.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

async fn create(
    client: &reqwest::Client,
    gw: &TestGateway,
    name: &str,
    email: &str,
) -> reqwest::Response {
    client
        .post(gw.url("/v1/users"))
        .json(&json!({"name": name, "email": email, "age": 36}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn crud_walkthrough_over_http1_and_http2() {
    let backend = Backend::start("a").await;
    let gw = spawn_gateway(&[backend.addr]).await;
    for (index, client) in [h1(), h2()].iter().enumerate() {
        let created = create(client, &gw, "Ada", &format!("ada{index}@example.com")).await;
        assert_eq!(created.status(), StatusCode::CREATED);
        let location = created.headers()["location"].to_str().unwrap().to_owned();
        let body: Value = created.json().await.unwrap();
        let id = body["id"].as_str().unwrap().to_owned();
        assert_eq!(location, format!("/v1/users/{id}"));
        assert_eq!(body["createdAt"], "1700000000", "int64 as string: {body}");

        let fetched = client.get(gw.url(&location)).send().await.unwrap();
        assert_eq!(fetched.status(), StatusCode::OK);
        let fetched: Value = fetched.json().await.unwrap();
        assert_eq!(fetched["email"], format!("ada{index}@example.com"));

        let updated = client
            .put(gw.url(&location))
            .json(&json!({"name": "Ada L."}))
            .send()
            .await
            .unwrap();
        assert_eq!(updated.status(), StatusCode::OK);
        assert_eq!(updated.json::<Value>().await.unwrap()["name"], "Ada L.");

        let listed: Value = get_json(client, gw.url("/v1/users?page=1&limit=5")).await;
        assert!(
            listed["users"]
                .as_array()
                .unwrap()
                .iter()
                .any(|u| u["id"] == id.as_str())
        );

        let deleted = client.delete(gw.url(&location)).send().await.unwrap();
        assert_eq!(deleted.status(), StatusCode::OK);
        let gone = client.get(gw.url(&location)).send().await.unwrap();
        assert_eq!(gone.status(), StatusCode::NOT_FOUND);
        let gone: Value = gone.json().await.unwrap();
        assert_eq!(gone["code"], 5);
        assert!(gone["message"].as_str().unwrap().contains("not found"));
    }
}

#[tokio::test]
async fn service_errors_map_to_http_statuses_with_details() {
    let backend = Backend::start("a").await;
    let gw = spawn_gateway(&[backend.addr]).await;
    let client = h1();
    let invalid = create(&client, &gw, "Bob", "not-an-email").await;
    assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
    let invalid: Value = invalid.json().await.unwrap();
    assert_eq!(invalid["code"], 3);
    assert_eq!(
        invalid["details"][0]["@type"],
        "type.googleapis.com/google.rpc.BadRequest"
    );
    assert_eq!(
        invalid["details"][0]["fieldViolations"][0]["field"],
        "email"
    );

    assert_eq!(
        create(&client, &gw, "Bob", "bob@example.com")
            .await
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        create(&client, &gw, "Bob", "bob@example.com")
            .await
            .status(),
        StatusCode::CONFLICT
    );

    for (code, expected) in [
        ("401", 401),
        ("403", 403),
        ("404", 404),
        ("409", 409),
        ("429", 429),
        ("503", 503),
        ("500", 500),
    ] {
        let response = client
            .get(gw.url(&format!("/v1/test-error/{code}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), expected, "test-error {code}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["message"], "test error");
    }
}

#[tokio::test]
async fn bad_input_is_a_4xx_naming_the_problem() {
    let backend = Backend::start("a").await;
    let mut config = test_config(&[backend.addr]);
    config.max_body_bytes = 1024;
    let gw = spawn_gateway_with(config, Default::default()).await;
    for client in [h1(), h2()] {
        let send = |body: &'static str| {
            client
                .post(gw.url("/v1/users"))
                .header("content-type", "application/json")
                .body(body)
                .send()
        };
        let malformed = send("{\"name\": ").await.unwrap();
        assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
        let malformed: Value = malformed.json().await.unwrap();
        assert!(
            malformed["message"]
                .as_str()
                .unwrap()
                .contains("malformed JSON"),
            "{malformed}"
        );

        let unknown: Value = send(r#"{"name":"a","nickname":"b"}"#)
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(unknown["code"], 3);
        assert!(
            unknown["message"].as_str().unwrap().contains("nickname"),
            "{unknown}"
        );

        let wrong = send(r#"{"name":"a","age":"old"}"#).await.unwrap();
        assert_eq!(wrong.status(), StatusCode::BAD_REQUEST);
        let wrong: Value = wrong.json().await.unwrap();
        assert!(
            wrong["message"].as_str().unwrap().contains("age"),
            "{wrong}"
        );

        let not_found = client.get(gw.url("/v2/nothing")).send().await.unwrap();
        assert_eq!(not_found.status(), StatusCode::NOT_FOUND);
        assert_eq!(not_found.json::<Value>().await.unwrap()["code"], 5);

        let not_allowed = client.patch(gw.url("/v1/users/x")).send().await.unwrap();
        assert_eq!(not_allowed.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(not_allowed.headers()["allow"], "DELETE, GET, PUT");

        let too_large = client
            .post(gw.url("/v1/users"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"name":"{}"}}"#, "x".repeat(4096)))
            .send()
            .await
            .unwrap();
        assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);

        let media = client
            .post(gw.url("/v1/users"))
            .header("content-type", "text/xml")
            .body("<user/>")
            .send()
            .await
            .unwrap();
        assert_eq!(media.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(media.text().await.unwrap().contains("text/xml"));

        let bad_query = client
            .get(gw.url("/v1/users?page=two"))
            .send()
            .await
            .unwrap();
        assert_eq!(bad_query.status(), StatusCode::BAD_REQUEST);
        let unknown_query: Value = get_json(&client, gw.url("/v1/users?colour=red")).await;
        assert!(
            unknown_query["message"]
                .as_str()
                .unwrap()
                .contains("colour")
        );
    }
}
