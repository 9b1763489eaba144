use std::time::Duration;

use meshgate_filter_host::{BuiltIn, FailStrategy};

use super::*;
use crate::balance::HealthThresholds;

fn load(text: &str) -> Result<GatewayConfig, ConfigError> {
    GatewayConfig::from_file(GatewayConfig::parse_file(text)?, &Overrides::default())
}

#[test]
fn shipped_config_is_valid() {
    let text = include_str!("../../config/gateway.yaml");
    let config = load(text).unwrap();
    assert_eq!(config.listen.port(), 8080);
    assert_eq!(config.metrics_listen.unwrap().port(), 9091);
    assert_eq!(
        config.upstream.targets,
        vec![UpstreamTarget::Address("127.0.0.1:50051".parse().unwrap())]
    );
    // Route timeouts exceed the user-service's database acquire timeout (2 s), so a busy
    // pool answers UNAVAILABLE (503) rather than a gateway timeout (504).
    for (route, timeout) in &config.route_timeouts {
        assert!(*timeout > Duration::from_millis(2_000), "{route}");
    }
    // The replaced facade's REST contract.
    assert_eq!(
        config.json,
        JsonOptions {
            use_proto_field_names: true,
            emit_defaults: true,
            int64_as_number: true,
            ignore_unknown_fields: true,
            error_detail: true,
        }
    );
    let aip = load(include_str!("../../config/gateway-grpc-gateway.yaml")).unwrap();
    assert_eq!(aip.json, JsonOptions::default());
    assert_eq!(aip.listen.port(), 8080);
}

#[test]
fn json_keys_override_the_style() {
    let config =
        load("gateway:\n  json:\n    style: fastapi\n    use_proto_field_names: false\n").unwrap();
    assert!(!config.json.use_proto_field_names);
    assert!(config.json.error_detail && config.json.int64_as_number);
    let config = load("gateway:\n  json:\n    int64_as_number: true\n").unwrap();
    assert!(config.json.int64_as_number && !config.json.error_detail);
    let error = load("gateway:\n  json:\n    style: fast\n")
        .unwrap_err()
        .to_string();
    assert!(error.contains("gateway.json.style"), "{error}");
    assert!(error.contains("fastapi"), "{error}");
}

#[test]
fn resilience_defaults() {
    let config = load("gateway: {}\n").unwrap();
    assert_eq!(
        config.upstream.health_thresholds,
        HealthThresholds {
            unhealthy: 3,
            healthy: 2
        }
    );
    assert_eq!(config.upstream.panic_threshold_percent, 50);
    assert_eq!(config.upstream.outlier.consecutive_failures, 5);
    assert_eq!(config.drain_delay, Duration::from_secs(5));
    assert_eq!(config.connections.max, 4_096);
    assert_eq!(config.connections.max_per_client_ip, 0);
    assert_eq!(
        config.connections.header_read_timeout,
        Duration::from_secs(10)
    );
    assert!(
        config.upstream.dns.nameservers.is_empty(),
        "system resolver by default"
    );
    assert_eq!(config.upstream.dns.min_refresh, Duration::from_secs(1));
    assert_eq!(config.upstream.dns.max_refresh, Duration::from_secs(30));
}

#[test]
fn upstreams_may_be_names_and_nameservers_explicit() {
    let config = load(
        "gateway:\n  upstreams: [\"user-service:50051\", \"10.0.0.7:50051\"]\n  dns:\n    nameservers: [\"127.0.0.1:5353\"]\n    search: [meshgate.svc.cluster.local]\n    ndots: 5\n",
    )
    .unwrap();
    assert_eq!(
        config.upstream.targets[0],
        UpstreamTarget::Name {
            host: "user-service".into(),
            port: 50051
        }
    );
    assert_eq!(
        config.upstream.dns.nameservers,
        vec!["127.0.0.1:5353".parse().unwrap()]
    );
    assert_eq!(config.upstream.dns.ndots, Some(5));
    let overrides = Overrides {
        dns_nameservers: vec!["127.0.0.2:53".into()],
        ..Default::default()
    };
    let config = GatewayConfig::from_file(
        GatewayConfig::parse_file("gateway: {}\n").unwrap(),
        &overrides,
    )
    .unwrap();
    assert_eq!(
        config.upstream.dns.nameservers,
        vec!["127.0.0.2:53".parse().unwrap()]
    );
}

#[test]
fn unknown_key_is_named() {
    let error = load("gateway:\n  cors:\n    allowed_origns: []\n")
        .unwrap_err()
        .to_string();
    assert!(error.contains("allowed_origns"), "{error}");
    assert!(error.contains("gateway.cors"), "{error}");
}

