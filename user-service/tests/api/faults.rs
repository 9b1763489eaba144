//! The fault suite: dependencies and instances stopped and killed under real concurrent load,
//! with the counts asserted. Redis and PostgreSQL are throwaway servers of the test's own
//! (`throwaway.rs`); the shared test servers are never touched. Throughput during each outage is
//! measured and printed (`--nocapture`), never asserted: BENCHMARKS.md has the numbers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use edge_gateway::config::GatewayConfig;
use meshgate_proto::user::user_service_client::UserServiceClient;
use meshgate_proto::user::{
    CreateUserRequest, GetUserRequest, ListUsersRequest, UpdateUserRequest, User,
};
use sqlx::Connection;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use user_service::cache::CacheEntry;

use crate::helpers::{
    Backend, TestApp, TestDatabase, ensure_redis, redis_url, scrape, spawn_app_with,
    spawn_configured, spawn_edge, unique_email,
};
use crate::load::{Load, Tally, rate_over};
use crate::process::{ServiceProcess, command};
use crate::throwaway::{ThrowawayPostgres, ThrowawayRedis};

const PHASE: Duration = Duration::from_millis(1500);

async fn create_users(client: &UserServiceClient<Channel>, count: usize) -> Vec<User> {
    let mut users = Vec::new();
    for n in 0..count {
        let response = client
            .clone()
            .create_user(CreateUserRequest {
                name: format!("Fault {n}"),
                email: unique_email(),
                age: 30,
            })
            .await
            .expect("create before the fault");
        users.push(response.into_inner().user.expect("the created user"));
    }
    users
}

fn pick(users: &[User], worker: usize, iteration: u64) -> String {
    let index = (worker * 7919 + usize::try_from(iteration).unwrap_or(0) * 31) % users.len();
    users[index].id.clone()
}

