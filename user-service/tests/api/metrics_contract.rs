//! Drift guard: every user-service row of deploy/observability/METRICS.md (the series the alerts,
//! dashboards and canary analysis query) is scraped from the real /metrics, labels and all.

use meshgate_proto::user::{GetUserRequest, ListUsersRequest};
use meshgate_test_support::metrics_contract as contract;
use meshgate_test_support::wait::ClosedPort;

use crate::helpers::{Backend, spawn_app_with, unique_email};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_contract_rows_are_all_exported() {
    // Redis on a closed port: cache lookups and writes fail, so the error series exist too,
    // next to the gRPC, query and pool series every call produces.
    let closed = ClosedPort::new();
    let app = spawn_app_with(Backend::Postgres, |config| {
        config.redis_url = Some(format!("redis://{}", closed.addr));
    })
    .await;
    let mut client = app.client.clone();
    let user = app.create("Contract", &unique_email(), 30).await.unwrap();
    client
        .get_user(GetUserRequest { id: user.id })
        .await
        .unwrap();
    client
        .list_users(ListUsersRequest { page: 1, limit: 5 })
        .await
        .unwrap();
    let scrape = app.metrics().await;
    let problems = contract::check("user-service", &scrape);
    assert!(problems.is_empty(), "{problems:#?}\n{scrape}");
    app.teardown().await;
}