#[test]
fn bad_values_are_named() {
    let cases = [
        ("gateway:\n  listen: nowhere\n", "gateway.listen"),
        ("gateway:\n  upstreams: []\n", "gateway.upstreams"),
        ("gateway:\n  upstreams: [\"x\"]\n", "gateway.upstreams[0]"),
        (
            "gateway:\n  upstreams: [\"a\", \"bad host:1\"]\n",
            "gateway.upstreams[0]",
        ),
        (
            "gateway:\n  upstreams: [\"host:0\"]\n",
            "gateway.upstreams[0]",
        ),
        (
            "gateway:\n  dns: {nameservers: [\"dns.example\"]}\n",
            "gateway.dns.nameservers[0]",
        ),
        (
            "gateway:\n  dns: {search: [\"a b\"]}\n",
            "gateway.dns.search[0]",
        ),
        ("gateway:\n  dns: {ndots: 16}\n", "gateway.dns.ndots"),
        (
            "gateway:\n  dns: {timeout_ms: 0}\n",
            "gateway.dns.timeout_ms",
        ),
        (
            "gateway:\n  dns: {min_refresh_ms: 0}\n",
            "gateway.dns.min_refresh_ms",
        ),
        (
            "gateway:\n  dns: {min_refresh_ms: 5000, max_refresh_ms: 1000}\n",
            "gateway.dns.max_refresh_ms",
        ),
        ("gateway:\n  dns: {nameserver: []}\n", "nameserver"),
        (
            "gateway:\n  health_check: {unhealthy_threshold: 0}\n",
            "gateway.health_check.unhealthy_threshold",
        ),
        (
            "gateway:\n  health_check: {healthy_threshold: 0}\n",
            "gateway.health_check.healthy_threshold",
        ),
        (
            "gateway:\n  load_balancing: {panic_threshold_percent: 101}\n",
            "gateway.load_balancing.panic_threshold_percent",
        ),
        (
            "gateway:\n  outlier_detection: {base_ejection_ms: 0}\n",
            "gateway.outlier_detection.base_ejection_ms",
        ),
        (
            "gateway:\n  outlier_detection: {base_ejection_ms: 2000, max_ejection_ms: 1000}\n",
            "gateway.outlier_detection.max_ejection_ms",
        ),
        (
            "gateway:\n  retry: {budget_window_secs: 61}\n",
            "gateway.retry.budget_window_secs",
        ),
        (
            "gateway:\n  retry: {min_retries_per_second: 4000000000}\n",
            "gateway.retry.min_retries_per_second",
        ),
        (
            "gateway:\n  shutdown: {drain_delay_ms: 300001}\n",
            "gateway.shutdown.drain_delay_ms",
        ),
        (
            "gateway:\n  connections: {max: 0}\n",
            "gateway.connections.max",
        ),
        (
            "gateway:\n  connections: {max: 10, max_per_client_ip: 11}\n",
            "gateway.connections.max_per_client_ip",
        ),
        (
            "gateway:\n  connections: {idle_timeout_ms: 500}\n",
            "gateway.connections.idle_timeout_ms",
        ),
        (
            "gateway:\n  connections: {header_read_timeout_ms: 0}\n",
            "gateway.connections.header_read_timeout_ms",
        ),
        ("gateway:\n  timeout_ms: 0\n", "gateway.timeout_ms"),
        (
            "gateway:\n  retry:\n    budget_ratio: 2\n",
            "gateway.retry.budget_ratio",
        ),
        (
            "gateway:\n  cors:\n    allowed_origins: [\"example.com\"]\n",
            "gateway.cors.allowed_origins[0]",
        ),
        ("server:\n  threads: many\n", "server"),
        (
            "gateway:\n  static_dir: /definitely/not/a/dir\n",
            "gateway.static_dir",
        ),
        (
            "gateway:\n  filters:\n    - {name: \"\", module: a.wasm}\n",
            "gateway.filters[0].name",
        ),
        (
            "gateway:\n  filters:\n    - {name: a, builtin: ratelimit}\n",
            "gateway.filters[0].builtin",
        ),
        (
            "gateway:\n  filters:\n    - {name: a, builtin: bundle, runtime: v8}\n",
            "gateway.filters[0].runtime",
        ),
        (
            "gateway:\n  filters:\n    - {name: a, builtin: bundle, runtime: wasm}\n",
            "gateway.filters[0].module",
        ),
        (
            "gateway:\n  filters:\n    - {name: a, module: a.wasm, runtime: native}\n",
            "gateway.filters[0].builtin",
        ),
        (
            "gateway:\n  filters:\n    - {name: a}\n",
            "gateway.filters[0].module",
        ),
        (
            "gateway:\n  filters:\n    - {name: a, module: a.wasm}\n    - {name: a, module: b.wasm}\n",
            "gateway.filters[1].name",
        ),
        (
            "gateway:\n  filters:\n    - {name: a, module: a.wasm, config: [1]}\n",
            "gateway.filters[0].config",
        ),
        (
            "gateway:\n  filters:\n    - {name: a, module: a.wasm, workers: 0}\n",
            "gateway.filters[0].workers",
        ),
        (
            "gateway:\n  tls: {listen: nowhere, cert_path: c.pem, key_path: k.pem}\n",
            "gateway.tls.listen",
        ),
        (
            "gateway:\n  otlp: {endpoint: \"collector:4317\"}\n",
            "gateway.otlp.endpoint",
        ),
        (
            "gateway:\n  otlp: {endpoint: \"https://collector:4317\"}\n",
            "gateway.otlp.endpoint",
        ),
        (
            "gateway:\n  otlp: {endpoint: \"http://collector:4317\", service_name: \" \"}\n",
            "gateway.otlp.service_name",
        ),
        ("gateway:\n  otlp: {endpont: x}\n", "endpont"),
        (
            "gateway:\n  listen: 127.0.0.1:8443\n  tls: {listen: 127.0.0.1:8443, cert_path: c.pem, key_path: k.pem}\n",
            "gateway.tls.listen",
        ),
        (
            "gateway:\n  tls: {listen: 127.0.0.1:8443, cert_path: /definitely/not/cert.pem, key_path: /definitely/not/key.pem}\n",
            "gateway.tls",
        ),
    ];
    for (text, key) in cases {
        let error = load(text).unwrap_err().to_string();
        assert!(error.contains(key), "{text:?} → {error}");
    }
}

