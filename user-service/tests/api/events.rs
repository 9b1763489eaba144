//! Events (issue 16): the transactional outbox on both backends, the relay to a real NATS
//! JetStream and the worker, killed and restarted under writes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use meshgate_proto::user::{
    DeleteUserRequest, ListUserEventsRequest, UpdateUserRequest, UserEvent as WireEvent,
};
use sqlx::Connection;
use sqlx::postgres::PgConnection;
use tonic::Code;
use user_service::events::UserEvent;
use user_service::events::worker;

use crate::helpers::{Backend, TestDatabase, scrape, spawn_app, spawn_configured, unique_email};
use crate::on_both_backends;
use crate::process::{self, ServiceProcess};
use crate::throwaway::ThrowawayNats;

async fn events_of(app: &crate::helpers::TestApp, id: &str) -> Vec<WireEvent> {
    app.client
        .clone()
        .list_user_events(ListUserEventsRequest { id: id.to_owned() })
        .await
        .expect("ListUserEvents answers")
        .into_inner()
        .events
}

/// With no broker, every committed write's event is in the outbox, readable through the API,
/// in version order; a refused write leaves none.
async fn every_committed_write_records_an_event(backend: Backend) {
    let app = spawn_app(backend).await;
    let email = unique_email();
    let mut request = tonic::Request::new(meshgate_proto::user::CreateUserRequest {
        name: "Ada".to_owned(),
        email: email.clone(),
        age: 36,
    });
    let trace_parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    request
        .metadata_mut()
        .insert("traceparent", trace_parent.parse().unwrap());
    let user = app
        .client
        .clone()
        .create_user(request)
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let taken = app.create("Eve", &email, 30).await.unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists);
    app.client
        .clone()
        .update_user(UpdateUserRequest {
            id: user.id.clone(),
            age: 37,
            ..Default::default()
        })
        .await
        .unwrap();
    app.client
        .clone()
        .delete_user(DeleteUserRequest {
            id: user.id.clone(),
        })
        .await
        .unwrap();

    let events = events_of(&app, &user.id).await;
    let summary: Vec<_> = events
        .iter()
        .map(|event| (event.r#type.as_str(), event.version))
        .collect();
    assert_eq!(
        summary,
        [
            ("user.created", 1),
            ("user.updated", 2),
            ("user.deleted", 3)
        ]
    );
    assert_eq!(events[0].user.as_ref().unwrap().email, email);
    assert_eq!(events[1].user.as_ref().unwrap().age, 37);
    assert!(events[2].user.is_none(), "a delete has no snapshot");
    assert!(events.iter().all(|event| event.user_id == user.id));
    // The request's trace continues in its event (a new span of the same trace).
    assert!(
        events[0]
            .trace_parent
            .starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{}",
        events[0].trace_parent
    );
    let distinct: HashSet<_> = events.iter().map(|event| &event.event_id).collect();
    assert_eq!(distinct.len(), 3);

    let bad = app
        .client
        .clone()
        .list_user_events(ListUserEventsRequest {
            id: "not-a-uuid".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    app.wait_for_metric("user_outbox_backlog 3").await;
    app.teardown().await;
}

on_both_backends!(every_committed_write_records_an_event);

/// Redelivery of one event changes nothing: the processed record and the audit row commit
/// together, so the second apply is a no-op.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_event_is_applied_once() {
    let app = spawn_app(Backend::Postgres).await;
    let url = app.database_url().unwrap().to_owned();
    let user = app.create("Ada", &unique_email(), 36).await.unwrap();
    let metrics = std::sync::Arc::new(user_service::metrics::Metrics::new());
    let mut config = crate::helpers::base_config();
    config.database_url = Some(url.clone());
    let database = user_service::startup::open_database(&config, metrics.clone()).unwrap();
    let mut connection = PgConnection::connect(&url).await.unwrap();
    let payload: String = sqlx::query_scalar("SELECT payload FROM user_outbox")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    // Once alone, then twice in one delivered batch: one transaction sees the same event twice.
    all_acknowledged(worker::handle(&database, None, &metrics, &[payload.as_bytes()]).await);
    all_acknowledged(worker::handle(&database, None, &metrics, &[payload.as_bytes(); 2]).await);
    let audit: i64 = sqlx::query_scalar("SELECT count(*) FROM user_events")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(audit, 1);
    let text = metrics_text(&metrics);
    assert!(
        text.contains("user_worker_events_total{result=\"applied\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("user_worker_events_total{result=\"duplicate\"} 2"),
        "{text}"
    );
    // The audit row and the outbox row are the same event: listed once.
    assert_eq!(events_of(&app, &user.id).await.len(), 1);
    // An undecodable event is dropped (acknowledged), not retried forever.
    all_acknowledged(worker::handle(&database, None, &metrics, &[b"{not json".as_slice()]).await);
    // Drift guard of the worker's rows in deploy/observability/METRICS.md (the alerts' series).
    let text = metrics_text(&metrics);
    let problems = meshgate_test_support::metrics_contract::check("user-service-worker", &text);
    assert!(problems.is_empty(), "{problems:#?}\n{text}");
    database.close().await;
    app.teardown().await;
}

/// Forced interleaving: another transaction holds one event's processed-record claim and never
/// finishes (a peer stuck mid-apply). The batch it was delivered in gives up within the lock
/// timeout instead of holding a pooled connection forever; its events are then applied one per
/// transaction, so the other one is applied and only the blocked one is redelivered. Once the
/// claim is gone the retry applies it, and each event is recorded exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_blocked_by_another_claim_gives_up_and_holds_back_only_its_event() {
    let app = spawn_app(Backend::Postgres).await;
    let url = app.database_url().unwrap().to_owned();
    app.create("Ada", &unique_email(), 36).await.unwrap();
    app.create("Bob", &unique_email(), 41).await.unwrap();
    let metrics = std::sync::Arc::new(user_service::metrics::Metrics::new());
    let mut config = crate::helpers::base_config();
    config.database_url = Some(url.clone());
    let database = user_service::startup::open_database(&config, metrics.clone()).unwrap();
    let mut connection = PgConnection::connect(&url).await.unwrap();
    let outbox: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT event_id, payload FROM user_outbox ORDER BY seq")
            .fetch_all(&mut connection)
            .await
            .unwrap();
    let payloads: Vec<&[u8]> = outbox.iter().map(|(_, p)| p.as_bytes()).collect();

    let mut blocker = PgConnection::connect(&url).await.unwrap();
    let mut claim = blocker.begin().await.unwrap();
    sqlx::query("INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2)")
        .bind(worker::CONSUMER)
        .bind(outbox[1].0)
        .execute(&mut *claim)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let outcomes = tokio::time::timeout(
        Duration::from_secs(10),
        worker::handle(&database, None, &metrics, &payloads),
    )
    .await
    .expect("the apply gives up instead of waiting for the claim forever");
    assert!(outcomes[0].is_ok(), "{outcomes:?}");
    assert!(
        outcomes[1].is_err(),
        "applied while another claim held the row"
    );
    // Two lock waits of 1 s: the batch's, then the blocked event's own.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(recorded(&mut connection, outbox[0].0).await, 1);
    assert_eq!(recorded(&mut connection, outbox[1].0).await, 0);
    wait_for(|| {
        let stats = database.pool_stats();
        async move { stats.size == stats.idle }
    })
    .await;

    claim.rollback().await.unwrap();
    all_acknowledged(worker::handle(&database, None, &metrics, &payloads).await);
    for (event_id, _) in &outbox {
        assert_eq!(
            recorded(&mut connection, *event_id).await,
            1,
            "event {event_id}"
        );
    }
    database.close().await;
    app.teardown().await;
}

/// Audit rows of one event.
async fn recorded(connection: &mut PgConnection, event_id: uuid::Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM user_events WHERE event_id = $1")
        .bind(event_id)
        .fetch_one(connection)
        .await
        .unwrap()
}

fn all_acknowledged(outcomes: Vec<Result<(), user_service::domain::StoreError>>) {
    for outcome in outcomes {
        outcome.expect("applied (or dropped as undecodable): acknowledged");
    }
}

fn metrics_text(metrics: &user_service::metrics::Metrics) -> String {
    metrics.render()
}

/// One user's writes, as acknowledged to the client: (version, type).
type Acknowledged = BTreeMap<String, Vec<(i64, &'static str)>>;

async fn write_burst(
    client: &mut meshgate_proto::user::user_service_client::UserServiceClient<
        tonic::transport::Channel,
    >,
    users: usize,
    acknowledged: &mut Acknowledged,
) {
    for n in 0..users {
        let created = client
            .create_user(meshgate_proto::user::CreateUserRequest {
                name: format!("user {n}"),
                email: unique_email(),
                age: 20,
            })
            .await
            .unwrap()
            .into_inner()
            .user
            .unwrap();
        let writes = acknowledged.entry(created.id.clone()).or_default();
        writes.push((1, "user.created"));
        for age in 21..23 {
            client
                .update_user(UpdateUserRequest {
                    id: created.id.clone(),
                    age,
                    ..Default::default()
                })
                .await
                .unwrap();
            let version = writes.last().unwrap().0 + 1;
            writes.push((version, "user.updated"));
        }
        if n % 3 == 0 {
            client
                .delete_user(DeleteUserRequest {
                    id: created.id.clone(),
                })
                .await
                .unwrap();
            writes.push((4, "user.deleted"));
        }
    }
}

fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Writes while the publishing relay is SIGKILLed (another replica takes the lease over), NATS
/// is SIGKILLed and restarted (the backlog waits in the outbox) and the worker is SIGKILLed and
/// restarted: every acknowledged write reaches the stream once and in per-user order, and the
/// worker's audit trail holds each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_survive_relay_nats_and_worker_crashes() {
    let mut nats = ThrowawayNats::start().await;
    let database = TestDatabase::create().await;
    let database_url = database.url.clone();
    let nats_url = nats.url();
    let env = [
        ("DATABASE_URL", database_url.as_str()),
        ("NATS_URL", nats_url.as_str()),
        ("MIGRATE_ON_START", "true"),
    ];

    // Replica A (a child process) starts first and takes the publishing lease.
    let replica_a = ServiceProcess::spawn(process::command(&env)).await;
    wait_for(|| async {
        metric_value(
            &scrape(replica_a.metrics_addr).await,
            "user_outbox_relay_leader",
        ) == Some(1.0)
    })
    .await;
    // Replica B (in process) serves the writes and waits for the lease.
    let url = database_url.clone();
    let nats_for_b = nats_url.clone();
    let app = spawn_configured(Some(database), move |config| {
        config.database_url = Some(url);
        config.nats_url = Some(nats_for_b);
    })
    .await;
    let spawn_worker = || {
        let mut command = process::command(&env);
        command.arg("worker").stdout(std::process::Stdio::null());
        command.spawn().expect("the worker starts")
    };
    let mut worker_process = spawn_worker();

    let mut client = app.client.clone();
    let mut acknowledged = Acknowledged::new();
    write_burst(&mut client, 5, &mut acknowledged).await;
    assert_eq!(
        metric_value(&app.metrics().await, "user_outbox_relay_leader"),
        Some(0.0),
        "one publisher at a time"
    );

    // The relay crashes mid-stream: B takes over.
    replica_a.signal("KILL").await;
    write_burst(&mut client, 5, &mut acknowledged).await;
    app.wait_for_metric("user_outbox_relay_leader 1").await;

    // The worker crashes; NATS crashes: writes still succeed and wait in the outbox.
    worker_process.start_kill().unwrap();
    let _ = worker_process.wait().await;
    nats.kill().await;
    write_burst(&mut client, 5, &mut acknowledged).await;
    // Writes during the outage wait in the outbox, and the gauge shows them.
    wait_for(|| async {
        metric_value(&app.metrics().await, "user_outbox_backlog").unwrap_or(0.0) > 0.0
    })
    .await;

    nats.restart().await;
    let mut worker_process = spawn_worker();
    write_burst(&mut client, 5, &mut acknowledged).await;
    let total: usize = acknowledged.values().map(Vec::len).sum();

    // Everything drains: the outbox empties and the worker records every event.
    let mut connection = PgConnection::connect(app.database_url().unwrap())
        .await
        .unwrap();
    let mut recorded = 0;
    // Bounded generously for a loaded CI machine: the NATS client's reconnect backoff and the
    // killed worker's unacknowledged events (redelivered after the 5 s ack wait) come first.
    for _ in 0..1200 {
        recorded = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM user_events")
            .fetch_one(&mut connection)
            .await
            .unwrap();
        if recorded as usize >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(recorded as usize, total, "the worker recorded every event");
    app.wait_for_metric("user_outbox_backlog 0").await;

    // The audit trail: exactly the acknowledged writes, once each.
    let rows = sqlx::query_as::<_, (String, i64, String)>(
        "SELECT user_id::text, version, event_type FROM user_events ORDER BY user_id, version",
    )
    .fetch_all(&mut connection)
    .await
    .unwrap();
    let mut audited = Acknowledged::new();
    for (user, version, kind) in rows {
        let kind = match kind.as_str() {
            "user.created" => "user.created",
            "user.updated" => "user.updated",
            "user.deleted" => "user.deleted",
            other => panic!("unknown type {other}"),
        };
        audited.entry(user).or_default().push((version, kind));
    }
    assert_eq!(audited, acknowledged);
    let processed: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(processed as usize, total, "each event processed once");

    // The stream: every event once (Nats-Msg-Id dedupe), per-user versions in order.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    let stream = js.get_stream("USERS").await.unwrap();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut seen = HashSet::new();
    let mut order: HashMap<String, Vec<i64>> = HashMap::new();
    while seen.len() < total {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("the stream holds every event")
            .unwrap()
            .unwrap();
        let event = UserEvent::decode(&message.payload).unwrap();
        assert_eq!(message.subject.as_str(), event.kind.subject());
        assert!(seen.insert(event.event_id), "published twice: {event:?}");
        order
            .entry(event.user_id.to_string())
            .or_default()
            .push(event.version);
    }
    for (user, versions) in &order {
        let expected: Vec<i64> = acknowledged[user].iter().map(|(v, _)| *v).collect();
        assert_eq!(versions, &expected, "per-user order of {user}");
    }
    let info = js.get_stream("USERS").await.unwrap().cached_info().clone();
    assert_eq!(
        info.state.messages as usize, total,
        "no duplicates in the stream"
    );

    worker_process.start_kill().unwrap();
    let _ = worker_process.wait().await;
    app.teardown().await;
}

async fn wait_for<F, Fut>(mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..300 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition never held");
}

/// One HTTP/1.1 request to the metrics port: `None` while nothing listens yet.
async fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    Some(response)
}

/// The worker's probes (deploy/kustomize/base/user-service-worker/deployment.yaml): `/livez`
/// answers while its broker is down (a liveness probe must not restart it for a NATS outage),
/// `/metrics` (readiness) serves its registry, other methods are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_answers_its_probes_while_nats_is_down() {
    let database = TestDatabase::create().await;
    let metrics_addr: std::net::SocketAddr = format!("127.0.0.1:{}", crate::throwaway::free_port())
        .parse()
        .unwrap();
    // Nothing listens there: the client keeps reconnecting in the background.
    let dead_nats = format!("nats://127.0.0.1:{}", crate::throwaway::free_port());
    let metrics = metrics_addr.to_string();
    let mut worker_process = process::command(&[
        ("DATABASE_URL", database.url.as_str()),
        ("NATS_URL", dead_nats.as_str()),
        ("MIGRATE_ON_START", "true"),
        ("METRICS_ADDR", metrics.as_str()),
    ])
    .arg("worker")
    .spawn()
    .expect("the worker starts");

    let mut livez = None;
    for _ in 0..300 {
        livez = http(metrics_addr, "GET", "/livez").await;
        if livez.is_some() {
            break;
        }
        if let Some(status) = worker_process.try_wait().unwrap() {
            panic!("the worker exited ({status}) instead of serving its probes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let livez = livez.expect("the worker serves /livez within 30 s");
    assert!(livez.starts_with("HTTP/1.1 200"), "{livez}");
    assert!(livez.ends_with("\r\n\r\nok\n"), "{livez}");
    let scraped = scrape(metrics_addr).await;
    assert!(
        scraped.contains("db_pool_connections{state=\"max\"}"),
        "{scraped}"
    );
    let refused = http(metrics_addr, "POST", "/livez").await.unwrap();
    assert!(refused.starts_with("HTTP/1.1 405"), "{refused}");
    // Still alive and answering a while later, the broker still away.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        worker_process.try_wait().unwrap().is_none(),
        "the worker keeps running without NATS"
    );
    let again = http(metrics_addr, "GET", "/livez").await.unwrap();
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
    worker_process.start_kill().unwrap();
    let _ = worker_process.wait().await;
}

/// On a three-server JetStream cluster (prod's NATS), `NATS_STREAM_REPLICAS` 3 gives `USERS`
/// three copies: a stream created with one before is raised, and a later start asking for one
/// (a dev setting, a stale pod) never lowers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_stream_is_replicated_on_a_cluster() {
    use user_service::events::relay;
    let cluster = ThrowawayNats::cluster(3).await;
    let js = jetstream::new(relay::connect(&cluster[0].url()).await.unwrap());
    // JetStream answers once the servers elected a meta leader.
    let mut created = None;
    for _ in 0..300 {
        match relay::ensure_stream(&js, 1).await {
            Ok(stream) => {
                created = Some(stream);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let mut created = created.expect("the cluster's JetStream answers within 30 s");
    assert_eq!(created.info().await.unwrap().config.num_replicas, 1);

    let mut raised = relay::ensure_stream(&js, 3).await.unwrap();
    assert_eq!(raised.info().await.unwrap().config.num_replicas, 3);
    let mut peers = 0;
    for _ in 0..300 {
        let info = js
            .get_stream("USERS")
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .clone();
        peers = info.cluster.map_or(0, |c| c.replicas.len());
        if peers == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(peers, 2, "a leader and two replicas on the three servers");

    let mut kept = relay::ensure_stream(&js, 1).await.unwrap();
    assert_eq!(
        kept.info().await.unwrap().config.num_replicas,
        3,
        "never lowered"
    );
}
