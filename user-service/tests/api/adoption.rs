//! Adopting the replaced Go service's database (issue 18): a real PostgreSQL database built from
//! its goose schema with rows in it (`fixtures/legacy_goose.sql`), `user-service migrate` on it,
//! the old server's statements beside meshgate during the overlap, the contract phase, and the
//! adopted users served. Each test has its own database.

use std::process::Output;
use std::sync::Arc;

use meshgate_proto::user::{
    DeleteUserRequest, GetUserRequest, ListUsersRequest, UpdateUserRequest, User,
};
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{Connection, Executor, Row};
use tonic::Code;
use user_service::metrics::Metrics;
use user_service::startup::open_database;
use user_service::store::postgres::MIGRATE_LOCK_KEY;

use crate::helpers::{TestApp, TestDatabase, base_config, spawn_configured, wait_for_lock_waiters};

const FIXTURE: &str = include_str!("fixtures/legacy_goose.sql");
const BINARY: &str = env!("CARGO_BIN_EXE_user-service");

/// Fixture ids (see the fixture's comments).
const ADA: &str = "00000000-0000-4000-8000-000000000001";
const GRACE: &str = "00000000-0000-4000-8000-000000000002";
const DEE: &str = "00000000-0000-4000-8000-000000000004";
const DEE_AGAIN: &str = "00000000-0000-4000-8000-000000000005";
const DEE_THRICE: &str = "00000000-0000-4000-8000-000000000006";
const EDSGER: &str = "00000000-0000-4000-8000-000000000007";
const HUBERT: &str = "00000000-0000-4000-8000-000000000008";
const NAMELESS: &str = "00000000-0000-4000-8000-000000000009";
const BLANK: &str = "00000000-0000-4000-8000-00000000000a";
const LINE_BREAK: &str = "00000000-0000-4000-8000-00000000000b";
const SPACED: &str = "00000000-0000-4000-8000-00000000000c";
const TYPO: &str = "00000000-0000-4000-8000-00000000000d";
const NULL_TIME: &str = "00000000-0000-4000-8000-00000000000e";
const FIXTURE_ROWS: i32 = 15;

/// A fresh database holding the fixture.
async fn legacy_database() -> TestDatabase {
    let database = TestDatabase::create().await;
    let mut connection = connect(&database).await;
    sqlx::raw_sql(FIXTURE)
        .execute(&mut connection)
        .await
        .expect("the legacy fixture loads");
    database
}

async fn connect(database: &TestDatabase) -> PgConnection {
    PgConnection::connect(&database.url)
        .await
        .expect("the test database accepts connections")
}

/// `user-service migrate [args]`, the binary operators run (the Kubernetes Job).
async fn migrate_command(url: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(BINARY)
        .env_clear()
        .env("DATABASE_URL", url)
        .env("LOG_FORMAT", "json")
        .arg("migrate")
        .args(args)
        .output()
        .await
        .expect("the binary runs")
}

fn assert_success(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "migrate failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The library path `--migrate-on-start` takes.
async fn migrate(url: &str, contract: bool) -> anyhow::Result<()> {
    let mut config = base_config();
    config.database_url = Some(url.to_owned());
    let store = open_database(&config, Arc::new(Metrics::new()))?;
    let outcome = if contract {
        store.contract().await
    } else {
        store.migrate().await
    };
    store.close().await;
    outcome
}

/// The service on an existing database, with one pooled connection (so a statement it prepared
/// is the one it runs again).
async fn serve(database: TestDatabase) -> TestApp {
    let url = database.url.clone();
    spawn_configured(Some(database), move |config| {
        config.database_url = Some(url);
        config.migrate_on_start = false;
        config.db_max_connections = 1;
    })
    .await
}

/// Everything about `users` and its neighbours that a schema change would show, one line each.
async fn schema(connection: &mut PgConnection) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT 'column ' || attname || ' ' || format_type(atttypid, atttypmod) \
                || CASE WHEN attnotnull THEN ' not null' ELSE '' END \
                || COALESCE(' default ' || pg_get_expr(d.adbin, d.adrelid), '') \
         FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
         WHERE attrelid = 'users'::regclass AND attnum > 0 AND NOT attisdropped \
         UNION ALL SELECT 'constraint ' || conname || ' ' || pg_get_constraintdef(oid) \
         FROM pg_constraint WHERE conrelid = 'users'::regclass \
         UNION ALL SELECT 'index ' || pg_get_indexdef(indexrelid) FROM pg_index \
         WHERE indrelid = 'users'::regclass \
         UNION ALL SELECT 'trigger ' || pg_get_triggerdef(oid) FROM pg_trigger \
         WHERE tgrelid = 'users'::regclass AND NOT tgisinternal \
         UNION ALL SELECT 'function ' || proname || ' ' || md5(prosrc) FROM pg_proc p \
         WHERE pronamespace = current_schema()::regnamespace \
           AND NOT EXISTS (SELECT 1 FROM pg_depend WHERE objid = p.oid AND deptype = 'e') \
         UNION ALL SELECT 'table ' || relname FROM pg_class \
         WHERE relnamespace = current_schema()::regnamespace AND relkind = 'r' \
         ORDER BY 1",
    )
    .fetch_all(connection)
    .await
    .unwrap()
}