/// GetUser of the users (served from the cache when it is up, else from PostgreSQL).
fn get_users(
    client: UserServiceClient<Channel>,
    users: Arc<Vec<User>>,
) -> impl Fn(
    usize,
    u64,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
+ Send
+ Sync
+ Clone
+ 'static {
    move |worker, iteration| {
        let (mut client, id) = (client.clone(), pick(&users, worker, iteration));
        Box::pin(async move {
            client
                .get_user(GetUserRequest { id })
                .await
                .map(drop)
                .map_err(|status| format!("GetUser: {status:?}"))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_and_killed_under_load_fails_no_read() {
    let mut redis = ThrowawayRedis::start().await;
    let url = redis.url();
    let app = spawn_app_with(Backend::Postgres, |config| {
        config.redis_url = Some(url);
        config.cache_timeout_ms = 100;
        config.cache_breaker_failures = 3;
        config.cache_breaker_cooldown_ms = 200;
    })
    .await;
    let users = Arc::new(create_users(&app.client, 40).await);
    let (reads, writes) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
    let mut load = Load::default();
    load.spawn(6, &reads, get_users(app.client.clone(), users.clone()));
    load.spawn(1, &reads, {
        let client = app.client.clone();
        move |_, iteration| {
            let mut client = client.clone();
            async move {
                let page = i32::try_from(iteration % 4).unwrap_or(0) + 1;
                client
                    .list_users(ListUsersRequest { page, limit: 10 })
                    .await
                    .map(drop)
                    .map_err(|status| format!("ListUsers: {status:?}"))
            }
        }
    });
    load.spawn(1, &writes, {
        let (client, users) = (app.client.clone(), users.clone());
        move |worker, iteration| {
            let (mut client, id) = (client.clone(), pick(&users, worker, iteration));
            async move {
                client
                    .update_user(UpdateUserRequest {
                        id,
                        name: format!("Renamed {iteration}"),
                        ..Default::default()
                    })
                    .await
                    .map(drop)
                    .map_err(|status| format!("UpdateUser: {status:?}"))
            }
        }
    });

    let open = r#"user_cache_breaker_state{state="open"} 1"#;
    let closed = r#"user_cache_breaker_state{state="closed"} 1"#;
    let normal = rate_over(&reads, PHASE).await;
    let mut outage = Vec::new();
    for fault in ["STOP", "TERM", "KILL"] {
        redis.signal(fault).await;
        app.wait_for_metric(open).await;
        outage.push((fault, rate_over(&reads, PHASE).await));
        if fault == "STOP" {
            redis.signal("CONT").await;
        } else {
            redis.restart().await;
        }
        app.wait_for_metric(closed).await;
        app.wait_for_metric("user_cache_repairs_pending 0").await;
    }
    let recovered = rate_over(&reads, PHASE).await;
    load.stop().await;

    eprintln!(
        "redis faults: reads/s normal {normal:.0}, {}, recovered {recovered:.0}; reads ok {} failed {}, writes ok {} failed {}",
        outage
            .iter()
            .map(|(fault, rate)| format!("SIG{fault} {rate:.0} ({:.0}%)", 100.0 * rate / normal))
            .collect::<Vec<_>>()
            .join(", "),
        reads.ok(),
        reads.failed(),
        writes.ok(),
        writes.failed()
    );
    assert_eq!(reads.failed(), 0, "{:?}", reads.failures());
    assert_eq!(writes.failed(), 0, "{:?}", writes.failures());
    assert!(reads.ok() > 0 && writes.ok() > 0);
    // The writes made while Redis was frozen were repaired: every cached user is the stored one.
    assert_cache_matches_database(&app, &users).await;
    app.teardown().await;
}

/// Every user's cache entry (read from Redis directly) equals its row.
async fn assert_cache_matches_database(app: &TestApp, users: &[User]) {
    let url = app.redis_url.clone().expect("a Redis-backed app");
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let mut database = sqlx::PgConnection::connect(app.database_url().unwrap())
        .await
        .unwrap();
    for user in users {
        let key = format!("{}user:{}", app.key_prefix, user.id);
        let bytes: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        let Some(CacheEntry::User(cached)) = bytes.as_deref().and_then(CacheEntry::decode) else {
            continue;
        };
        let (name, version): (String, i64) =
            sqlx::query_as("SELECT name, version FROM users WHERE id = $1::uuid")
                .bind(&user.id)
                .fetch_one(&mut database)
                .await
                .unwrap();
        assert_eq!(
            (cached.name.as_str(), cached.version.get()),
            (name.as_str(), version),
            "user {}",
            user.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_and_started_under_load_keeps_every_acknowledged_write() {
    ensure_redis().await;
    let postgres = ThrowawayPostgres::start().await;
    postgres.create_database("users").await;
    let url = postgres.url("users");
    let app = spawn_configured(None, |config| {
        config.database_url = Some(url.clone());
        config.redis_url = Some(redis_url());
        config.readiness_failure_threshold = 3;
        config.health_probe_interval_ms = 100;
        config.db_acquire_timeout_ms = 300;
    })
    .await;
    app.wait_for_health(ServingStatus::Serving).await;
    let users = Arc::new(create_users(&app.client, 20).await);
    for user in users.iter() {
        // Cached now: these reads must survive the outage (the degraded mode).
        app.client
            .clone()
            .get_user(GetUserRequest {
                id: user.id.clone(),
            })
            .await
            .unwrap();
    }

    let (cached_reads, writes) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(Mutex::new(Vec::new()));
    let mut load = Load::default();
    load.spawn(
        4,
        &cached_reads,
        get_users(app.client.clone(), users.clone()),
    );
    load.spawn(3, &writes, {
        let (client, acknowledged, refused) =
            (app.client.clone(), acknowledged.clone(), refused.clone());
        move |_, _| {
            let (mut client, acknowledged, refused) =
                (client.clone(), acknowledged.clone(), refused.clone());
            async move {
                let created = client
                    .create_user(CreateUserRequest {
                        name: "Written".into(),
                        email: unique_email(),
                        age: 30,
                    })
                    .await;
                match created {
                    Ok(response) => {
                        let user = response.into_inner().user.expect("the created user");
                        acknowledged.lock().unwrap().push(user.id);
                        Ok(())
                    }
                    Err(status) => {
                        refused.lock().unwrap().push(status.code());
                        Err(format!("CreateUser: {status:?}"))
                    }
                }
            }
        }
    });

    let normal = rate_over(&writes, PHASE).await;
    postgres.stop_server().await;
    // Readiness goes only after K consecutive failed pings; liveness never goes.
    app.wait_for_service_health("readiness", ServingStatus::NotServing)
        .await;
    let failures_when_withdrawn =
        metric_value(&app.metrics().await, "db_ping_consecutive_failures");
    assert!(failures_when_withdrawn >= 3.0, "{failures_when_withdrawn}");
    assert_eq!(app.health("liveness").await, ServingStatus::Serving);
    assert_eq!(app.health("").await, ServingStatus::NotServing);
    let writes_failed_before = writes.failed();
    let cached_during_outage = rate_over(&cached_reads, PHASE).await;
    assert!(
        writes.failed() > writes_failed_before,
        "writes fail while the database is down"
    );

    postgres.start_server().await;
    app.wait_for_service_health("readiness", ServingStatus::Serving)
        .await;
    let written_before = writes.ok();
    let recovered = rate_over(&writes, PHASE).await;
    assert!(
        writes.ok() > written_before,
        "the service writes again without a restart"
    );
    load.stop().await;

    eprintln!(
        "postgres stop/start: creates/s normal {normal:.0}, recovered {recovered:.0}; cached reads/s during the outage {cached_during_outage:.0}; creates ok {} refused {}; cached reads ok {} failed {}",
        writes.ok(),
        writes.failed(),
        cached_reads.ok(),
        cached_reads.failed()
    );
    assert_eq!(cached_reads.failed(), 0, "{:?}", cached_reads.failures());
    let refused = refused.lock().unwrap().clone();
    assert!(
        refused.iter().all(|code| *code == Code::Unavailable),
        "refused writes say UNAVAILABLE: {refused:?}"
    );
    let acknowledged = acknowledged.lock().unwrap().clone();
    let mut database = sqlx::PgConnection::connect(&url).await.unwrap();
    let ids: Vec<uuid::Uuid> = acknowledged.iter().map(|id| id.parse().unwrap()).collect();
    let present: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE id = ANY($1)")
        .bind(&ids)
        .fetch_one(&mut database)
        .await
        .unwrap();
    assert_eq!(
        present,
        i64::try_from(ids.len()).unwrap(),
        "every acknowledged create is stored"
    );
    database.close().await.unwrap();
    app.teardown().await;
}

fn metric_value(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{name} not in the scrape"))
}

/// Two instances (the real binary) behind the real edge gateway; one is SIGTERMed under load
/// of native gRPC and REST through the edge. Its drain (readiness NOT_SERVING first, still
/// serving for DRAIN_DELAY_MS, then in-flight calls finish) and the edge's health checks
/// together must fail no request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_peer_up_behind_the_edge_fails_no_request() {
    ensure_redis().await;
    let database = TestDatabase::create().await;
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let redis = redis_url();
    let env = [
        ("DATABASE_URL", database.url.as_str()),
        ("REDIS_URL", redis.as_str()),
        ("CACHE_KEY_PREFIX", prefix.as_str()),
        ("HEALTH_PROBE_INTERVAL_MS", "100"),
        // Five edge health-check intervals (200 ms below).
        ("DRAIN_DELAY_MS", "1000"),
        ("SHUTDOWN_GRACE_SECS", "10"),
        ("RUST_LOG", "info"),
    ];
    let migrated = command(&env).arg("migrate").output().await.unwrap();
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    let leaving = ServiceProcess::spawn(command(&env)).await;
    let staying = ServiceProcess::spawn(command(&env)).await;

    let any_port = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let mut config =
        GatewayConfig::for_upstreams(any_port, vec![leaving.grpc_addr, staying.grpc_addr]);
    config.upstream.health_interval = Duration::from_millis(200);
    config.upstream.health_timeout = Duration::from_millis(1000);
    config.timeout = Duration::from_secs(10);
    let mut gateway = spawn_edge(config).await;
    let listen = gateway.state.config.listen;
    let channel = Channel::from_shared(format!("http://{listen}"))
        .unwrap()
        .connect_lazy();
    let client = UserServiceClient::new(channel);
    let http = reqwest::Client::new();
    // The edge is up and both instances take traffic before the SIGTERM.
    let mut users = Vec::new();
    for _ in 0..1000 {
        let created = client
            .clone()
            .create_user(CreateUserRequest {
                name: "Behind the edge".into(),
                email: unique_email(),
                age: 30,
            })
            .await;
        if let Ok(response) = created {
            users.extend(response.into_inner().user);
        }
        let served = |addr| async move {
            let series = r#"grpc_server_handled_total{grpc_code="OK",grpc_method="CreateUser"}"#;
            metric_value_or_zero(&scrape(addr).await, series)
        };
        if users.len() >= 20
            && served(leaving.metrics_addr).await > 0.0
            && served(staying.metrics_addr).await > 0.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(users.len() >= 20, "the edge never served both instances");
    let users = Arc::new(users);

    let (reads, writes) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
    let mut load = Load::default();
    load.spawn(3, &reads, get_users(client.clone(), users.clone()));
    load.spawn(2, &writes, {
        let (client, users) = (client.clone(), users.clone());
        move |worker, iteration| {
            let (mut client, id) = (client.clone(), pick(&users, worker, iteration));
            async move {
                client
                    .update_user(UpdateUserRequest {
                        id,
                        age: i32::try_from(iteration % 100).unwrap_or(0) + 1,
                        ..Default::default()
                    })
                    .await
                    .map(drop)
                    .map_err(|status| format!("UpdateUser: {status:?}"))
            }
        }
    });
    load.spawn(2, &reads, {
        let (http, users) = (http.clone(), users.clone());
        move |worker, iteration| {
            let (http, id) = (http.clone(), pick(&users, worker, iteration));
            async move {
                let request = http.get(format!("http://{listen}/v1/users/{id}"));
                expect_status("REST GET", request, 200).await
            }
        }
    });
    load.spawn(1, &writes, {
        let http = http.clone();
        move |_, _| {
            let http = http.clone();
            async move {
                let body =
                    serde_json::json!({"name": "Via REST", "email": unique_email(), "age": 40});
                let request = http.post(format!("http://{listen}/v1/users")).json(&body);
                expect_status("REST POST", request, 201).await
            }
        }
    });

    let before = rate_over(&reads, PHASE).await;
    leaving.signal("TERM").await;
    let (status, log) = leaving.exited().await;
    let after = rate_over(&reads, PHASE).await;
    load.stop().await;
    gateway.stop();

    eprintln!(
        "SIGTERM behind the edge: reads/s before {before:.0}, after {after:.0}; reads ok {} failed {}, writes ok {} failed {}",
        reads.ok(),
        reads.failed(),
        writes.ok(),
        writes.failed()
    );
    assert!(status.success(), "the instance exits 0: {status:?}\n{log}");
    assert!(log.contains("draining"), "{log}");
    assert_eq!(reads.failed(), 0, "{:?}", reads.failures());
    assert_eq!(writes.failed(), 0, "{:?}", writes.failures());
    assert!(reads.ok() > 0 && writes.ok() > 0);
    let (status, _) = {
        staying.signal("TERM").await;
        staying.exited().await
    };
    assert!(status.success());
    database.drop_database().await;
}

/// Sends `request`; anything but `status` is a failure naming `what`.
async fn expect_status(
    what: &str,
    request: reqwest::RequestBuilder,
    status: u16,
) -> Result<(), String> {
    let response = request
        .send()
        .await
        .map_err(|error| format!("{what}: {error}"))?;
    if response.status().as_u16() == status {
        return Ok(());
    }
    let got = response.status();
    Err(format!(
        "{what}: {got} {}",
        response.text().await.unwrap_or_default()
    ))
}

fn metric_value_or_zero(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}
