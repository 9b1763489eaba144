//! DNS service discovery against a real DNS server on loopback whose records change while
//! GETs run through the gateway: endpoints appear and disappear without a restart, a removed
//! one drains, SERVFAIL and silence keep the last good set — and no request fails meanwhile.

use std::{net::IpAddr, time::Duration};

use edge_gateway::discovery::UpstreamTarget;

use crate::{
    dns_server::{Behaviour, TestDns},
    helpers::*,
};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// The last good set (b, c) keeps answering while lookups fail.
async fn b_and_c_still_serve(load: &Load) {
    let (b, c) = (load.served_by("b"), load.served_by("c"));
    load.run_for(200).await;
    assert!(
        load.served_by("b") > b && load.served_by("c") > c,
        "b and c still serve"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_the_dns_records_under_load_with_no_failed_request() {
    let dns = TestDns::start(1).await;
    let (port, backends) = Backend::start_on_ips(
        &["a", "b", "c"],
        &[ip("127.0.0.2"), ip("127.0.0.3"), ip("127.0.0.4")],
    )
    .await;
    let name = "users.discovery.test";
    dns.set(name, &[ip("127.0.0.2")]);

    let mut config = test_config(&[]);
    config.upstream.targets = vec![UpstreamTarget::parse(&format!("{name}:{port}")).unwrap()];
    config.upstream.dns.nameservers = vec![dns.addr];
    config.upstream.dns.search = Some(Vec::new());
    config.upstream.dns.timeout = Duration::from_millis(200);
    config.upstream.dns.min_refresh = Duration::from_millis(100);
    // The records say 1 s; the ceiling makes it 300 ms.
    config.upstream.dns.max_refresh = Duration::from_millis(300);
    let gw = spawn_gateway_with(config, Default::default()).await;
    let client = h1();
    eventually("the name to resolve (readyz 200)", || async {
        get_status(&client, gw.url("/readyz")).await == 200
    })
    .await;

    let load = Load::start(h2(), gw.url("/v1/sinks/dns"), 8);
    load.run_for(50).await;
    assert!(load.served_by("a") > 0);

    // A second record: a new endpoint, checked, then balanced onto.
    dns.set(name, &[ip("127.0.0.2"), ip("127.0.0.3")]);
    eventually("b to be added", || async { load.served_by("b") > 0 }).await;

    // a leaves the record set (a pod going away; the process still answers what it has).
    dns.set(name, &[ip("127.0.0.3"), ip("127.0.0.4")]);
    eventually("c to be added", || async { load.served_by("c") > 0 }).await;
    let a_before = load.served_by("a");
    load.run_for(200).await;
    let a_after = load.served_by("a");
    assert!(
        a_after <= a_before + 8,
        "a removed from DNS is not picked any more (at most the 8 calls under way finish there): {a_before} → {a_after}"
    );

    // SERVFAIL: the lookups fail, are counted, and the last good set stays.
    let target = format!("{name}:{port}");
    let failed = |target: &str| {
        gw.metric(
            "meshgate_gateway_dns_lookups_total",
            &[("target", target), ("outcome", "failed")],
        )
    };
    dns.behave(Behaviour::ServFail);
    eventually("failed lookups to be counted", || async {
        failed(&target) >= 2.0
    })
    .await;
    b_and_c_still_serve(&load).await;

    // No answer at all (timeouts): the same.
    dns.behave(Behaviour::Silent);
    let before = failed(&target);
    eventually("timed-out lookups to be counted", || async {
        failed(&target) > before
    })
    .await;
    b_and_c_still_serve(&load).await;

    // Answers again, with b gone.
    dns.behave(Behaviour::Answer);
    dns.set(name, &[ip("127.0.0.4")]);
    eventually("b to be removed", || async {
        let b = load.served_by("b");
        load.run_for(100).await;
        load.served_by("b") <= b + 8
    })
    .await;
    assert!(gw.metric("meshgate_gateway_upstream_endpoints", &[]) >= 1.0);

    let stats = load.finish().await;
    assert!(
        stats.failed.is_empty(),
        "{} of {} requests failed: {:?}",
        stats.failed.len(),
        stats.ok + stats.failed.len(),
        &stats.failed[..stats.failed.len().min(10)]
    );
    assert!(dns.queries() > 0);
    drop(backends);
}
