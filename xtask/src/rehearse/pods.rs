//! Pods as the kubelet starts them: the network namespace, init containers to completion, each
//! container in its sandbox with its programs, and its probes.

use super::*;

impl<'a> Rehearsal<'a> {
    /// Creates a pod: its network, then its containers (init containers to completion first).
    pub(super) async fn start_pod(
        &mut self,
        template: &PodTemplate<'_>,
        namespace: &str,
        pod_name: &str,
        long_running: bool,
    ) -> anyhow::Result<usize> {
        let network = self.network.add_pod(pod_name, namespace)?;
        let labels = template.labels();
        let context = PodContext {
            name: pod_name.to_owned(),
            namespace: namespace.to_owned(),
            ip: network.ip.to_string(),
            node_name: "rehearsal".into(),
            labels: labels.clone(),
            annotations: template.annotations(),
        };
        let grace = Duration::from_secs(
            template.spec()["terminationGracePeriodSeconds"]
                .as_u64()
                .unwrap_or(30)
                .min(10),
        );
        let mut plans = Vec::new();
        for (container, init) in template.containers() {
            let image = our_image(self.root, container["image"].as_str().unwrap_or(""))?;
            let plan = plan_container(
                &self.store,
                &context,
                template,
                container,
                init,
                image.as_ref(),
            )
            .with_context(|| format!("{}: pod {pod_name}", template.workload.described()))?;
            let secrets = secret_env_values(container, &self.store, namespace);
            plans.push((plan, image, secrets));
        }
        let pod = {
            let mut board = self.shared.board();
            board.pods.push(PodState {
                name: pod_name.to_owned(),
                namespace: namespace.to_owned(),
                labels,
                ip: network.ip,
                ports: plans
                    .iter()
                    .filter(|(p, ..)| !p.init)
                    .flat_map(|(p, ..)| p.ports.clone())
                    .collect(),
                containers: plans
                    .iter()
                    .filter(|(p, ..)| !p.init)
                    .map(|(p, ..)| p.name.clone())
                    .collect(),
                fixed_ready: None,
                long_running,
                starting: true,
                binaries: plans
                    .iter()
                    .filter_map(|(_, image, _)| image.as_ref().map(|i| i.binary.clone()))
                    .collect(),
                ready: false,
            });
            board.pods.len() - 1
        };
        self.shared.log(format!(
            "pod {pod_name} ({}) in {}",
            network.ip, network.netns
        ));
        let pod_dir = self.work.join("pods").join(pod_name);
        for (plan, image, secrets) in plans {
            let programs = self.programs(&plan, image.as_ref())?;
            let binds = ["resolv.conf", "hosts"]
                .iter()
                .map(|file| BindSpec {
                    source: network.etc_dir.join(file),
                    target: format!("/etc/{file}"),
                    read_only: true,
                })
                .collect();
            let sandbox = Sandbox {
                programs,
                binds,
                hostname: pod_name.to_owned(),
                isolate_network: false,
            };
            let spec = prepare(
                &pod_dir,
                &pod_dir.join(&plan.name),
                &plan,
                plan.argv.clone(),
                sandbox,
            )?;
            self.shared.log(format!(
                "  container {}: {}{}",
                plan.name,
                plan.shown_argv(&secrets),
                if plan.mounts.is_empty() {
                    String::new()
                } else {
                    format!(
                        "  [{}]",
                        plan.mounts
                            .iter()
                            .map(|m| format!("{} ← {}", m.mount_path, m.from))
                            .collect::<Vec<_>>()
                            .join("; ")
                    )
                }
            ));
            let process =
                self.spawn_container(pod, &network.netns, &pod_dir, &plan, &spec, grace)?;
            let target = Target {
                ip: network.ip,
                pid: Some(process),
                uid: plan.security.uid,
                gid: plan.security.gid,
                env: Arc::new(plan.env.clone()),
            };
            if let Some(last) = self.processes.last_mut() {
                last.pre_stop = plan.pre_stop.clone().map(|hook| (hook, target.clone()));
            }
            if plan.init {
                let name = plan.name.clone();
                self.shared
                    .wait_for(
                        &format!("init container {name} of {pod_name}"),
                        HEALTH_LIMIT,
                        |b| b.exits.contains_key(&(pod, name.clone())),
                    )
                    .await?;
                let exit = self.shared.board().exits[&(pod, name.clone())].clone();
                if exit.code != Some(0) {
                    bail!("init container {name} of {pod_name} failed: {}", exit.text);
                }
                continue;
            }
            self.start_kubelet(pod, &plan, target);
        }
        self.shared.board().pods[pod].starting = false;
        self.shared.notify();
        Ok(pod)
    }

