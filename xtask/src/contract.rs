//! `cargo xtask config-contract`: every container of ours that the manifests ship, in every
//! environment, run by the real binary in its validate-only mode (`--test`) with its exact
//! command line, environment and mounted files, in a private mount namespace and an empty
//! network namespace. A drifted config key fails with the file, the object and the container.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::argo::{Environment, render_environment};
use crate::container::{Program, Sandbox, prepare};
use crate::images::{Build, ImageConfig, build_binaries, our_image};
use crate::objects::Object;
use crate::secrets::{database_clusters, template_secrets};
use crate::util::{TempDir, require_root};
use crate::workload::{PodContext, Store, plan_container, pod_template, secret_env_values};

/// The flag both binaries take to validate their settings and exit (0 ok, 2 bad config).
pub const VALIDATE_ONLY_FLAG: &str = "--test";
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Everything the manifests of an environment let a pod reference: its ConfigMaps, Secrets and
/// ServiceAccounts, plus test values for the Secrets made out of band or by operators.
pub fn full_store(root: &Path, env: &Environment) -> anyhow::Result<Store> {
    let mut store = Store::default();
    for secret in template_secrets(root)? {
        store.add_secret(&secret.namespace, &secret.name, secret.data);
    }
    for cluster in database_clusters(env) {
        let secret = cluster.app_secret();
        store.add_secret(&secret.namespace, &secret.name, secret.data);
    }
    for (app, object) in env.objects() {
        store.apply(object, object.namespace_or(&app.namespace))?;
    }
    Ok(store)
}

/// A pod context for validate-only runs (no network: the IP is a placeholder).
pub fn pod_context(
    object: &Object,
    namespace: &str,
    labels: BTreeMap<String, String>,
) -> PodContext {
    PodContext {
        name: format!("{}-contract", object.name()),
        namespace: namespace.to_owned(),
        ip: "192.0.2.10".into(),
        node_name: "contract".into(),
        labels,
        annotations: BTreeMap::new(),
    }
}

struct Case<'a> {
    env: &'a str,
    application: &'a str,
    namespace: String,
    object: &'a Object,
    container: String,
    image: ImageConfig,
}

pub fn run(root: &Path, envs: &[&str], build: Build) -> anyhow::Result<bool> {
    require_root("the config contract")?;
    let kubectl = crate::render::kubectl()?;
    crate::util::sweep_stale_temp_dirs();
    let mut rendered = Vec::new();
    for env in envs {
        rendered.push(render_environment(root, &kubectl, env)?);
    }
    let mut cases = Vec::new();
    let mut foreign = Vec::new();
    for env in &rendered {
        for (app, object) in env.objects() {
            let Some(template) = pod_template(object) else {
                continue;
            };
            for (container, _) in template.containers() {
                let image = container["image"].as_str().unwrap_or("");
                let name = container["name"].as_str().unwrap_or("").to_owned();
                match our_image(root, image).with_context(|| object.described())? {
                    Some(config) => cases.push(Case {
                        env: &env.name,
                        application: &app.name,
                        namespace: object.namespace_or(&app.namespace).to_owned(),
                        object,
                        container: name,
                        image: config,
                    }),
                    None => foreign.push(format!(
                        "{env}: {} container {name}: image {image} is not built here (no {}/<name>/Dockerfile): not run",
                        object.described(),
                        crate::images::IMAGES_DIR,
                        env = env.name
                    )),
                }
            }
        }
    }
    let images: Vec<ImageConfig> = cases.iter().map(|c| c.image.clone()).collect();
    let binaries = build_binaries(root, &images, build)?;
    let work = TempDir::new("contract")?;
    let stores: BTreeMap<&str, Store> = rendered
        .iter()
        .map(|env| Ok((env.name.as_str(), full_store(root, env)?)))
        .collect::<anyhow::Result<_>>()?;
    let mut failures = 0;
    println!(
        "config contract: {} containers of ours in {} environment(s) ({})",
        cases.len(),
        envs.len(),
        envs.join(", ")
    );
    for (index, case) in cases.iter().enumerate() {
        let store = &stores[case.env];
        let header = format!(
            "{env}: {} container {} (Application {})",
            case.object.described(),
            case.container,
            case.application,
            env = case.env
        );
        let started = Instant::now();
        match run_case(&work.path().join(index.to_string()), store, case, &binaries) {
            Ok((shown, output)) => println!(
                "ok   {header}\n       {shown}\n       → {output} ({} ms)",
                started.elapsed().as_millis()
            ),
            Err(error) => {
                failures += 1;
                println!(
                    "FAIL {env} (Application {}): {error:#}",
                    case.application,
                    env = case.env
                );
            }
        }
    }
    for line in &foreign {
        println!("skip {line}");
    }
    if cases.is_empty() {
        println!("FAIL no container of ours found: the contract checked nothing");
        return Ok(false);
    }
    println!(
        "config contract: {} ok, {failures} failed",
        cases.len() - failures
    );
    let self_test = self_test(&cases, &stores, &binaries, work.path());
    Ok(failures == 0 && self_test)
}

