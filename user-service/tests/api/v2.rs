//! `user.v2.UserService` beside `user.UserService`, on both backends: cursor pages that cover
//! every user exactly once while others are created and deleted between (and during) pages,
//! refused page tokens naming the field, and v1 and v2 answering about the same users.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use meshgate_proto::user::v2::user_service_client::UserServiceClient;
use meshgate_proto::user::v2::{
    CreateUserRequest, DeleteUserRequest, GetUserRequest, ListUserEventsRequest, ListUsersRequest,
    ListUsersResponse, UpdateUserRequest, User,
};
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;

use crate::helpers::{Backend, TestApp, spawn_app, unique_email};
use crate::on_both_backends;

on_both_backends!(
    cursor_pages_cover_every_user_once_while_others_are_written,
    bad_page_tokens_are_invalid_argument_naming_the_field,
    a_token_from_another_database_is_refused,
    v1_and_v2_serve_the_same_users,
);

fn v2(app: &TestApp) -> UserServiceClient<Channel> {
    UserServiceClient::new(app.channel.clone())
}

async fn create(client: &mut UserServiceClient<Channel>, name: &str) -> User {
    client
        .create_user(CreateUserRequest {
            name: name.to_owned(),
            email: unique_email(),
            age: 30,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn list(
    client: &mut UserServiceClient<Channel>,
    page_size: i32,
    page_token: &str,
) -> Result<ListUsersResponse, Status> {
    client
        .list_users(ListUsersRequest {
            page_size,
            page_token: page_token.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The fields a status's `google.rpc.BadRequest` names.
fn violated_fields(status: &Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|bad| {
            bad.field_violations
                .iter()
                .map(|v| v.field.clone())
                .collect()
        })
        .unwrap_or_default()
}

async fn cursor_pages_cover_every_user_once_while_others_are_written(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = v2(&app);
    let mut existing = Vec::new();
    for n in 0..11 {
        existing.push(create(&mut client, &format!("Existing {n}")).await.id);
    }

    // A writer creating users for as long as the walk lasts.
    let (stop, mut stopped) = watch::channel(false);
    let writer = {
        let mut client = client.clone();
        tokio::spawn(async move {
            let mut written = 0;
            while !*stopped.borrow() {
                create(&mut client, &format!("Concurrent {written}")).await;
                written += 1;
                tokio::select! {
                    _ = stopped.changed() => {}
                    () = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
            }
            written
        })
    };

    let mut walked: Vec<String> = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = list(&mut client, 3, &token).await.unwrap();
        pages += 1;
        assert!(page.users.len() <= 3);
        assert!(page.total_size >= 11, "{}", page.total_size);
        walked.extend(page.users.iter().map(|u| u.id.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        // Forced between every two pages: users created (they sort before the cursor, so an
        // offset page would now repeat users) and a user already walked deleted (an offset page
        // would now skip one).
        for n in 0..2 {
            create(&mut client, &format!("Between {pages}.{n}")).await;
        }
        let walked_one = walked.last().unwrap().clone();
        client
            .delete_user(DeleteUserRequest { id: walked_one })
            .await
            .unwrap();
        assert!(pages < 50, "the walk ends");
    }
    stop.send(true).unwrap();
    let concurrent = writer.await.unwrap();

    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &walked {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "users seen twice: {repeated:?}");
    for id in &existing {
        assert_eq!(counts.get(id.as_str()), Some(&1), "{id} seen once");
    }
    // The walk followed the list order: the pre-existing users newest first.
    let order: Vec<_> = walked.iter().filter(|id| existing.contains(id)).collect();
    let newest_first: Vec<_> = existing.iter().rev().collect();
    assert_eq!(order, newest_first);
    assert!(pages >= 4, "{pages} pages of 3 for 11 users");
    assert!(concurrent > 0, "the writer ran during the walk");
    app.teardown().await;
}

async fn bad_page_tokens_are_invalid_argument_naming_the_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = v2(&app);
    for n in 0..3 {
        create(&mut client, &format!("User {n}")).await;
    }
    let issued = list(&mut client, 1, "").await.unwrap().next_page_token;
    assert!(!issued.is_empty());
    let bytes = URL_SAFE_NO_PAD.decode(&issued).unwrap();

    // One character changed: another position under the old signature.
    let mut altered = issued.clone().into_bytes();
    altered[12] = if altered[12] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    // The issued layout with a made-up signature: what a client reading the format would forge.
    let mut forged = bytes[..25].to_vec();
    forged.extend_from_slice(&[0x5a; 32]);
    let forged = URL_SAFE_NO_PAD.encode(forged);

    for (token, says) in [
        ("not a token", "malformed"),
        ("AAAA", "malformed"),
        (&issued[..40], "malformed"),
        (altered.as_str(), "not issued"),
        (forged.as_str(), "not issued"),
    ] {
        let status = list(&mut client, 1, token).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{token:?}");
        assert_eq!(violated_fields(&status), ["page_token"], "{token:?}");
        assert!(
            status.message().contains(says),
            "{token:?}: {}",
            status.message()
        );
        assert!(!status.message().contains("hmac"), "{}", status.message());
    }

    let status = list(&mut client, -1, "").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["page_size"]);
    // Every problem of the request at once.
    let status = list(&mut client, -5, "garbage").await.unwrap_err();
    assert_eq!(violated_fields(&status), ["page_size", "page_token"]);

    // The issued token still works, and sizes above the maximum are served as 100.
    let page = list(&mut client, 1000, &issued).await.unwrap();
    assert_eq!(page.users.len(), 2);
    assert!(page.next_page_token.is_empty());
    app.teardown().await;
}

async fn a_token_from_another_database_is_refused(backend: Backend) {
    let first = spawn_app(backend).await;
    let second = spawn_app(backend).await;
    let (mut one, mut two) = (v2(&first), v2(&second));
    for n in 0..2 {
        create(&mut one, &format!("One {n}")).await;
        create(&mut two, &format!("Two {n}")).await;
    }
    let token = list(&mut one, 1, "").await.unwrap().next_page_token;
    let status = list(&mut two, 1, &token).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["page_token"]);
    assert!(
        status.message().contains("not issued"),
        "{}",
        status.message()
    );
    // On its own database the token still works.
    assert_eq!(list(&mut one, 1, &token).await.unwrap().users.len(), 1);
    first.teardown().await;
    second.teardown().await;
}

async fn v1_and_v2_serve_the_same_users(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut v1 = app.client.clone();
    let mut v2 = v2(&app);
    // Readiness under v2's name too (NOT_SERVING until the first database probe).
    app.wait_for_service_health("user.v2.UserService", ServingStatus::Serving)
        .await;

    // Created through v1, read through v2: the same user, timestamps as Timestamp.
    let email = unique_email();
    let old = app.create("Ada", &email, 36).await.unwrap();
    let new = v2
        .get_user(GetUserRequest { id: old.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (new.name.as_str(), new.email.as_str(), new.age),
        ("Ada", email.as_str(), 36)
    );
    let created = new.created_at.unwrap();
    assert_eq!((created.seconds, created.nanos), (old.created_at, 0));
    assert_eq!(new.updated_at.unwrap().seconds, old.updated_at);

    // Created through v2 (idempotently: the same key answers the same user), read through v1.
    let mut request = Request::new(CreateUserRequest {
        name: "Grace".into(),
        email: unique_email(),
        age: 45,
    });
    request
        .metadata_mut()
        .insert("idempotency-key", "v2-create-1".parse().unwrap());
    let grace = v2.create_user(request).await.unwrap().into_inner();
    let mut again = Request::new(CreateUserRequest {
        name: "Grace".into(),
        email: grace.email.clone(),
        age: 45,
    });
    again
        .metadata_mut()
        .insert("idempotency-key", "v2-create-1".parse().unwrap());
    assert_eq!(
        v2.create_user(again).await.unwrap().into_inner().id,
        grace.id
    );
    let listed = v1
        .list_users(meshgate_proto::user::ListUsersRequest { page: 1, limit: 10 })
        .await
        .unwrap()
        .into_inner();
    let v1_ids: HashSet<_> = listed.users.iter().map(|u| u.id.clone()).collect();
    let v2_ids: HashSet<_> = list(&mut v2, 10, "")
        .await
        .unwrap()
        .users
        .into_iter()
        .map(|u| u.id)
        .collect();
    assert_eq!(v1_ids, v2_ids);
    assert_eq!(v1_ids, HashSet::from([old.id.clone(), grace.id.clone()]));

    // Updated through v2, seen by v1; the same input rules (age 1-149) in both.
    let updated = v2
        .update_user(UpdateUserRequest {
            id: grace.id.clone(),
            name: "Grace Hopper".into(),
            email: String::new(),
            age: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((updated.name.as_str(), updated.age), ("Grace Hopper", 45));
    let seen = v1
        .get_user(meshgate_proto::user::GetUserRequest {
            id: grace.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(seen.name, "Grace Hopper");
    let refused = v2
        .update_user(UpdateUserRequest {
            id: grace.id.clone(),
            name: String::new(),
            email: String::new(),
            age: 150,
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&refused), ["age"]);

    // The audit trail through v2, with millisecond Timestamps.
    let events = v2
        .list_user_events(ListUserEventsRequest {
            id: grace.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let kinds: Vec<_> = events.iter().map(|e| e.r#type.as_str()).collect();
    assert_eq!(kinds, ["user.created", "user.updated"]);
    // `occurred_at` is the service's clock, `created_at` the database's (PostgreSQL's
    // transaction time): a second boundary may fall between the two readings.
    assert!(
        events
            .iter()
            .all(|e| e.occurred_at.unwrap().seconds + 1 >= created.seconds),
        "{events:?} {created:?}"
    );

    // Deleted through v2 (Empty), gone for v1.
    v2.delete_user(DeleteUserRequest {
        id: grace.id.clone(),
    })
    .await
    .unwrap();
    let gone = v1
        .get_user(meshgate_proto::user::GetUserRequest {
            id: grace.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let gone = v2
        .get_user(GetUserRequest { id: grace.id })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let malformed = v2
        .get_user(GetUserRequest { id: "42".into() })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&malformed), ["id"]);

    // Counted apart from v1 in the metrics.
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"grpc_server_handled_total{grpc_code="OK",grpc_method="v2.ListUsers"}"#),
        "{metrics}"
    );
    app.teardown().await;
}
