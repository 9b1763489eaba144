//! Against the real user-service (embedded SQLite, in process): the README's curl walk-through
//! over HTTP/1.1 and HTTP/2, gRPC-web and native gRPC, and two instances with one killed.

use std::time::Duration;

use meshgate_proto::user;
use prost::Message;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn readme_walkthrough_against_the_real_service() {
    let service = UserService::start(sqlite_path()).await;
    let gw = spawn_gateway(&[service.addr]).await;
    for (index, client) in [h1(), h2()].iter().enumerate() {
        let email = format!("ada{index}@example.com");
        let created = client
            .post(gw.url("/v1/users"))
            .json(&json!({"name": "Ada Lovelace", "email": email, "age": 36}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), StatusCode::CREATED);
        let location = created.headers()["location"].to_str().unwrap().to_owned();
        let created: Value = created.json().await.unwrap();
        let id = created["id"].as_str().unwrap().to_owned();
        assert_eq!(location, format!("/v1/users/{id}"));
        assert!(
            created["createdAt"].is_string(),
            "int64 as a JSON string: {created}"
        );

        let fetched: Value = get_json(client, gw.url(&location)).await;
        assert_eq!(fetched["email"], email.as_str());

        let listed = client
            .get(gw.url("/v1/users?page=1&limit=10"))
            .send()
            .await
            .unwrap();
        assert_eq!(listed.status(), StatusCode::OK);
        let listed: Value = listed.json().await.unwrap();
        assert!(
            listed["users"]
                .as_array()
                .unwrap()
                .iter()
                .any(|u| u["id"] == id.as_str()),
            "{listed}"
        );

        let updated = client
            .put(gw.url(&location))
            .json(&json!({"name": "Ada King", "age": 37}))
            .send()
            .await
            .unwrap();
        assert_eq!(updated.status(), StatusCode::OK);
        let updated: Value = updated.json().await.unwrap();
        assert_eq!(updated["name"], "Ada King");
        assert_eq!(updated["age"], 37);

        let duplicate = client
            .post(gw.url("/v1/users"))
            .json(&json!({"name": "Other", "email": email, "age": 20}))
            .send()
            .await
            .unwrap();
        assert_eq!(duplicate.status(), StatusCode::CONFLICT);

        let invalid = client
            .post(gw.url("/v1/users"))
            .json(&json!({"name": "", "email": "nope", "age": 36}))
            .send()
            .await
            .unwrap();
        assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
        let invalid: Value = invalid.json().await.unwrap();
        assert_eq!(invalid["code"], 3);
        let violations = invalid["details"][0]["fieldViolations"].as_array().unwrap();
        assert!(
            violations.iter().any(|v| v["field"] == "email"),
            "{invalid}"
        );

        assert_eq!(
            client
                .delete(gw.url(&location))
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
        let gone = client.get(gw.url(&location)).send().await.unwrap();
        assert_eq!(gone.status(), StatusCode::NOT_FOUND);
        assert_eq!(gone.json::<Value>().await.unwrap()["code"], 5);

        for (code, expected) in [("404", 404), ("409", 409), ("503", 503), ("400", 400)] {
            let response = client
                .get(gw.url(&format!("/v1/test-error/{code}")))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), expected, "test-error {code}");
        }
    }
}

#[tokio::test]
async fn grpc_web_and_native_grpc_against_the_real_service() {
    let service = UserService::start(sqlite_path()).await;
    let gw = spawn_gateway(&[service.addr]).await;
    let mut grpc =
        user::user_service_client::UserServiceClient::connect(format!("http://{}", gw.addr))
            .await
            .unwrap();
    let created = grpc
        .create_user(user::CreateUserRequest {
            name: "Grace".into(),
            email: "grace@example.com".into(),
            age: 45,
        })
        .await
        .unwrap()
        .into_inner();
    let id = created.user.unwrap().id;
    let missing = grpc
        .get_user(user::GetUserRequest {
            id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    for client in [h1(), h2()] {
        for text in [false, true] {
            let request = user::GetUserRequest { id: id.clone() };
            let response = client
                .post(gw.url("/user.UserService/GetUser"))
                .header(
                    "content-type",
                    if text {
                        "application/grpc-web-text"
                    } else {
                        "application/grpc-web+proto"
                    },
                )
                .body(grpc_web_request(&request, text))
                .send()
                .await
                .unwrap();
            let reply = parse_grpc_web(&response.bytes().await.unwrap(), text);
            assert_eq!(reply.trailers["grpc-status"], "0");
            let user = user::GetUserResponse::decode(reply.messages[0].clone()).unwrap();
            assert_eq!(user.user.unwrap().email, "grace@example.com");
        }
    }
}

#[tokio::test]
async fn two_instances_one_killed_mid_test_gets_keep_succeeding() {
    let path = sqlite_path();
    let mut first = UserService::start(path.clone()).await;
    let second = UserService::start(path).await;
    let gw = spawn_gateway(&[first.addr, second.addr]).await;
    let client = h2();
    let created: Value = client
        .post(gw.url("/v1/users"))
        .json(&json!({"name": "Lin", "email": "lin@example.com", "age": 30}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = gw.url(&format!("/v1/users/{}", created["id"].as_str().unwrap()));
    let load = {
        let client = client.clone();
        let url = url.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..200 {
                statuses.push(get_status(&client, &url).await);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            statuses
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    first.stop().await;
    let statuses = load.await.unwrap();
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    // The survivor answers alone now.
    let after = client.get(&url).send().await.unwrap();
    assert_eq!(after.status(), StatusCode::OK);
    drop(second);
}