    /// The binaries a container needs in its root: ours at the image's ENTRYPOINT path, or the
    /// host programs standing in for a foreign image's.
    pub(super) fn programs(
        &self,
        plan: &ContainerPlan,
        image: Option<&ImageConfig>,
    ) -> anyhow::Result<Vec<Program>> {
        if let Some(image) = image {
            return Ok(vec![Program {
                host_path: self.binaries[&image.binary].clone(),
                target: image.binary_path_in_image().to_owned(),
            }]);
        }
        let table = stand_ins(&plan.image).with_context(|| {
            format!(
                "container {}: image {} is neither ours nor stood in",
                plan.name, plan.image
            )
        })?;
        let mut programs = Vec::new();
        for (name, candidates) in table {
            let host_path = candidates.iter().find_map(|c| which(c)).with_context(|| {
                format!(
                    "none of {candidates:?} is installed (the stand-in for {name} of {})",
                    plan.image
                )
            })?;
            programs.push(Program {
                host_path,
                target: format!("/usr/local/bin/{name}"),
            });
        }
        let shown: Vec<String> = programs
            .iter()
            .map(|p| format!("{} as {}", p.host_path.display(), p.target))
            .collect();
        println!(
            "    (image {} stood in by {})",
            plan.image,
            shown.join(", ")
        );
        Ok(programs)
    }