#[test]
fn plaintext_and_tls_may_both_ask_for_any_free_port() {
    // Passes the listen check and stops at the (missing) certificate, naming it.
    let text = "gateway:\n  listen: 127.0.0.1:0\n  tls: {listen: 127.0.0.1:0, cert_path: /definitely/not/cert.pem, key_path: k.pem}\n";
    let error = load(text).unwrap_err().to_string();
    assert!(
        !error.contains("gateway.tls.listen") && error.contains("cert.pem"),
        "{error}"
    );
}

#[test]
fn filter_config_is_handed_over_as_json() {
    let config = load(
        "gateway:\n  filters:\n    - name: rl\n      module: /m/rl.wasm\n      config:\n        mode: shadow\n        rules: [{name: r, requests: 2}]\n",
    )
    .unwrap();
    let spec = &config.filters[0];
    assert_eq!(spec.workers, DEFAULT_FILTER_WORKERS);
    assert_eq!(
        spec.runtime,
        FilterRuntime::Wasm {
            module: "/m/rl.wasm".into()
        }
    );
    let json: serde_json::Value = serde_json::from_str(&spec.config_json).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"mode": "shadow", "rules": [{"name": "r", "requests": 2}]})
    );
}

#[test]
fn fail_strategy_is_the_wasmplugin_field_and_defaults_to_fail_close() {
    let config = load(
        "gateway:\n  filters:\n    - {name: a, builtin: bundle}\n    - {name: b, builtin: bundle, failStrategy: FAIL_OPEN}\n    - {name: c, builtin: bundle, failStrategy: FAIL_CLOSE}\n",
    )
    .unwrap();
    let strategies: Vec<FailStrategy> = config.filters.iter().map(|f| f.fail_strategy).collect();
    assert_eq!(
        strategies,
        [
            FailStrategy::FailClose,
            FailStrategy::FailOpen,
            FailStrategy::FailClose
        ]
    );
    let error =
        load("gateway:\n  filters:\n    - {name: a, builtin: bundle, failStrategy: fail_open}\n")
            .unwrap_err()
            .to_string();
    assert!(
        error.contains("gateway.filters[0].failStrategy")
            && error.contains("\"fail_open\" must be FAIL_CLOSE or FAIL_OPEN"),
        "{error}"
    );
}

