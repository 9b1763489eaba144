//! The input rules of issue 12 (items 6, 7) and the ListUsers total (item 10), on both
//! backends: control characters in names, email identity without letter case, the contract
//! migration repairing a database meshgate filled before these rules, the trigger-kept total.

use std::borrow::Cow;
use std::sync::Arc;

use meshgate_proto::user::{CreateUserRequest, ListUsersRequest, UpdateUserRequest};
use sqlx::migrate::Migrator;
use sqlx::{Connection, Executor};
use tokio::sync::Barrier;
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{
    Backend, TestApp, TestDatabase, spawn_app, spawn_configured, wait_for_lock_waiters,
};
use crate::on_both_backends;

on_both_backends!(
    control_characters_in_a_name_are_invalid_argument,
    emails_are_one_identity_whatever_their_letter_case,
    concurrent_creates_of_case_variants_exactly_one_wins,
    a_database_filled_before_the_rules_is_repaired_by_the_contract_migration,
    list_total_follows_every_write,
);

fn violated_fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .expect("google.rpc.BadRequest details")
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect()
}

async fn total(app: &TestApp, limit: i32) -> i32 {
    app.client
        .clone()
        .list_users(ListUsersRequest { page: 1, limit })
        .await
        .unwrap()
        .into_inner()
        .total
}

async fn control_characters_in_a_name_are_invalid_argument(backend: Backend) {
    let app = spawn_app(backend).await;
    // NUL used to reach PostgreSQL and come back as INTERNAL.
    for name in [
        "a\u{0}b",
        "Ada\tLovelace",
        "two\nlines",
        "bell\u{7}",
        "c1\u{85}x",
    ] {
        let status = app.create(name, "ok@example.com", 30).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{name:?}");
        assert_eq!(violated_fields(&status), ["name"], "{name:?}");
        assert!(
            status.message().contains("control characters"),
            "{}",
            status.message()
        );
    }
    let user = app.create("  Ada\r\n", "ok@example.com", 30).await.unwrap();
    assert_eq!(
        user.name, "Ada",
        "surrounding whitespace is trimmed, not refused"
    );
    let status = app
        .client
        .clone()
        .update_user(UpdateUserRequest {
            id: user.id,
            name: "x\u{0}y".into(),
            email: String::new(),
            age: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), violated_fields(&status)),
        (Code::InvalidArgument, vec!["name".to_owned()])
    );
    assert_eq!(total(&app, 10).await, 1);
    app.teardown().await;
}