/// The schema, every row of every table meshgate keeps, and sqlx's history.
async fn snapshot(connection: &mut PgConnection) -> Vec<String> {
    let mut lines = schema(connection).await;
    for query in [
        "SELECT json_agg(u ORDER BY id)::text FROM users u",
        "SELECT sum(n)::text FROM users_count",
        "SELECT json_agg(l ORDER BY id)::text FROM users_repair_log l",
        "SELECT json_agg(a)::text FROM legacy_adoption a",
        "SELECT json_agg(json_build_array(version, success, checksum, installed_on) ORDER BY version)::text \
         FROM _sqlx_migrations",
    ] {
        let rows: Option<String> = sqlx::query_scalar(query)
            .fetch_one(&mut *connection)
            .await
            .unwrap();
        lines.push(rows.unwrap_or_default());
    }
    lines
}

/// `id → (name, email, age, created_at)` of every user, as PostgreSQL prints them.
async fn rows(connection: &mut PgConnection) -> Vec<(String, String, String, i32, String)> {
    sqlx::query_as(
        "SELECT id::text, name::text, email::text, age, created_at::text FROM users ORDER BY id",
    )
    .fetch_all(connection)
    .await
    .unwrap()
}

async fn applied_versions(connection: &mut PgConnection) -> Vec<i64> {
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(connection)
        .await
        .unwrap()
}

/// The replaced Go server as the database sees it: one connection with its statements prepared
/// once and reused (pgx's statement cache), explicit column lists, ids and timestamps from the
/// column defaults, the legacy trigger keeping updated_at.
struct LegacyServer {
    connection: PgConnection,
}

impl LegacyServer {
    const INSERT: &str = "INSERT INTO users (name, email, age) VALUES ($1, $2, $3) \
                          RETURNING id, name, email, age, created_at, updated_at";
    const SELECT: &str =
        "SELECT id, name, email, age, created_at, updated_at FROM users WHERE id = $1";
    const UPDATE: &str = "UPDATE users SET name = $2, email = $3, age = $4 WHERE id = $1 \
                          RETURNING id, name, email, age, created_at, updated_at";
    const DELETE: &str = "DELETE FROM users WHERE id = $1";
    const LIST: &str = "SELECT id, name, email, age, created_at, updated_at FROM users \
                        ORDER BY created_at DESC LIMIT $1 OFFSET $2";
    const COUNT: &str = "SELECT COUNT(*) FROM users";

    async fn connect(database: &TestDatabase) -> Self {
        Self {
            connection: connect(database).await,
        }
    }

    async fn create(&mut self, name: &str, email: &str, age: i32) -> Result<String, sqlx::Error> {
        let row = sqlx::query(Self::INSERT)
            .bind(name)
            .bind(email)
            .bind(age)
            .fetch_one(&mut self.connection)
            .await?;
        Ok(row.get::<uuid::Uuid, _>("id").to_string())
    }

    async fn get(&mut self, id: &str) -> Result<PgRow, sqlx::Error> {
        sqlx::query(Self::SELECT)
            .bind(uuid::Uuid::parse_str(id).unwrap())
            .fetch_one(&mut self.connection)
            .await
    }

    async fn update(
        &mut self,
        id: &str,
        name: &str,
        email: &str,
        age: i32,
    ) -> Result<PgRow, sqlx::Error> {
        sqlx::query(Self::UPDATE)
            .bind(uuid::Uuid::parse_str(id).unwrap())
            .bind(name)
            .bind(email)
            .bind(age)
            .fetch_one(&mut self.connection)
            .await
    }

