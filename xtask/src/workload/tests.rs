use super::*;
use crate::objects::test_object as object;

fn pod() -> PodContext {
    PodContext {
        name: "api-1".into(),
        namespace: "ns".into(),
        ip: "10.0.0.5".into(),
        node_name: "node".into(),
        labels: [("app".to_owned(), "api".to_owned())].into(),
        annotations: BTreeMap::new(),
    }
}

fn store() -> Store {
    let mut store = Store::default();
    store
            .apply(
                &object("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {A: one, B: two, conf.yaml: 'x: 1'}"),
                "ns",
            )
            .unwrap();
    store.add_secret(
        "ns",
        "creds",
        [("password".to_owned(), b"s3cret".to_vec())].into(),
    );
    store
}

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: ns}
spec:
  template:
    metadata: {labels: {app: api}}
    spec:
      serviceAccountName: api
      securityContext: {runAsUser: 65532, runAsGroup: 65532, fsGroup: 2000}
      containers:
        - name: api
          image: registry/x/api:1
          args: [--config, /etc/api/conf.yaml, --password=$(PASSWORD), $$(PASSWORD), $(UNSET)]
          envFrom: [{configMapRef: {name: cfg}, prefix: CFG_}]
          env:
            - {name: PASSWORD, valueFrom: {secretKeyRef: {name: creds, key: password}}}
            - {name: URL, value: "redis://:$(PASSWORD)@cache:6379"}
            - {name: POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
            - {name: APP, valueFrom: {fieldRef: {fieldPath: "metadata.labels['app']"}}}
          ports: [{name: grpc, containerPort: 50051}, {name: http, containerPort: 8080}]
          readinessProbe: {httpGet: {path: /readyz, port: http}, periodSeconds: 5}
          livenessProbe: {grpc: {port: 50051, service: liveness}}
          securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false}
          lifecycle: {preStop: {sleep: {seconds: 5}}}
          volumeMounts:
            - {name: config, mountPath: /etc/api, readOnly: true}
            - {name: tmp, mountPath: /tmp}
      volumes:
        - {name: config, configMap: {name: cfg, items: [{key: conf.yaml, path: conf.yaml}]}}
        - {name: tmp, emptyDir: {medium: Memory}}
"#;

fn image() -> ImageConfig {
    ImageConfig {
        dockerfile: "deploy/images/api/Dockerfile".into(),
        entrypoint: vec!["/usr/local/bin/api".into()],
        cmd: vec!["ignored".into()],
        env: vec![],
        user: Some("1:1".into()),
        workdir: None,
        package: "api".into(),
        binary: "api".into(),
    }
}

/// The plan of the first container of a Deployment given as YAML.
fn plan_of(yaml: &str) -> anyhow::Result<ContainerPlan> {
    let deployment = object(yaml);
    let template = pod_template(&deployment).unwrap();
    let (container, init) = template.containers()[0];
    plan_container(&store(), &pod(), &template, container, init, Some(&image()))
}