async fn emails_are_one_identity_whatever_their_letter_case(backend: Backend) {
    let app = spawn_app(backend).await;
    let first = app.create("Dee", "d@EXAMPLE.COM", 40).await.unwrap();
    assert_eq!(first.email, "d@example.com", "the domain is lower-cased");
    for spelling in ["d@example.com", "d@Example.Com", "D@example.com"] {
        let status = app.create("Copy", spelling, 40).await.unwrap_err();
        assert_eq!(status.code(), Code::AlreadyExists, "{spelling}");
    }
    let mixed = app
        .create("Mixed", "Mixed.Case@Example.org", 30)
        .await
        .unwrap();
    assert_eq!(
        mixed.email, "Mixed.Case@example.org",
        "the local part keeps its case"
    );
    let status = app
        .client
        .clone()
        .update_user(UpdateUserRequest {
            id: mixed.id.clone(),
            name: String::new(),
            email: "D@EXAMPLE.com".into(),
            age: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    // Its own address in another case is not someone else's.
    let renamed = app
        .client
        .clone()
        .update_user(UpdateUserRequest {
            id: mixed.id,
            name: String::new(),
            email: "mixed.case@EXAMPLE.org".into(),
            age: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(renamed.email, "mixed.case@example.org");
    assert_eq!(total(&app, 10).await, 2);
    app.teardown().await;
}

async fn concurrent_creates_of_case_variants_exactly_one_wins(backend: Backend) {
    let app = spawn_app(backend).await;
    let spellings = [
        "race@example.com",
        "RACE@example.com",
        "Race@Example.Com",
        "race@EXAMPLE.COM",
    ];
    let start = Arc::new(Barrier::new(spellings.len() * 4));
    let attempts: Vec<_> = (0..spellings.len() * 4)
        .map(|n| {
            let mut client = app.client.clone();
            let email = spellings[n % spellings.len()].to_owned();
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                client
                    .create_user(CreateUserRequest {
                        name: format!("Racer {n}"),
                        email,
                        age: 30,
                    })
                    .await
                    .map(drop)
                    .map_err(|status| status.code())
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for attempt in attempts {
        outcomes.push(attempt.await.unwrap());
    }
    let won = outcomes.iter().filter(|o| o.is_ok()).count();
    let taken = outcomes
        .iter()
        .filter(|o| **o == Err(Code::AlreadyExists))
        .count();
    assert_eq!((won, taken), (1, outcomes.len() - 1), "{outcomes:?}");
    assert_eq!(total(&app, 10).await, 1);
    app.teardown().await;
}

/// Rows written by meshgate before these rules, on a database migrated by the release before
/// them: every migration except this change's (20261130000100–199), so those then run after
/// later ones (20261130000300), as on any database that release created.
const BEFORE_THE_RULES: [(&str, &str, &str, i64); 4] = [
    (
        "00000000-0000-4000-8000-0000000000a1",
        "Dee",
        "d@example.com",
        1_700_000_001,
    ),
    (
        "00000000-0000-4000-8000-0000000000a2",
        "Dee Again",
        "D@EXAMPLE.COM",
        1_700_000_002,
    ),
    (
        "00000000-0000-4000-8000-0000000000a3",
        "Tab\tName",
        "tab@example.com",
        1_700_000_003,
    ),
    (
        "00000000-0000-4000-8000-0000000000a4",
        "Bell\u{7}",
        "bell@Example.com",
        1_700_000_004,
    ),
];

fn previous_release(all: Migrator) -> Migrator {
    let this_change = 20261130000100..20261130000200;
    Migrator {
        migrations: Cow::Owned(
            all.iter()
                .filter(|m| !this_change.contains(&m.version))
                .cloned()
                .collect(),
        ),
        ..Migrator::DEFAULT
    }
}

async fn a_database_filled_before_the_rules_is_repaired_by_the_contract_migration(
    backend: Backend,
) {
    let app = match backend {
        Backend::Postgres => {
            let database = TestDatabase::create().await;
            let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
            previous_release(sqlx::migrate!("../migrations/postgres"))
                .run(&pool)
                .await
                .unwrap();
            for (id, name, email, created) in BEFORE_THE_RULES {
                sqlx::query(
                    "INSERT INTO users (id, name, email, age, created_at) \
                     VALUES ($1::uuid, $2, $3, 30, to_timestamp($4))",
                )
                .bind(id)
                .bind(name)
                .bind(email)
                .bind(created as f64)
                .execute(&pool)
                .await
                .unwrap();
            }
            pool.close().await;
            let url = database.url.clone();
            spawn_configured(Some(database), move |config| {
                config.database_url = Some(url)
            })
            .await
        }
        Backend::Sqlite => {
            let dir =
                std::env::temp_dir().join(format!("user-service-rules-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("users.db");
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true);
            let mut connection = sqlx::SqliteConnection::connect_with(&options)
                .await
                .unwrap();
            previous_release(sqlx::migrate!("../migrations/sqlite"))
                .run(&mut connection)
                .await
                .unwrap();
            for (id, name, email, created) in BEFORE_THE_RULES {
                sqlx::query(
                    "INSERT INTO users (id, name, email, age, created_at, updated_at) \
                     VALUES (?1, ?2, ?3, 30, ?4, ?4)",
                )
                .bind(id)
                .bind(name)
                .bind(email)
                .bind(created)
                .execute(&mut connection)
                .await
                .unwrap();
            }
            connection.close().await.unwrap();
            let mut app = spawn_configured(None, move |config| config.sqlite_path = path).await;
            app.remove_dir_on_teardown(dir);
            app
        }
    };
    let get = |id: &'static str| {
        let mut client = app.client.clone();
        async move {
            client
                .get_user(meshgate_proto::user::GetUserRequest { id: id.to_owned() })
                .await
                .unwrap()
                .into_inner()
                .user
                .unwrap()
        }
    };
    let [dee, again, tab, bell] = BEFORE_THE_RULES.map(|row| row.0);
    assert_eq!(
        get(dee).await.email,
        "d@example.com",
        "the oldest keeps the address"
    );
    assert_eq!(get(again).await.email, format!("{again}@duplicate.invalid"));
    assert_eq!(get(tab).await.name, "Tab Name");
    let bell = get(bell).await;
    assert_eq!(
        (bell.name.as_str(), bell.email.as_str()),
        ("Bell", "bell@example.com")
    );
    // The later migration's column and trigger survived this change's running after it.
    let updated = app
        .client
        .clone()
        .update_user(UpdateUserRequest {
            id: dee.to_owned(),
            name: String::new(),
            email: String::new(),
            age: 31,
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!((updated.age, get(dee).await.age), (31, 31));
    let status = app
        .create("Dee Three", "D@example.COM", 30)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(total(&app, 10).await, 4);
    app.teardown().await;
}

async fn list_total_follows_every_write(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(
            app.create(&format!("U{n}"), &format!("u{n}@example.com"), 30)
                .await
                .unwrap()
                .id,
        );
    }
    for id in ids.drain(..2) {
        app.client
            .clone()
            .delete_user(meshgate_proto::user::DeleteUserRequest { id })
            .await
            .unwrap();
    }
    assert_eq!(total(&app, 10).await, 4);
    let past_the_end = app
        .client
        .clone()
        .list_users(ListUsersRequest {
            page: 50,
            limit: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((past_the_end.users.len(), past_the_end.total), (0, 4));
    if backend == Backend::Postgres {
        // Writes that bypass the service (the old server during the cut-over) are counted too;
        // a page size not read before goes to the database, not to a cached page.
        let url = app.database_url().unwrap().to_owned();
        let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
        db.execute(
            "INSERT INTO users (name, email, age) SELECT 'bulk ' || n, 'bulk' || n || '@example.com', 30 \
             FROM generate_series(1, 3) AS n",
        )
        .await
        .unwrap();
        assert_eq!(total(&app, 11).await, 7);
        db.execute("TRUNCATE users").await.unwrap();
        assert_eq!(total(&app, 12).await, 0);
    }
    app.teardown().await;
}

/// Two folds of the PostgreSQL count at once (forced: the second waits on rows the first holds),
/// each in a transaction that also inserts a user: the total stays exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_count_folds_keep_the_total_exact() {
    let app = spawn_app(Backend::Postgres).await;
    for n in 0..3 {
        app.create(&format!("U{n}"), &format!("u{n}@example.com"), 30)
            .await
            .unwrap();
    }
    let url = app.database_url().unwrap().to_owned();
    let insert = |n: u32| {
        sqlx::query("INSERT INTO users (name, email, age) VALUES ($1, $2, 30)")
            .bind(format!("Folder {n}"))
            .bind(format!("folder{n}@example.com"))
    };
    let mut first = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut first_tx = first.begin().await.unwrap();
    insert(1).execute(&mut *first_tx).await.unwrap();
    sqlx::query("SELECT users_count_fold()")
        .execute(&mut *first_tx)
        .await
        .unwrap();

    let mut second = sqlx::PgConnection::connect(&url).await.unwrap();
    let folding = tokio::spawn(async move {
        let mut tx = second.begin().await.unwrap();
        insert(2).execute(&mut *tx).await.unwrap();
        sqlx::query("SELECT users_count_fold()")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    });
    // The second fold waits for the rows the first one holds.
    wait_for_lock_waiters(&url, 1).await;
    first_tx.commit().await.unwrap();
    folding.await.unwrap();

    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&mut first)
        .await
        .unwrap();
    assert_eq!(rows, 5);
    assert_eq!(
        total(&app, 13).await,
        5,
        "a page size not read before: from the database"
    );
    app.teardown().await;
}