    async fn delete(&mut self, id: &str) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(Self::DELETE)
            .bind(uuid::Uuid::parse_str(id).unwrap())
            .execute(&mut self.connection)
            .await?;
        Ok(done.rows_affected())
    }

    async fn list(&mut self) -> Result<Vec<PgRow>, sqlx::Error> {
        sqlx::query(Self::LIST)
            .bind(10_i64)
            .bind(0_i64)
            .fetch_all(&mut self.connection)
            .await
    }

    async fn count(&mut self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(Self::COUNT)
            .fetch_one(&mut self.connection)
            .await
    }

    /// Runs every statement once, so each is prepared on this connection.
    async fn warm_up(&mut self) {
        let id = self
            .create("Warm Up", "warm.up@example.com", 30)
            .await
            .unwrap();
        self.get(&id).await.unwrap();
        self.update(&id, "Warm Up", "warm.up@example.com", 31)
            .await
            .unwrap();
        self.list().await.unwrap();
        self.count().await.unwrap();
        assert_eq!(self.delete(&id).await.unwrap(), 1);
    }
}

async fn get(app: &TestApp, id: &str) -> Result<User, tonic::Status> {
    let response = app
        .client
        .clone()
        .get_user(GetUserRequest { id: id.to_owned() })
        .await?;
    Ok(response
        .into_inner()
        .user
        .expect("GetUser returns the user"))
}

async fn update_age(app: &TestApp, id: &str, age: i32) -> Result<User, tonic::Status> {
    let response = app
        .client
        .clone()
        .update_user(UpdateUserRequest {
            id: id.to_owned(),
            name: String::new(),
            email: String::new(),
            age,
        })
        .await?;
    Ok(response
        .into_inner()
        .user
        .expect("UpdateUser returns the user"))
}

async fn total(app: &TestApp) -> i32 {
    app.client
        .clone()
        .list_users(ListUsersRequest {
            page: 1,
            limit: 100,
        })
        .await
        .unwrap()
        .into_inner()
        .total
}