#[test]
fn builtin_filters_run_natively_unless_runtime_says_wasm() {
    let config = load(
        "gateway:\n  filters:\n    - {name: all, builtin: bundle, module: f.wasm, config: {}}\n    - {name: rl, builtin: rate-limit, runtime: wasm, module: /m/rl.wasm}\n    - {name: own, module: /m/own.wasm}\n",
    )
    .unwrap();
    let runtimes: Vec<&FilterRuntime> = config.filters.iter().map(|f| &f.runtime).collect();
    assert_eq!(
        runtimes,
        [
            &FilterRuntime::Native(BuiltIn::Bundle),
            &FilterRuntime::Wasm {
                module: "/m/rl.wasm".into()
            },
            &FilterRuntime::Wasm {
                module: "/m/own.wasm".into()
            },
        ]
    );
}

#[test]
fn otlp_is_off_by_default_and_the_env_or_flag_wins() {
    assert_eq!(load("gateway: {}\n").unwrap().otlp, None);
    let file = "gateway:\n  otlp: {endpoint: \"http://file:4317\", service_name: gw-file}\n";
    let from_file = load(file).unwrap().otlp.unwrap();
    assert_eq!(from_file.endpoint, "http://file:4317");
    assert_eq!(from_file.service_name, "gw-file");
    let overrides = Overrides {
        otlp_endpoint: Some("http://env:4317".into()),
        service_name: Some("gw-env".into()),
        ..Default::default()
    };
    let config =
        GatewayConfig::from_file(GatewayConfig::parse_file(file).unwrap(), &overrides).unwrap();
    let settings = config.otlp.unwrap();
    assert_eq!(settings.endpoint, "http://env:4317");
    assert_eq!(settings.service_name, "gw-env");
    // An empty endpoint (e.g. OTEL_EXPORTER_OTLP_ENDPOINT="") turns export off.
    let overrides = Overrides {
        otlp_endpoint: Some(String::new()),
        ..Default::default()
    };
    let config =
        GatewayConfig::from_file(GatewayConfig::parse_file(file).unwrap(), &overrides).unwrap();
    assert_eq!(config.otlp, None);
}

#[test]
fn overrides_win_over_the_file() {
    let file = GatewayConfig::parse_file("gateway:\n  listen: 0.0.0.0:1\n").unwrap();
    let overrides = Overrides {
        listen: Some("127.0.0.1:2".into()),
        upstreams: vec!["127.0.0.1:3".into(), "127.0.0.1:4".into()],
        ..Default::default()
    };
    let config = GatewayConfig::from_file(file, &overrides).unwrap();
    assert_eq!(config.listen.port(), 2);
    assert_eq!(config.upstream.targets.len(), 2);
}

#[test]
fn static_dir_comes_from_the_file_or_the_flag() {
    let dir = std::env::temp_dir();
    let file =
        GatewayConfig::parse_file(&format!("gateway:\n  static_dir: {}\n", dir.display())).unwrap();
    let config = GatewayConfig::from_file(file, &Overrides::default()).unwrap();
    assert_eq!(config.static_dir.as_deref(), Some(dir.as_path()));

    let overrides = Overrides {
        static_dir: Some("/definitely/not/a/dir".into()),
        ..Default::default()
    };
    let file =
        GatewayConfig::parse_file(&format!("gateway:\n  static_dir: {}\n", dir.display())).unwrap();
    let error = GatewayConfig::from_file(file, &overrides)
        .unwrap_err()
        .to_string();
    assert!(error.contains("gateway.static_dir"), "{error}");
}