/// The key the self-test adds to a mounted config file; no binary of ours knows it.
const DRIFTED_KEY: &str = "rehearsal_drifted_key";

/// Proves the contract can fail: in one environment, each ConfigMap-mounted YAML config file of
/// each container of ours gets an unknown top-level key; the run must be rejected with a
/// message naming the key, the file to fix, the object and the container.
fn self_test(
    cases: &[Case<'_>],
    stores: &BTreeMap<&str, Store>,
    binaries: &BTreeMap<String, PathBuf>,
    work: &Path,
) -> bool {
    let Some(first_env) = cases.first().map(|c| c.env) else {
        return false;
    };
    let mut seeded = 0;
    let mut ok = true;
    for (index, case) in cases.iter().enumerate().filter(|(_, c)| c.env == first_env) {
        let Some(template) = pod_template(case.object) else {
            continue;
        };
        for volume in template.spec()["volumes"].as_array().into_iter().flatten() {
            let Some(name) = volume["configMap"]["name"].as_str() else {
                continue;
            };
            let key = (case.namespace.clone(), name.to_owned());
            let Some(config_map) = stores[case.env].config_maps.get(&key) else {
                continue;
            };
            for (file, content) in &config_map.data {
                let is_mapping = serde_norway::from_slice::<serde_norway::Value>(content)
                    .is_ok_and(|v| v.is_mapping());
                if !is_mapping {
                    continue;
                }
                seeded += 1;
                let mut store = stores[case.env].clone();
                if let Some(data) = store.config_maps.get_mut(&key) {
                    let mut drifted = content.clone();
                    drifted.extend_from_slice(format!("\n{DRIFTED_KEY}: true\n").as_bytes());
                    data.data.insert(file.clone(), drifted);
                }
                let dir = work.join(format!("self-test-{index}-{seeded}"));
                let what = format!(
                    "a drifted key in {file} of ConfigMap {name} mounted by {} container {}",
                    case.object.id(),
                    case.container
                );
                let source_file = config_map
                    .origin
                    .as_ref()
                    .and_then(|o| {
                        o.generated_by
                            .as_ref()
                            .and_then(|g| g.files.get(file))
                            .or(o.file.as_ref())
                    })
                    .cloned()
                    .unwrap_or_default();
                match run_case(&dir, &store, case, binaries) {
                    Err(error) => {
                        let message = format!("{error:#}");
                        let names_everything = [
                            DRIFTED_KEY,
                            source_file.as_str(),
                            &case.object.described(),
                            &case.container,
                        ]
                        .iter()
                        .all(|part| message.contains(part));
                        if names_everything {
                            println!(
                                "self-test ok: {what} is rejected naming it and {source_file}"
                            );
                        } else {
                            ok = false;
                            println!(
                                "self-test FAIL: {what} is rejected, but the message does not name the key, {source_file}, the object and the container: {message}"
                            );
                        }
                    }
                    Ok(_) => {
                        ok = false;
                        println!(
                            "self-test FAIL: {what} was accepted: the contract cannot catch drift there"
                        );
                    }
                }
            }
        }
    }
    if seeded == 0 {
        println!(
            "self-test FAIL: no ConfigMap-mounted YAML config file to seed a drifted key into"
        );
        return false;
    }
    ok
}

/// Runs one container's binary with `--test`; `(shown command line, its one line of output)`.
fn run_case(
    dir: &Path,
    store: &Store,
    case: &Case<'_>,
    binaries: &BTreeMap<String, PathBuf>,
) -> anyhow::Result<(String, String)> {
    let template = pod_template(case.object).context("no pod template")?;
    let (container, init) = template
        .containers()
        .into_iter()
        .find(|(c, _)| c["name"].as_str() == Some(case.container.as_str()))
        .context("container vanished")?;
    let pod = pod_context(case.object, &case.namespace, template.labels());
    let plan = plan_container(store, &pod, &template, container, init, Some(&case.image))?;
    let secrets = secret_env_values(container, store, &case.namespace);
    let mut argv = plan.argv.clone();
    let at = argv.iter().position(|a| a == "--").unwrap_or(argv.len());
    argv.insert(at, VALIDATE_ONLY_FLAG.to_owned());
    let shown = format!(
        "{}  [{}]",
        redact(&argv.join(" "), &secrets),
        mounts_shown(&plan)
    );
    let program = Program {
        host_path: binaries[&case.image.binary].clone(),
        target: case.image.binary_path_in_image().to_owned(),
    };
    let pod_dir = dir.join("pod");
    let sandbox = Sandbox {
        programs: vec![program],
        binds: Vec::new(),
        hostname: pod.name.clone(),
        isolate_network: true,
    };
    let spec = prepare(&pod_dir, &dir.join("container"), &plan, argv, sandbox)?;
    let spec_file = dir.join("launch.json");
    std::fs::write(&spec_file, serde_json::to_vec(&spec)?)?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("container")
        .arg(&spec_file)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting the container launcher")?;
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!(
                "{shown}\n       did not exit within {RUN_LIMIT:?}: a validate-only run must not wait for anything"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = child.wait_with_output()?;
    let stdout = redact(String::from_utf8_lossy(&output.stdout).trim(), &secrets);
    let stderr = redact(String::from_utf8_lossy(&output.stderr).trim(), &secrets);
    if !status.success() {
        let code = status
            .code()
            .map_or_else(|| format!("{status}"), |c| c.to_string());
        anyhow::bail!(
            "{} container {}: {shown}\n       exited {code}: {}{}",
            case.object.described(),
            case.container,
            if stderr.is_empty() { &stdout } else { &stderr },
            mounted_sources(&plan)
        );
    }
    Ok((shown, stdout.lines().last().unwrap_or("").to_owned()))
}

fn redact(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_owned();
    for value in secrets.iter().filter(|v| v.len() >= 4) {
        text = text.replace(value.as_str(), "<secret>");
    }
    text
}

fn mounts_shown(plan: &crate::workload::ContainerPlan) -> String {
    plan.mounts
        .iter()
        .map(|m| format!("{}{}", m.mount_path, if m.read_only { " (ro)" } else { "" }))
        .collect::<Vec<_>>()
        .join(", ")
}

/// For a failure: where each mounted file came from (the file to fix).
fn mounted_sources(plan: &crate::workload::ContainerPlan) -> String {
    plan.mounts
        .iter()
        .filter(|m| m.from != "emptyDir")
        .map(|m| format!("\n       {} ← {}", m.mount_path, m.from))
        .collect()
}