/// Every call the service makes, so the pooled connection has each statement prepared.
async fn exercise(app: &TestApp, email: &str) {
    let created = app.create("Exercised", email, 30).await.unwrap();
    get(app, &created.id).await.unwrap();
    update_age(app, &created.id, 31).await.unwrap();
    total(app).await;
    app.client
        .clone()
        .delete_user(DeleteUserRequest { id: created.id })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_database_is_adopted_and_served_beside_the_old_server() {
    let database = legacy_database().await;
    let mut db = connect(&database).await;
    let before = rows(&mut db).await;
    let mut old_server = LegacyServer::connect(&database).await;
    old_server.warm_up().await;

    // Before this change: `relation "users" already exists`.
    let stdout = assert_success(&migrate_command(&database.url, &[]).await);
    assert!(
        stdout.contains("adopting the database of the replaced service"),
        "{stdout}"
    );
    assert!(stdout.contains("contract migrations deferred"), "{stdout}");
    assert!(
        stdout.contains(DEE_AGAIN),
        "the log names the rows the contract will change"
    );

    // Every row kept as it was: the expand phase changes no value.
    assert_eq!(rows(&mut db).await, before);
    let updated_at: String =
        sqlx::query_scalar("SELECT updated_at::text FROM users WHERE id = $1::uuid")
            .bind(NULL_TIME)
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(
        updated_at, "2024-02-14 09:00:00+00",
        "a missing updated_at is the created_at"
    );
    let logged: Vec<(String, String)> =
        sqlx::query_as("SELECT user_id::text, field FROM users_repair_log ORDER BY id")
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert_eq!(logged, [(NULL_TIME.to_owned(), "updated_at".to_owned())]);
    let versions = applied_versions(&mut db).await;
    assert!(
        versions.contains(&20261126000001) && !versions.contains(&20261130000150),
        "{versions:?}"
    );
    let adoption: (String, i64, bool) =
        sqlx::query_as("SELECT source, legacy_version, contracted_at IS NULL FROM legacy_adoption")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(adoption, ("goose".to_owned(), 2, true));

    // The old server's prepared statements keep working on the expanded schema, including
    // values meshgate refuses, which it may write until it is retired.
    let long_name = "L".repeat(150);
    let written = old_server
        .create(&long_name, "ADA@example.com", 44)
        .await
        .unwrap();
    old_server
        .update(&written, &long_name, "ADA@example.com", 45)
        .await
        .unwrap();
    assert_eq!(
        old_server
            .get(GRACE)
            .await
            .unwrap()
            .get::<String, _>("name"),
        "Grace Hopper"
    );
    assert_eq!(old_server.list().await.unwrap().len(), 10);
    assert_eq!(
        old_server.count().await.unwrap(),
        i64::from(FIXTURE_ROWS) + 1
    );

    // meshgate serves the adopted users, and the old server's rows.
    let app = serve(database).await;
    let ada = get(&app, ADA).await.unwrap();
    assert_eq!(
        (
            ada.name.as_str(),
            ada.email.as_str(),
            ada.age,
            ada.created_at
        ),
        ("Ada Lovelace", "ada@example.com", 36, 1_706_778_000)
    );
    assert_eq!(get(&app, &written).await.unwrap().name, long_name);
    assert_eq!(
        get(&app, EDSGER).await.unwrap().email,
        "edsger@EXAMPLE.NL",
        "served as stored"
    );
    assert_eq!(total(&app).await, FIXTURE_ROWS + 1);
    let updated = update_age(&app, GRACE, 86).await.unwrap();
    assert_eq!(updated.age, 86);
    assert!(updated.updated_at > updated.created_at);
    assert_eq!(
        old_server.get(GRACE).await.unwrap().get::<i32, _>("age"),
        86
    );
    app.client
        .clone()
        .delete_user(DeleteUserRequest { id: ADA.to_owned() })
        .await
        .unwrap();
    assert_eq!(get(&app, ADA).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(old_server.delete(&written).await.unwrap(), 1);
    assert_eq!(
        total(&app).await,
        FIXTURE_ROWS - 1,
        "the count follows both servers' writes"
    );
    // The domain is lower-cased, so this is the exact address of an adopted user.
    let taken = app.create("Copy", "d@EXAMPLE.com", 20).await.unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists);
    let created = app.create("New", "new@Example.COM", 20).await.unwrap();
    assert_eq!(created.email, "new@example.com");
    assert!(old_server.get(&created.id).await.is_ok());
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_is_idempotent() {
    let database = legacy_database().await;
    let mut db = connect(&database).await;
    migrate(&database.url, false).await.unwrap();
    let first = snapshot(&mut db).await;
    migrate(&database.url, false).await.unwrap();
    assert_success(&migrate_command(&database.url, &[]).await);
    assert_eq!(
        snapshot(&mut db).await,
        first,
        "running it again changes nothing"
    );
    drop(db);
    database.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_phase_repairs_by_the_rules_and_ends_on_the_fresh_schema() {
    let database = legacy_database().await;
    let mut db = connect(&database).await;
    migrate(&database.url, false).await.unwrap();
    let mut old_server = LegacyServer::connect(&database).await;
    old_server.warm_up().await;
    let before = rows(&mut db).await;
    let url = database.url.clone();

    // meshgate serving across the contract: its prepared statements must survive the column
    // type change (one pooled connection, so the same statements run before and after).
    let app = serve(database).await;
    exercise(&app, "before.contract@example.com").await;

    let stdout = assert_success(&migrate_command(&url, &["--contract"]).await);
    assert!(stdout.contains("contract migrations applied"), "{stdout}");
    exercise(&app, "after.contract@example.com").await;

    // The documented rules, row by row; nothing else changed.
    let after = rows(&mut db).await;
    assert_eq!(after.len(), before.len(), "no row is dropped");
    let changed = |id: &str| {
        let find = |rows: &[(String, String, String, i32, String)]| {
            rows.iter().find(|row| row.0 == id).cloned().unwrap()
        };
        let (old, new) = (find(&before), find(&after));
        assert_eq!((old.3, &old.4), (new.3, &new.4), "age and created_at kept");
        (new.1, new.2)
    };
    let parked = |id: &str| format!("{id}@duplicate.invalid");
    assert_eq!(
        changed(DEE),
        ("Dee".into(), "d@example.com".into()),
        "the oldest keeps it"
    );
    assert_eq!(changed(DEE_AGAIN), ("Dee again".into(), parked(DEE_AGAIN)));
    assert_eq!(
        changed(DEE_THRICE),
        ("Dee thrice".into(), parked(DEE_THRICE))
    );
    assert_eq!(changed(EDSGER).1, "edsger@example.nl");
    let hubert = changed(HUBERT).0;
    assert_eq!(hubert.chars().count(), 100);
    assert!(hubert.starts_with("Wolfeschlegelsteinhausenbergerdorff Wolfe"));
    assert_eq!(
        changed(NAMELESS).0,
        "nameless",
        "an empty name is the email's local part"
    );
    assert_eq!(changed(BLANK).0, "blank");
    assert_eq!(changed(LINE_BREAK).0, "Line Break");
    assert_eq!(changed(SPACED).0, "Spaced Out");
    assert_eq!(
        changed(TYPO),
        ("Typo".into(), "typo.example.com".into()),
        "reported, kept"
    );
    for untouched in [ADA, GRACE] {
        let row = |rows: &[(String, String, String, i32, String)]| {
            rows.iter().find(|row| row.0 == untouched).cloned()
        };
        assert_eq!(row(&after), row(&before));
    }

    // The report: one line per field, with the old and the new value.
    let report: Vec<(String, String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT user_id::text, field, old_value, new_value FROM users_repair_log \
         WHERE field IN ('name', 'email') ORDER BY user_id, field",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    let reported: Vec<_> = report
        .iter()
        .map(|r| (r.0.as_str(), r.1.as_str()))
        .collect();
    assert_eq!(
        reported,
        [
            (DEE_AGAIN, "email"),
            (DEE_THRICE, "email"),
            (EDSGER, "email"),
            (HUBERT, "name"),
            (NAMELESS, "name"),
            (BLANK, "name"),
            (LINE_BREAK, "name"),
            (SPACED, "name"),
            (TYPO, "email"),
        ]
    );
    assert!(
        report
            .iter()
            .any(|r| r.2.as_deref() == Some("D@Example.Com"))
    );
    assert!(
        report.iter().any(|r| r.0 == TYPO && r.3.is_none()),
        "kept: no new value"
    );
    assert!(
        stdout.contains(DEE_THRICE),
        "the log names the repaired rows"
    );

    // The schema is the one meshgate creates (bar the uuid-ossp extension, left installed).
    let fresh = TestDatabase::create().await;
    migrate(&fresh.url, false).await.unwrap();
    let mut fresh_db = connect(&fresh).await;
    assert_eq!(schema(&mut db).await, schema(&mut fresh_db).await);
    drop(fresh_db);
    fresh.drop_database().await;

    // Identity ignores case now, in the database.
    let taken = app
        .create("Dee four", "D@example.com", 20)
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists);
    assert_eq!(total(&app).await, FIXTURE_ROWS);

    // Why the contract waits for the old server's retirement: its cached statements fail now.
    let tripped = old_server.get(GRACE).await.unwrap_err();
    let code = tripped
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned());
    assert_eq!(code.as_deref(), Some("0A000"), "{tripped}");

    // Contracting again changes nothing.
    let settled = snapshot(&mut db).await;
    migrate(&url, true).await.unwrap();
    migrate(&url, false).await.unwrap();
    assert_eq!(snapshot(&mut db).await, settled);
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_table_of_unknown_shape_or_origin_is_refused() {
    // No goose history: not the replaced service's.
    let database = TestDatabase::create().await;
    let mut db = connect(&database).await;
    db.execute("CREATE TABLE users (id uuid PRIMARY KEY, name text, email text, age int, created_at timestamptz, updated_at timestamptz)")
        .await
        .unwrap();
    let output = migrate_command(&database.url, &[]).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to adopt a schema of unknown origin"),
        "{stderr}"
    );
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT relname::text FROM pg_class WHERE relnamespace = current_schema()::regnamespace AND relkind = 'r'",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(tables, ["users"], "nothing was created");

    // goose's history beside a users table of another shape.
    db.execute(
        "CREATE TABLE goose_db_version (id serial PRIMARY KEY, version_id bigint NOT NULL, is_applied boolean NOT NULL); \
         ALTER TABLE users ADD COLUMN password text, DROP COLUMN age",
    )
    .await
    .unwrap();
    let error = migrate(&database.url, false).await.unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains("column age is missing") && message.contains("unexpected column password"),
        "{message}"
    );
    drop(db);
    database.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrate_runs_adopt_once() {
    let database = legacy_database().await;
    let mut holder = connect(&database).await;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATE_LOCK_KEY)
        .execute(&mut holder)
        .await
        .unwrap();
    // Both runs start and queue on the migration lock; then they go one after the other.
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let url = database.url.clone();
            tokio::spawn(async move { migrate(&url, false).await })
        })
        .collect();
    wait_for_lock_waiters(&database.url, 2).await;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATE_LOCK_KEY)
        .execute(&mut holder)
        .await
        .unwrap();
    for run in runs {
        run.await.unwrap().expect("both runs succeed");
    }
    let mut observer = connect(&database).await;
    let adoptions: i64 = sqlx::query_scalar("SELECT count(*) FROM legacy_adoption")
        .fetch_one(&mut observer)
        .await
        .unwrap();
    assert_eq!(adoptions, 1);
    let baseline: i64 =
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE version = 20261126000001")
            .fetch_one(&mut observer)
            .await
            .unwrap();
    assert_eq!(baseline, 1);
    drop((holder, observer));
    database.drop_database().await;
}