#[test]
fn a_container_runs_as_the_kubelet_would_start_it() {
    let deployment = object(DEPLOYMENT);
    let template = pod_template(&deployment).unwrap();
    let (container, init) = template.containers()[0];
    let plan =
        plan_container(&store(), &pod(), &template, container, init, Some(&image())).unwrap();
    assert_eq!(
        plan.argv,
        [
            "/usr/local/bin/api",
            "--config",
            "/etc/api/conf.yaml",
            "--password=s3cret",
            "$(PASSWORD)",
            "$(UNSET)"
        ]
    );
    let env: BTreeMap<_, _> = plan.env.iter().cloned().collect();
    assert_eq!(env["CFG_A"], "one");
    assert_eq!(env["URL"], "redis://:s3cret@cache:6379");
    assert_eq!(env["POD"], "api-1");
    assert_eq!(env["APP"], "api");
    assert_eq!(env["PATH"], DEFAULT_PATH);
    // Shallower mount points first, as the kubelet mounts them.
    let paths: Vec<&str> = plan.mounts.iter().map(|m| m.mount_path.as_str()).collect();
    assert_eq!(paths, ["/tmp", "/etc/api"]);
    assert_eq!(
        plan.mounts[1].content,
        VolumeContent::Files(vec![VolumeFile {
            path: "conf.yaml".into(),
            content: b"x: 1".to_vec(),
            mode: 0o644
        }])
    );
    assert!(plan.mounts[1].read_only && plan.mounts[1].from.contains("ConfigMap ns/cfg"));
    assert_eq!(
        plan.mounts[0].content,
        VolumeContent::EmptyDir { memory: true }
    );
    assert_eq!(
        plan.security,
        SecurityPlan {
            uid: 65532,
            gid: 65532,
            supplementary_groups: vec![2000],
            read_only_root: true,
            no_new_privileges: true
        }
    );
    let readiness = plan.probes.readiness.clone().unwrap();
    assert_eq!(
        readiness.action,
        ProbeAction::Http {
            path: "/readyz".into(),
            port: 8080,
            scheme: "HTTP".into(),
            headers: vec![]
        }
    );
    assert_eq!(
        (readiness.period_seconds, readiness.failure_threshold),
        (5, 3)
    );
    assert_eq!(plan.pre_stop, Some(Hook::Sleep { seconds: 5 }));
    assert_eq!(
        plan.probes.liveness.as_ref().unwrap().action,
        ProbeAction::Grpc {
            port: 50051,
            service: Some("liveness".into())
        }
    );
    assert_eq!(
        plan.shown_argv(&secret_env_values(container, &store(), "ns")),
        "/usr/local/bin/api --config /etc/api/conf.yaml --password=<secret> $(PASSWORD) $(UNSET)"
    );
}

#[test]
fn command_replaces_the_entrypoint_and_drops_cmd() {
    let deployment = object(&DEPLOYMENT.replace("args:", "command: [/bin/other]\n          args:"));
    let template = pod_template(&deployment).unwrap();
    let (container, init) = template.containers()[0];
    let plan =
        plan_container(&store(), &pod(), &template, container, init, Some(&image())).unwrap();
    assert_eq!(plan.argv[0], "/bin/other");
    assert_eq!(plan.argv[1], "--config");
}

#[test]
fn missing_references_are_errors_naming_them_unless_optional() {
    let deployment = object(&DEPLOYMENT.replace("key: password", "key: nope"));
    let template = pod_template(&deployment).unwrap();
    let (container, init) = template.containers()[0];
    let error =
        plan_container(&store(), &pod(), &template, container, init, Some(&image())).unwrap_err();
    assert!(
        format!("{error:#}").contains("Secret ns/creds has no key \"nope\""),
        "{error:#}"
    );
    let refs: Vec<String> = references(&template)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        refs,
        [
            "ConfigMap ns/cfg",
            "Secret ns/creds",
            "ServiceAccount ns/api"
        ]
    );
    let plan =
        plan_of(&DEPLOYMENT.replace("key: password}", "key: nope, optional: true}")).unwrap();
    assert!(!plan.env.iter().any(|(k, _)| k == "PASSWORD"));
}

#[test]
fn secret_data_folded_over_lines_decodes_like_the_api_server() {
    let mut store = Store::default();
    store
            .apply(
                &object("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata:\n  k: |\n    aGVs\n    bG8=\n"),
                "ns",
            )
            .unwrap();
    assert_eq!(
        store.secrets[&("ns".to_owned(), "s".to_owned())].data["k"],
        b"hello"
    );
}

#[test]
fn expansion_follows_kubernetes_rules() {
    let vars = |name: &str| (name == "A").then(|| "1".to_owned());
    assert_eq!(expand("$(A)-$$(A)-$(B)-$-$(A", &vars), "1-$(A)-$(B)-$-$(A");
    assert_eq!(expand("$$$(A)", &vars), "$1");
}

#[test]
fn named_grpc_probe_ports_are_refused_like_the_api_server_does() {
    let error =
        plan_of(&DEPLOYMENT.replace("grpc: {port: 50051", "grpc: {port: grpc")).unwrap_err();
    assert!(format!("{error:#}").contains("livenessProbe"), "{error:#}");
}
