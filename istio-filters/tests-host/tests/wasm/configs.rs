//! Every bad config is refused as a whole by the real module, with one clear log line; the
//! WasmPlugin examples in mesh/ are accepted.

use crate::common::*;
use meshgate_filter_host::{LoadError, ManualClock};

fn refusal(module: &str, config: &str) -> String {
    match try_load(module, config, 1, ManualClock::new(START)) {
        Err(LoadError::Refused { reason, .. }) => reason,
        Err(other) => panic!("{module} failed otherwise: {other}"),
        Ok(_) => panic!("{module} accepted {config}"),
    }
}

#[test]
fn bad_rate_limit_configs_are_refused_with_the_reason() {
    let cases = [
        ("", "pluginConfig is empty"),
        ("{not json", "pluginConfig:"),
        (r#"{"rules":[],"unknown":1}"#, "unknown field `unknown`"),
        (r#"{"rules":[]}"#, "rules: at least one rule is required"),
        (
            r#"{"rules":[{"name":"a","key":[{"type":"grpcMethod"}],"requests":0,"periodSeconds":1}]}"#,
            "rules[0].requests: must be > 0",
        ),
        (
            r#"{"rules":[{"name":"a","methods":["user.UserService/GetUser"],"key":[{"type":"field","path":"user.email"}],"requests":1,"periodSeconds":1}]}"#,
            "rules[0].key.field.path",
        ),
        (r#"{"mode":"off","rules":[]}"#, "unknown variant `off`"),
        (
            r#"{"casRetries":0,"rules":[{"name":"a","key":[{"type":"grpcMethod"}],"requests":1,"periodSeconds":1}]}"#,
            "casRetries",
        ),
    ];
    for (config, expected) in cases {
        let reason = refusal(RATE_LIMIT, config);
        assert!(
            reason.contains("meshgate_rate_limit: invalid pluginConfig, plugin not started"),
            "{reason}"
        );
        assert!(reason.contains(expected), "{config:?}: {reason}");
        assert_eq!(reason.lines().count(), 1, "one log line: {reason}");
    }
}

#[test]
fn bad_cache_headers_configs_are_refused_with_the_reason() {
    let cases = [
        ("{}", "missing field `policies`"),
        (
            r#"{"policies":[{"name":"a","methods":["user.UserService/Nope"],"cacheControl":{"maxAge":1}}]}"#,
            "unknown method",
        ),
        (
            r#"{"policies":[{"name":"a","methods":["user.UserService/GetUser"],"cacheControl":{"noStore":true},"etag":true}]}"#,
            "noStore excludes",
        ),
        (r#"{"maxBodyBytes":99999999,"policies":[]}"#, "maxBodyBytes"),
    ];
    for (config, expected) in cases {
        let reason = refusal(CACHE_HEADERS, config);
        assert!(reason.contains(expected), "{config:?}: {reason}");
    }
}

#[test]
fn bad_span_enrichment_configs_are_refused_with_the_reason() {
    let cases = [
        (
            r#"{"fields":[{"path":"user.phone","from":"response"}]}"#,
            "no method's",
        ),
        (
            r#"{"fields":[{"path":"email","redact":"md5"}]}"#,
            "unknown variant `md5`",
        ),
        (r#"{"descriptorSet":"AAAA!"}"#, "descriptorSet"),
        (
            r#"{"fields":[{"path":"id","methods":["user.UserService/ListUsers"]}]}"#,
            "no field \"id\"",
        ),
    ];
    for (config, expected) in cases {
        let reason = refusal(SPAN_ENRICHMENT, config);
        assert!(reason.contains(expected), "{config:?}: {reason}");
    }
}

#[test]
fn bad_bundle_configs_are_refused_naming_the_member() {
    let cases = [
        ("{}", "no filter configured"),
        (r#"{"rateLimits":{}}"#, "unknown field `rateLimits`"),
        (
            r#"{"rateLimit":{"rules":[{"name":"r","key":[],"requests":1,"periodSeconds":1}]}}"#,
            "rateLimit: ",
        ),
        (
            r#"{"cacheHeaders":{"policies":[]},"spanEnrichment":{"fields":[{"path":"nope"}]}}"#,
            "spanEnrichment: ",
        ),
    ];
    for (config, expected) in cases {
        let reason = refusal(BUNDLE, config);
        assert!(reason.contains(expected), "{config}: {reason}");
        assert!(reason.contains("meshgate_filters"), "{reason}");
    }
}

/// The WasmPlugin examples in mesh/wasm-plugins (and the bundle's, in its `bundle/`
/// subdirectory) use the real schema: each pluginConfig is accepted by the module its
/// pluginName names.
#[test]
fn every_wasm_plugin_example_configures_its_module() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../mesh/wasm-plugins");
    assert_eq!(
        plugin_examples(&dir),
        [CACHE_HEADERS, RATE_LIMIT, SPAN_ENRICHMENT]
    );
    assert_eq!(plugin_examples(&dir.join("bundle")), [BUNDLE]);
}

/// Checks every WasmPlugin in `dir` (not below) and returns their modules, sorted.
fn plugin_examples(dir: &std::path::Path) -> Vec<String> {
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: serde_norway::Value = serde_norway::from_str(&text).unwrap();
        let file = path.display();
        assert_eq!(
            doc["apiVersion"].as_str(),
            Some("extensions.istio.io/v1alpha1"),
            "{file}"
        );
        assert_eq!(doc["kind"].as_str(), Some("WasmPlugin"), "{file}");
        let spec = &doc["spec"];
        let module = spec["pluginName"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: pluginName"));
        let url = spec["url"].as_str().unwrap_or_default();
        assert!(
            url.starts_with("oci://registry.example.com/meshgate/istio-filters:"),
            "{file}: {url}"
        );
        assert!(
            matches!(
                spec["phase"].as_str(),
                Some("AUTHN" | "AUTHZ" | "STATS" | "UNSPECIFIED_PHASE")
            ),
            "{file}: phase"
        );
        assert!(
            matches!(
                spec["failStrategy"].as_str(),
                Some("FAIL_OPEN" | "FAIL_CLOSE")
            ),
            "{file}"
        );
        let config: serde_json::Value =
            serde_norway::from_value(spec["pluginConfig"].clone()).unwrap();
        if let Err(e) = try_load(module, &config.to_string(), 1, ManualClock::new(START)) {
            panic!("{file}: pluginConfig refused by {module}: {e}");
        }
        seen.push(module.to_owned());
    }
    seen.sort();
    seen
}