const AUTH: &str = "gateway:
  auth:
    jwks:
      url: https://issuer.test/.well-known/jwks.json
    issuers: [https://issuer.test]
    audiences: [meshgate]
    rules:
      - name: user-writes
        methods: [user.UserService/CreateUser, /user.UserService/DeleteUser]
        routes: [\"PUT /v1/users/{id}\"]
        require_claims:
          - claim: scope
            contains: users:write
          - claim: tenant
            equals: acme
          - claim: email
";

#[test]
fn auth_is_off_by_default_and_read_with_its_defaults() {
    use crate::auth::policy::{ClaimCheck, JwksSource};
    assert!(load("gateway: {}\n").unwrap().auth.is_none());
    assert!(
        load(include_str!("../../config/gateway.yaml"))
            .unwrap()
            .auth
            .is_none()
    );
    let auth = load(AUTH).unwrap().auth.unwrap();
    assert_eq!(
        auth.jwks,
        JwksSource::Url("https://issuer.test/.well-known/jwks.json".into())
    );
    assert_eq!(auth.refresh_interval, Duration::from_secs(300));
    assert_eq!(auth.min_refresh_interval, Duration::from_secs(10));
    assert_eq!(auth.fetch_timeout, Duration::from_secs(2));
    assert_eq!(auth.leeway, Duration::from_secs(30));
    let rule = &auth.rules[0];
    assert_eq!(
        rule.methods,
        [
            "/user.UserService/CreateUser",
            "/user.UserService/DeleteUser"
        ]
    );
    assert_eq!(rule.routes, ["PUT /v1/users/{id}"]);
    assert_eq!(
        rule.claims.iter().map(|c| &c.check).collect::<Vec<_>>(),
        [
            &ClaimCheck::Contains("users:write".into()),
            &ClaimCheck::Equals("acme".into()),
            &ClaimCheck::Present
        ]
    );
}

#[test]
fn bad_auth_settings_are_named() {
    let swap = |from: &str, to: &str| {
        assert!(AUTH.contains(from), "{from}");
        AUTH.replace(from, to)
    };
    let cases = [
        (
            swap(
                "      url: https://issuer.test/.well-known/jwks.json\n",
                "      file: jwks.json\n      url: https://issuer.test/jwks\n",
            ),
            "gateway.auth.jwks",
            "not both",
        ),
        (
            swap(
                "      url: https://issuer.test/.well-known/jwks.json\n",
                "      refresh_interval_ms: 1000\n",
            ),
            "gateway.auth.jwks",
            "set file",
        ),
        (
            swap(
                "https://issuer.test/.well-known/jwks.json",
                "ftp://issuer.test/jwks",
            ),
            "gateway.auth.jwks.url",
            "http:// or https://",
        ),
        (
            swap("    issuers: [https://issuer.test]\n", ""),
            "gateway.auth.issuers",
            "at least one issuer",
        ),
        (
            swap("[meshgate]", "[\"\"]"),
            "gateway.auth.audiences[0]",
            "must not be empty",
        ),
        (
            swap(
                "    audiences: [meshgate]\n",
                "    audiences: [meshgate]\n    leeway_secs: 3600\n",
            ),
            "gateway.auth.leeway_secs",
            "at most 300",
        ),
        (
            swap("user.UserService/CreateUser,", "CreateUser,"),
            "gateway.auth.rules[0].methods[0]",
            "not a gRPC method",
        ),
        (
            swap("PUT /v1/users/{id}", "/v1/users/{id}"),
            "gateway.auth.rules[0].routes[0]",
            "not a REST route",
        ),
        (
            swap(
                "            equals: acme\n",
                "            equals: acme\n            contains: x\n",
            ),
            "gateway.auth.rules[0].require_claims[1]",
            "not both",
        ),
        (
            swap("          - claim: email\n", "          - claim: \"\"\n"),
            "gateway.auth.rules[0].require_claims[2].claim",
            "must name a claim",
        ),
        (
            format!("{AUTH}      - name: user-writes\n        routes: [\"POST /v1/users\"]\n"),
            "gateway.auth.rules[1].name",
            "earlier rule",
        ),
        (
            format!("{AUTH}      - name: empty\n"),
            "gateway.auth.rules[1].methods",
            "names gRPC methods",
        ),
        (
            swap("    jwks:\n", "    jwks:\n      refresh_interval_ms: 0\n"),
            "gateway.auth.jwks.refresh_interval_ms",
            "greater than 0",
        ),
    ];
    for (text, key, reason) in cases {
        let error = load(&text).unwrap_err().to_string();
        assert!(error.contains(&format!("`{key}`")), "{key}: {error}");
        assert!(error.contains(reason), "{key}: {error}");
    }
    let no_rules = AUTH.split("    rules:").next().unwrap().to_owned();
    let error = load(&no_rules).unwrap_err().to_string();
    assert!(error.contains("`gateway.auth.rules`"), "{error}");
    let error = load("gateway:\n  auth:\n    jwks: {url: http://a.test/k}\n    issuer: x\n")
        .unwrap_err()
        .to_string();
    assert!(error.contains("issuer"), "{error}");
}

#[test]
fn a_relative_jwks_file_is_taken_from_the_config_files_directory() {
    let dir = std::env::temp_dir().join(format!("gateway-auth-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.yaml");
    std::fs::write(
        &path,
        AUTH.replace(
            "      url: https://issuer.test/.well-known/jwks.json\n",
            "      file: keys/jwks.json\n",
        ),
    )
    .unwrap();
    let config = GatewayConfig::load(Some(&path), &Overrides::default()).unwrap();
    assert_eq!(
        config.auth.unwrap().jwks,
        crate::auth::policy::JwksSource::File(dir.join("keys/jwks.json"))
    );
    let _ = std::fs::remove_dir_all(&dir);
}