    pub(super) fn spawn_container(
        &mut self,
        pod: usize,
        netns: &str,
        pod_dir: &Path,
        plan: &ContainerPlan,
        spec: &crate::container::LaunchSpec,
        grace: Duration,
    ) -> anyhow::Result<u32> {
        let spec_file = pod_dir.join(format!("{}.launch.json", plan.name));
        std::fs::write(&spec_file, serde_json::to_vec(spec)?)?;
        let log = pod_dir.join(format!("{}.log", plan.name));
        let mut child = tokio::process::Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(std::env::current_exe()?)
            .arg("container")
            .arg(&spec_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a terminal's Ctrl-C reaches the rehearsal, which stops
            // the containers the kubelet's way.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .context("starting a container")?;
        let pid = child.id().context("the container exited at once")?;
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let shared = self.shared.clone();
        let name = plan.name.clone();
        let init = plan.init;
        self.tasks.push(tokio::spawn(async move {
            // Both streams into one log file, as `kubectl logs` shows them. tokio's file writes
            // run on the blocking pool: a disk that throttles writers (dirty pages under a
            // parallel build) must not hold up the runtime the probes and kube-proxy run on.
            let log_file = tokio::sync::Mutex::new(tokio::fs::File::create(&log).await.ok());
            let copy = |stream: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>| {
                let log_file = &log_file;
                async move {
                    let Some(stream) = stream else { return };
                    // Bytes, not `lines()`: a line that is not UTF-8 would end a `lines()`
                    // loop, and a container whose pipe nobody drains blocks on its next write.
                    let mut reader = tokio::io::BufReader::new(stream);
                    let mut line = Vec::new();
                    loop {
                        line.clear();
                        match reader.read_until(b'\n', &mut line).await {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                        use tokio::io::AsyncWriteExt;
                        if let Some(file) = log_file.lock().await.as_mut() {
                            let _ = file.write_all(&line).await;
                        }
                    }
                }
            };
            let (status, (), ()) = tokio::join!(
                child.wait(),
                copy(stdout.map(|s| Box::new(s) as _)),
                copy(stderr.map(|s| Box::new(s) as _))
            );
            // Written through before the exit is recorded (its message quotes the log's tail).
            if let Some(file) = log_file.lock().await.as_mut() {
                use tokio::io::AsyncWriteExt;
                let _ = file.flush().await;
            }
            let (code, text) = match status {
                Ok(status) => (status.code(), status.to_string()),
                Err(error) => (None, error.to_string()),
            };
            let mut board = shared.board();
            let expected = board.stopping.contains(&pod);
            let pod_name = board.pods[pod].name.clone();
            if !(expected || init && code == Some(0)) {
                shared.log(format!(
                    "container {name} of pod {pod_name} exited ({text}): {}",
                    postgres::tail(&log, 6)
                ));
            }
            board.exits.insert(
                (pod, name),
                ExitRecord {
                    code,
                    text,
                    expected,
                },
            );
            drop(board);
            shared.notify();
        }));
        self.processes.push(ContainerProcess {
            pod,
            name: plan.name.clone(),
            pid,
            grace,
            log: pod_dir.join(format!("{}.log", plan.name)),
            pre_stop: None,
        });
        Ok(pid)
    }

    /// The prober: startup first; then liveness and readiness, each on its own period.
    pub(super) fn start_kubelet(&mut self, pod: usize, plan: &ContainerPlan, target: Target) {
        let probes = [
            (ProbeKind::Startup, plan.probes.startup.clone()),
            (ProbeKind::Liveness, plan.probes.liveness.clone()),
            (ProbeKind::Readiness, plan.probes.readiness.clone()),
        ];
        {
            let mut board = self.shared.board();
            for (kind, probe) in &probes {
                if let Some(probe) = probe {
                    let tracker = Tracker::new(*kind, probe.clone());
                    self.shared.log(format!("  {}", tracker.describe()));
                    board
                        .trackers
                        .insert((pod, plan.name.clone(), *kind), tracker);
                }
            }
        }
        let shared = self.shared.clone();
        let container = plan.name.clone();
        self.tasks.push(tokio::spawn(async move {
            let [startup, liveness, readiness] = probes;
            if let (kind, Some(probe)) = startup
                && !probe_loop(&shared, pod, &container, kind, &probe, &target).await
            {
                return;
            }
            let run = |(kind, probe): (ProbeKind, Option<crate::workload::Probe>)| {
                let shared = shared.clone();
                let container = container.clone();
                let target = target.clone();
                async move {
                    if let Some(probe) = probe {
                        probe_loop(&shared, pod, &container, kind, &probe, &target).await;
                    }
                }
            };
            tokio::join!(run(liveness), run(readiness));
        }));
    }
}

/// One probe's loop; returns whether it passed (for a startup probe: whether to go on).
pub(super) async fn probe_loop(
    shared: &Shared,
    pod: usize,
    container: &str,
    kind: ProbeKind,
    probe: &crate::workload::Probe,
    target: &Target,
) -> bool {
    tokio::time::sleep(scaled(probe.initial_delay_seconds)).await;
    let timeout = Duration::from_secs(probe.timeout_seconds.max(1));
    let key = (pod, container.to_owned(), kind);
    // Failures of a probe that passed before are logged when they start and end (which pod,
    // which probe, when, how long each check took), so that an outage explains itself.
    let mut passed = false;
    let mut failing: Option<(Instant, u32)> = None;
    loop {
        if shared
            .board()
            .exits
            .contains_key(&(pod, container.to_owned()))
        {
            return false;
        }
        let checked = Instant::now();
        let result = probe::check(&probe.action, target, timeout).await;
        let took = checked.elapsed();
        let episode = match (&result, failing) {
            (Ok(()), Some((since, count))) => {
                failing = None;
                Some(format!(
                    "passes again after {count} failed check(s) over {:.2} s",
                    since.elapsed().as_secs_f64()
                ))
            }
            (Ok(()), None) => {
                passed = true;
                None
            }
            (Err(error), None) if passed => {
                failing = Some((checked, 1));
                Some(format!(
                    "check failed after {:.2} s: {error} ({})",
                    took.as_secs_f64(),
                    probe::describe_action(&probe.action)
                ))
            }
            (Err(_), Some((since, count))) => {
                failing = Some((since, count + 1));
                None
            }
            (Err(_), None) => None,
        };
        let (changed, pod_name, error) = {
            let mut board = shared.board();
            let pod_name = board.pods[pod].name.clone();
            let Some(tracker) = board.trackers.get_mut(&key) else {
                return false;
            };
            let changed = tracker.record(result);
            let error = tracker.last_error.clone().unwrap_or_default();
            if changed == Some(false)
                && matches!(kind, ProbeKind::Liveness | ProbeKind::Startup)
                && !board.stopping.contains(&pod)
            {
                board.restarts.push(format!(
                    "pod {pod_name} container {container}: {kind} failed {} times ({error}): \
                     the kubelet would restart the container",
                    probe.failure_threshold
                ));
            }
            (changed, pod_name, error)
        };
        // Every check counts (the outage step waits on check counts), not only flips.
        shared.notify();
        if let Some(episode) = episode {
            shared.log(format!(
                "pod {pod_name} ({}) container {container} {kind} {episode}",
                target.ip
            ));
        }
        if let Some(state) = changed {
            shared.log(format!(
                "pod {pod_name} container {container} {kind} {}",
                if state {
                    "passing".to_owned()
                } else {
                    format!("FAILED: {error}")
                }
            ));
            if kind == ProbeKind::Startup {
                return state;
            }
        }
        tokio::time::sleep(scaled(probe.period_seconds)).await;
    }
}
