//! Every RPC and error code, on both backends.

use std::collections::HashSet;

use meshgate_proto::user::{
    DeleteUserRequest, GetUserRequest, ListUsersRequest, UpdateUserRequest,
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{Backend, spawn_app, unique_email};
use crate::on_both_backends;

on_both_backends!(
    create_assigns_a_uuid_and_returns_the_user,
    create_reports_every_invalid_field,
    duplicate_email_is_already_exists,
    concurrent_creates_with_one_email_exactly_one_wins,
    get_returns_the_stored_user,
    malformed_id_is_invalid_argument,
    missing_user_is_not_found,
    update_keeps_stored_values_for_empty_fields,
    update_validates_and_detects_taken_email,
    delete_removes_the_user,
    list_pages_newest_first_with_total,
    list_clamps_page_and_limit,
    read_after_write_is_never_stale,
    test_error_maps_http_statuses,
);

async fn create_assigns_a_uuid_and_returns_the_user(backend: Backend) {
    let app = spawn_app(backend).await;
    let email = unique_email();
    let response = app
        .client
        .clone()
        .create_user(meshgate_proto::user::CreateUserRequest {
            name: "Ada Lovelace".into(),
            email: email.clone(),
            age: 36,
        })
        .await
        .unwrap()
        .into_inner();
    let user = response.user.unwrap();
    assert!(
        uuid::Uuid::parse_str(&user.id).is_ok(),
        "id {:?} is a UUID",
        user.id
    );
    assert_eq!(
        (user.name.as_str(), user.email.as_str(), user.age),
        ("Ada Lovelace", email.as_str(), 36)
    );
    assert!(
        user.created_at > 1_700_000_000,
        "created_at is unix seconds: {}",
        user.created_at
    );
    assert_eq!(user.created_at, user.updated_at);
    assert!(!response.message.is_empty());
    app.teardown().await;
}

async fn create_reports_every_invalid_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let cases: [(&str, &str, i32, &[&str]); 6] = [
        ("", "ok@example.com", 30, &["name"]),
        (&"n".repeat(101), "ok@example.com", 30, &["name"]),
        ("Ada", "not-an-email", 30, &["email"]),
        ("Ada", "ok@example.com", 0, &["age"]),
        ("Ada", "ok@example.com", 150, &["age"]),
        ("", "", -1, &["name", "email", "age"]),
    ];
    for (name, email, age, fields) in cases {
        let status = app.create(name, email, age).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{name:?} {email:?} {age}"
        );
        let details = status.get_error_details();
        let reported: Vec<_> = details
            .bad_request()
            .expect("google.rpc.BadRequest details")
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(reported, fields);
    }
    app.teardown().await;
}

async fn duplicate_email_is_already_exists(backend: Backend) {
    let app = spawn_app(backend).await;
    let email = unique_email();
    app.create("First", &email, 20).await.unwrap();
    let status = app.create("Second", &email, 21).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(
        !status.message().to_lowercase().contains("constraint"),
        "no SQL in {:?}",
        status.message()
    );
    app.teardown().await;
}

