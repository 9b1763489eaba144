//! Istio's plugin lifecycle on a real guest that traps (test-support's `trapping_guest.wat`,
//! run by wasmtime): `failStrategy` in each phase, and the VM reload after a trap.

use std::sync::{Arc, LazyLock};

use meshgate_filter_host::{
    Chain, FAILURES_COUNTER, FailStrategy, Plugin, PluginOptions, RELOADS_COUNTER, Request,
    Response, Runtime,
};

static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| Runtime::new().expect("wasmtime runtime"));

const PHASES: [&str; 4] = [
    "request-headers",
    "request-body",
    "response-headers",
    "response-body",
];

fn trapping(fail_strategy: FailStrategy) -> (Chain, Arc<Plugin>) {
    let plugin = Plugin::load(
        &RUNTIME,
        "trapping",
        &meshgate_test_support::wasm::trapping_guest(),
        "{}",
        PluginOptions {
            workers: 1,
            fail_strategy,
            ..PluginOptions::default()
        },
    )
    .expect("the trapping guest loads");
    let plugin = Arc::new(plugin);
    (Chain::new(vec![Arc::clone(&plugin)]), plugin)
}

fn rest(trap: Option<&str>) -> Request {
    let request = Request::new("POST", "/v1/users")
        .header("content-type", "application/json")
        .body(r#"{"name":"a"}"#);
    match trap {
        Some(phase) => request.header("x-trap", phase),
        None => request,
    }
}

fn grpc(trap: &str) -> Request {
    Request::new("POST", "/user.UserService/GetUser")
        .header("content-type", "application/grpc")
        .header("x-trap", trap)
        .body(vec![0, 0, 0, 0, 0])
}

fn upstream() -> Response {
    Response::new(200)
        .header("content-type", "application/json")
        .body(r#"{"id":"7"}"#)
}

/// The header the guest adds to every request it serves: its instance's request count.
fn served_count(request: &Request) -> Option<&str> {
    request.header_value("x-trap-guest")
}

/// A request the guest serves normally, and which instance count it got.
fn normal_request(chain: &Chain) -> String {
    let exchange = chain.on_request(rest(None));
    assert!(exchange.local_reply().is_none());
    assert!(exchange.failures().is_empty());
    let count = served_count(exchange.request())
        .expect("the guest served the request")
        .to_owned();
    let done = exchange.on_response(upstream());
    assert_eq!(done.response.status, 200);
    assert_eq!(
        done.response.header_value("x-trap-guest"),
        Some(count.as_str())
    );
    assert!(done.failures.is_empty());
    count
}

fn is_request_phase(phase: &str) -> bool {
    phase.starts_with("request-")
}

#[test]
fn fail_close_answers_503_unavailable_in_every_phase_and_the_next_request_gets_a_fresh_vm() {
    for phase in PHASES {
        let (chain, plugin) = trapping(FailStrategy::FailClose);
        assert_eq!(normal_request(&chain), "1", "{phase}");
        assert_eq!(
            normal_request(&chain),
            "2",
            "{phase}: the same instance serves on"
        );

        let exchange = chain.on_request(rest(Some(phase)));
        let reply = if is_request_phase(phase) {
            let reply = exchange.local_reply().cloned().expect("failed closed");
            assert_eq!(exchange.failures().len(), 1, "{phase}");
            let done = exchange.on_response(reply.clone());
            assert_eq!(done.failures.len(), 1, "{phase}");
            reply
        } else {
            assert!(exchange.local_reply().is_none(), "{phase}");
            let done = exchange.on_response(upstream());
            assert_eq!(done.failures.len(), 1, "{phase}: {:?}", done.failures);
            assert!(done.failures[0].contains("trapping"), "{:?}", done.failures);
            assert!(done.failed_closed, "{phase}");
            done.response
        };
        assert_eq!(reply.status, 503, "{phase}");
        assert_eq!(
            reply.body, br#"{"error":"UNAVAILABLE","message":"filter trapping is unavailable"}"#,
            "{phase}: the reply names the filter, not the trap"
        );
        assert_eq!(reply.header_value("x-trap-guest"), None, "{phase}");
        assert_eq!(plugin.counter(FAILURES_COUNTER), 1, "{phase}");
        assert_eq!(
            plugin.counter(RELOADS_COUNTER),
            0,
            "{phase}: reloaded on next use"
        );

        assert_eq!(
            normal_request(&chain),
            "1",
            "{phase}: the next request is served by a fresh instance"
        );
        assert_eq!(plugin.counter(RELOADS_COUNTER), 1, "{phase}");
        assert_eq!(normal_request(&chain), "2", "{phase}");
        assert_eq!(plugin.counter(FAILURES_COUNTER), 1, "{phase}");
        assert!(
            plugin.logs().iter().any(|line| line.contains("FAIL_CLOSE")),
            "{phase}: {:?}",
            plugin.logs()
        );
        assert!(
            plugin
                .counters()
                .contains(&(FAILURES_COUNTER.to_owned(), 1)),
            "the host's counters are served with the filter's"
        );
    }
}

#[test]
fn fail_close_gives_grpc_a_trailers_only_unavailable() {
    let (chain, _) = trapping(FailStrategy::FailClose);
    let exchange = chain.on_request(grpc("request-headers"));
    let reply = exchange.local_reply().expect("failed closed");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header_value("grpc-status"), Some("14"));
    assert_eq!(reply.header_value("content-type"), Some("application/grpc"));
    assert!(reply.body.is_empty());
}

#[test]
fn fail_open_passes_the_request_and_response_untouched_and_reloads_the_vm() {
    for phase in PHASES {
        let (chain, plugin) = trapping(FailStrategy::FailOpen);
        assert_eq!(normal_request(&chain), "1", "{phase}");

        let sent = rest(Some(phase));
        let exchange = chain.on_request(sent.clone());
        assert!(
            exchange.local_reply().is_none(),
            "{phase}: failing open never answers"
        );
        if is_request_phase(phase) {
            assert_eq!(exchange.failures().len(), 1, "{phase}");
            assert_eq!(
                exchange.request(),
                &sent,
                "{phase}: the guest's change before the trap is dropped"
            );
        } else {
            assert_eq!(served_count(exchange.request()), Some("2"), "{phase}");
        }
        let done = exchange.on_response(upstream());
        assert_eq!(done.failures.len(), 1, "{phase}: {:?}", done.failures);
        if is_request_phase(phase) {
            // The failed filter's stream is gone: its response callbacks do not run.
            assert_eq!(done.response, upstream(), "{phase}");
        } else {
            assert_eq!(
                done.response,
                upstream(),
                "{phase}: the response passes as the upstream sent it"
            );
        }
        assert_eq!(plugin.counter(FAILURES_COUNTER), 1, "{phase}");

        assert_eq!(normal_request(&chain), "1", "{phase}: a fresh instance");
        assert_eq!(plugin.counter(RELOADS_COUNTER), 1, "{phase}");
        assert!(
            plugin.logs().iter().any(|line| line.contains("FAIL_OPEN")),
            "{phase}: {:?}",
            plugin.logs()
        );
    }
}

#[test]
fn the_filters_after_one_that_failed_open_still_run() {
    let (_, first) = trapping(FailStrategy::FailOpen);
    let (_, second) = trapping(FailStrategy::FailOpen);
    let chain = Chain::new(vec![Arc::clone(&first), Arc::clone(&second)]);
    let sent = rest(Some("request-headers"));
    let exchange = chain.on_request(sent.clone());
    // Both see `x-trap: request-headers`: the second failed too, so it ran.
    assert_eq!(exchange.failures().len(), 2);
    assert_eq!(exchange.request(), &sent);
    assert_eq!(first.counter(FAILURES_COUNTER), 1);
    assert_eq!(second.counter(FAILURES_COUNTER), 1);
}