async fn concurrent_creates_with_one_email_exactly_one_wins(backend: Backend) {
    let app = spawn_app(backend).await;
    let email = unique_email();
    let attempts: Vec<_> = (0..20)
        .map(|n| {
            let mut client = app.client.clone();
            let email = email.clone();
            tokio::spawn(async move {
                client
                    .create_user(meshgate_proto::user::CreateUserRequest {
                        name: format!("Racer {n}"),
                        email,
                        age: 30,
                    })
                    .await
            })
        })
        .collect();
    let mut codes = Vec::new();
    for attempt in attempts {
        codes.push(attempt.await.unwrap().map(drop).map_err(|s| s.code()));
    }
    let won = codes.iter().filter(|c| c.is_ok()).count();
    let lost = codes
        .iter()
        .filter(|c| **c == Err(Code::AlreadyExists))
        .count();
    assert_eq!((won, lost), (1, 19), "{codes:?}");
    let listed = app
        .client
        .clone()
        .list_users(ListUsersRequest {
            page: 1,
            limit: 100,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total, 1);
    app.teardown().await;
}

async fn get_returns_the_stored_user(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create("Grace", &unique_email(), 45).await.unwrap();
    for _ in 0..2 {
        // The second read is a cache hit and must be identical.
        let fetched = app
            .client
            .clone()
            .get_user(GetUserRequest {
                id: created.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(fetched.user.as_ref(), Some(&created));
        assert!(!fetched.message.is_empty());
    }
    app.teardown().await;
}

async fn malformed_id_is_invalid_argument(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.client.clone();
    let get = client
        .get_user(GetUserRequest { id: "42".into() })
        .await
        .unwrap_err();
    let update = client
        .update_user(UpdateUserRequest {
            id: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let delete = client
        .delete_user(DeleteUserRequest { id: String::new() })
        .await
        .unwrap_err();
    for status in [get, update, delete] {
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        assert_eq!(
            details.bad_request().unwrap().field_violations[0].field,
            "id"
        );
    }
    app.teardown().await;
}

async fn missing_user_is_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.client.clone();
    let id = uuid::Uuid::new_v4().to_string();
    let get = client
        .get_user(GetUserRequest { id: id.clone() })
        .await
        .unwrap_err();
    let update = client
        .update_user(UpdateUserRequest {
            id: id.clone(),
            name: "X".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let delete = client
        .delete_user(DeleteUserRequest { id })
        .await
        .unwrap_err();
    for status in [get, update, delete] {
        assert_eq!(status.code(), Code::NotFound);
    }
    app.teardown().await;
}

async fn update_keeps_stored_values_for_empty_fields(backend: Backend) {
    let app = spawn_app(backend).await;
    let email = unique_email();
    let created = app.create("Alan", &email, 41).await.unwrap();
    let mut client = app.client.clone();
    let renamed = client
        .update_user(UpdateUserRequest {
            id: created.id.clone(),
            name: "Alan Turing".into(),
            email: String::new(),
            age: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(
        (renamed.name.as_str(), renamed.email.as_str(), renamed.age),
        ("Alan Turing", email.as_str(), 41)
    );
    assert_eq!(renamed.created_at, created.created_at);
    assert!(renamed.updated_at >= created.updated_at);
    let new_email = unique_email();
    let changed = client
        .update_user(UpdateUserRequest {
            id: created.id.clone(),
            name: String::new(),
            email: new_email.clone(),
            age: 42,
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(
        (changed.name.as_str(), changed.email.as_str(), changed.age),
        ("Alan Turing", new_email.as_str(), 42)
    );
    // Nothing to change: the stored user comes back unchanged.
    let same = client
        .update_user(UpdateUserRequest {
            id: created.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(same, changed);
    app.teardown().await;
}

async fn update_validates_and_detects_taken_email(backend: Backend) {
    let app = spawn_app(backend).await;
    let taken = unique_email();
    app.create("Owner", &taken, 30).await.unwrap();
    let user = app.create("Other", &unique_email(), 30).await.unwrap();
    let mut client = app.client.clone();
    let invalid = client
        .update_user(UpdateUserRequest {
            id: user.id.clone(),
            name: String::new(),
            email: "bad".into(),
            age: 200,
        })
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    let fields: Vec<_> = invalid
        .get_error_details()
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect();
    assert_eq!(fields, ["email", "age"]);
    let conflict = client
        .update_user(UpdateUserRequest {
            id: user.id.clone(),
            email: taken,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), Code::AlreadyExists);
    app.teardown().await;
}

async fn delete_removes_the_user(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.create("Temp", &unique_email(), 30).await.unwrap();
    let mut client = app.client.clone();
    // Cache it first so the delete must evict it.
    client
        .get_user(GetUserRequest {
            id: user.id.clone(),
        })
        .await
        .unwrap();
    let deleted = client
        .delete_user(DeleteUserRequest {
            id: user.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!deleted.message.is_empty());
    let gone = client
        .get_user(GetUserRequest {
            id: user.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let again = client
        .delete_user(DeleteUserRequest { id: user.id })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
    app.teardown().await;
}

async fn list_pages_newest_first_with_total(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut created = Vec::new();
    for n in 0..7 {
        created.push(
            app.create(&format!("User {n}"), &unique_email(), 20 + n)
                .await
                .unwrap(),
        );
    }
    let mut client = app.client.clone();
    let mut seen = Vec::new();
    for page in 1..=3 {
        let response = client
            .list_users(ListUsersRequest { page, limit: 3 })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.total, 7);
        seen.extend(response.users.into_iter().map(|u| u.id));
    }
    let newest_first: Vec<_> = created.iter().rev().map(|u| u.id.clone()).collect();
    assert_eq!(seen, newest_first);
    let past_the_end = client
        .list_users(ListUsersRequest { page: 9, limit: 3 })
        .await
        .unwrap()
        .into_inner();
    assert!(past_the_end.users.is_empty());
    assert_eq!(past_the_end.total, 7);
    app.teardown().await;
}

async fn list_clamps_page_and_limit(backend: Backend) {
    let app = spawn_app(backend).await;
    for n in 0..12 {
        app.create(&format!("User {n}"), &unique_email(), 30)
            .await
            .unwrap();
    }
    let mut client = app.client.clone();
    let defaults = client
        .list_users(ListUsersRequest { page: 0, limit: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(defaults.users.len(), 10, "limit defaults to 10");
    let negative = client
        .list_users(ListUsersRequest {
            page: -3,
            limit: -1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(negative.users, defaults.users, "page < 1 is page 1");
    let huge = client
        .list_users(ListUsersRequest {
            page: 1,
            limit: 1000,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        huge.users.len(),
        12,
        "limit is clamped to 100, not rejected"
    );
    app.teardown().await;
}

async fn read_after_write_is_never_stale(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.client.clone();
    let user = app.create("Before", &unique_email(), 30).await.unwrap();
    // Warm every cache entry involved, then write, then read again.
    client
        .get_user(GetUserRequest {
            id: user.id.clone(),
        })
        .await
        .unwrap();
    let first_page = client
        .list_users(ListUsersRequest { page: 1, limit: 10 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first_page.total, 1);
    for round in 0..5 {
        let name = format!("After {round}");
        client
            .update_user(UpdateUserRequest {
                id: user.id.clone(),
                name: name.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        let fetched = client
            .get_user(GetUserRequest {
                id: user.id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .user
            .unwrap();
        assert_eq!(fetched.name, name);
        let listed = client
            .list_users(ListUsersRequest { page: 1, limit: 10 })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.users[0].name, name, "list after update");
    }
    let second = app.create("Second", &unique_email(), 30).await.unwrap();
    let listed = client
        .list_users(ListUsersRequest { page: 1, limit: 10 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total, 2, "list after create");
    assert_eq!(listed.users[0].id, second.id);
    client
        .delete_user(DeleteUserRequest {
            id: second.id.clone(),
        })
        .await
        .unwrap();
    let listed = client
        .list_users(ListUsersRequest { page: 1, limit: 10 })
        .await
        .unwrap()
        .into_inner();
    let ids: HashSet<_> = listed.users.iter().map(|u| u.id.clone()).collect();
    assert_eq!(listed.total, 1, "list after delete");
    assert!(!ids.contains(&second.id));
    app.teardown().await;
}

async fn test_error_maps_http_statuses(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.client.clone();
    let cases = [
        ("400", Code::InvalidArgument),
        ("401", Code::Unauthenticated),
        ("403", Code::PermissionDenied),
        ("404", Code::NotFound),
        ("409", Code::AlreadyExists),
        ("429", Code::ResourceExhausted),
        ("500", Code::Internal),
        ("501", Code::Unimplemented),
        ("503", Code::Unavailable),
        ("504", Code::DeadlineExceeded),
        ("299", Code::Internal),
        ("teapot", Code::Internal),
    ];
    for (http, code) in cases {
        let status = client
            .test_error(meshgate_proto::user::TestErrorRequest {
                status_code: http.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{http}");
        let info = status
            .get_error_details()
            .error_info()
            .cloned()
            .expect("ErrorInfo details");
        let trace_id = &info.metadata["trace_id"];
        assert_eq!(
            trace_id.len(),
            32,
            "a trace id is generated when none comes in"
        );
        assert!(status.message().contains(trace_id.as_str()));
    }
    app.teardown().await;
}
