//! Argo CD's sync, step by step: each Application's objects in phase, wave and kind order, every
//! pod's references checked at its turn, Jobs run to completion (hooks), each wave waited on
//! until healthy.

use super::*;

impl<'a> Rehearsal<'a> {
    pub(super) async fn sync_application(&mut self, app: &'a Application) -> anyhow::Result<()> {
        println!(
            "\n== Application {} (wave {}) ← {}: {} objects",
            app.name,
            app.wave,
            app.source,
            app.objects.len()
        );
        let mut step: Option<(Phase, i64)> = None;
        for object in sync_order(&app.objects) {
            let (object_phase, hook) = phase(object);
            let wave = sync_wave(object);
            if step.is_some_and(|s| s != (object_phase, wave)) {
                // Argo CD applies the next phase or wave once everything before it is healthy.
                self.wait_healthy(&app.name).await?;
            }
            step = Some((object_phase, wave));
            let namespace = object.namespace_or(&app.namespace).to_owned();
            let label = format!(
                "{} [{}{}]",
                object.described(),
                match object_phase {
                    Phase::PreSync => "PreSync hook",
                    Phase::Sync if hook => "Sync hook",
                    Phase::Sync => "Sync",
                    Phase::PostSync => "PostSync hook",
                    Phase::SyncFail => "SyncFail hook",
                    Phase::Skip => "Skip",
                },
                if wave == 0 {
                    String::new()
                } else {
                    format!(", wave {wave}")
                }
            );
            if matches!(object_phase, Phase::Skip | Phase::SyncFail) {
                println!("  {label}: never applied by a successful sync");
                continue;
            }
            self.apply(app, object, &namespace, &label).await?;
        }
        self.wait_healthy(&app.name).await
    }

    pub(super) async fn apply(
        &mut self,
        app: &Application,
        object: &'a Object,
        namespace: &str,
        label: &str,
    ) -> anyhow::Result<()> {
        let mut id = object.id();
        if id.namespace.is_none()
            && !matches!(
                object.kind(),
                "Namespace" | "ClusterRole" | "ClusterRoleBinding"
            )
        {
            id.namespace = Some(namespace.to_owned());
        }
        self.applied.insert(id);
        self.store.apply(object, namespace)?;
        match (object.group(), object.kind()) {
            ("", "ConfigMap" | "Secret" | "ServiceAccount") => println!("  {label}: applied"),
            ("", "Service") => self.add_service(object, namespace, label).await?,
            ("apps", "Deployment" | "StatefulSet" | "ReplicaSet" | "DaemonSet") => {
                let full = pod_template(object).context("no pod template")?;
                let root = self.root;
                let runnable = runnable::runnable_template(object, |image| {
                    stand_ins(image).is_some() || our_image(root, image).is_ok_and(|i| i.is_some())
                });
                let Some(runnable) = runnable else {
                    let image = self.foreign_image(&full)?.unwrap_or_default();
                    println!(
                        "  {label}: not rehearsed: image {image} is not built here and has no local stand-in"
                    );
                    return Ok(());
                };
                let template = PodTemplate {
                    workload: object,
                    template: &runnable.template,
                };
                let replicas = self.replicas(app, object);
                println!("  {label}: {replicas} pod(s)");
                for (container, image) in &runnable.left_out {
                    println!(
                        "    container {container} left out: image {image} is not built here and has no local stand-in"
                    );
                }
                self.check_references(&full, label);
                let mut pods = Vec::new();
                for index in 0..replicas {
                    let pod_name = format!("{}-{index}", object.name());
                    let pod = self
                        .start_pod(&template, namespace, &pod_name, true)
                        .await?;
                    if let Some(fqdn) = runnable::stable_dns_name(object, &pod_name, namespace) {
                        let ip = self.shared.board().pods[pod].ip;
                        self.shared.dns.set(&fqdn, &[ip]).await?;
                    }
                    pods.push(pod);
                }
                self.pending_health.push((pods, object.described()));
            }
            ("batch", "Job") => {
                let template = pod_template(object).context("no pod template")?;
                if let Some(image) = self.foreign_image(&template)? {
                    println!(
                        "  {label}: not rehearsed: image {image} is not built here and has no local stand-in"
                    );
                    return Ok(());
                }
                println!("  {label}: run to completion");
                self.check_references(&template, label);
                self.run_job(object, &template, namespace).await?;
            }
            ("batch", "CronJob") => println!(
                "  {label}: not run (scheduled); its containers are in the config contract"
            ),
            ("postgresql.cnpg.io", "Cluster") => {
                self.start_database(object, namespace, label).await?
            }
            (group, kind) => println!("  {label}: {}", not_rehearsed(group, kind)),
        }
        Ok(())
    }

    /// The first image of the pod that is neither ours nor stood in by a host program.
    pub(super) fn foreign_image(
        &self,
        template: &PodTemplate<'_>,
    ) -> anyhow::Result<Option<String>> {
        for (container, _) in template.containers() {
            let image = container["image"].as_str().unwrap_or("");
            if our_image(self.root, image)?.is_none() && stand_ins(image).is_none() {
                return Ok(Some(image.to_owned()));
            }
        }
        Ok(None)
    }

    /// `spec.replicas`, else the minimum of the autoscaler that targets it (or its Rollout).
    pub(super) fn replicas(&self, app: &Application, object: &Object) -> u64 {
        if let Some(replicas) = object.value["spec"]["replicas"].as_u64() {
            return replicas.min(MAX_REPLICAS);
        }
        let name = object.name();
        let rollout_names: Vec<&str> = app
            .objects
            .iter()
            .filter(|o| o.kind() == "Rollout" && o.value["spec"]["workloadRef"]["name"] == name)
            .map(Object::name)
            .collect();
        let from_hpa = app.objects.iter().find_map(|hpa| {
            let target = &hpa.value["spec"]["scaleTargetRef"];
            let hit = hpa.kind() == "HorizontalPodAutoscaler"
                && ((target["kind"] == "Deployment" && target["name"] == name)
                    || (target["kind"] == "Rollout"
                        && rollout_names.contains(&target["name"].as_str().unwrap_or(""))));
            hit.then(|| hpa.value["spec"]["minReplicas"].as_u64().unwrap_or(1))
        });
        from_hpa.unwrap_or(1).clamp(1, MAX_REPLICAS)
    }

    /// A pod can only be created once what it references exists (otherwise the API server
    /// refuses it, or the kubelet cannot start it): a hook that needs a later object hangs.
    pub(super) fn check_references(&mut self, template: &PodTemplate<'_>, label: &str) {
        for missing in missing_references(template, &self.applied) {
            let declared = self
                .env
                .objects()
                .find(|(app, o)| {
                    o.kind() == missing.kind
                        && o.name() == missing.name
                        && Some(o.namespace_or(&app.namespace)) == missing.namespace.as_deref()
                })
                .map(|(app, o)| {
                    let (p, _) = phase(o);
                    format!(
                        "it is declared in {} ({:?} phase, wave {} of Application {}), applied after this point",
                        o.origin.file_or_source(),
                        p,
                        sync_wave(o),
                        app.name
                    )
                })
                .unwrap_or_else(|| "nothing declares it (and it is not made out of band or by an operator)".into());
            self.fail(format!(
                "{label}: its pods cannot be created: {missing} does not exist yet — {declared} \
                 (the rehearsal goes on as if it existed)"
            ));
        }
    }

    pub(super) async fn run_job(
        &mut self,
        object: &Object,
        template: &PodTemplate<'_>,
        namespace: &str,
    ) -> anyhow::Result<()> {
        let attempts = object.value["spec"]["backoffLimit"]
            .as_u64()
            .unwrap_or(6)
            .min(2)
            + 1;
        for attempt in 1..=attempts {
            let pod = self
                .start_pod(
                    template,
                    namespace,
                    &format!("{}-{attempt}", object.name()),
                    false,
                )
                .await?;
            let containers = self.shared.board().pods[pod].containers.clone();
            let started = Instant::now();
            self.shared
                .wait_for(
                    &format!("Job {} to complete", object.name()),
                    HEALTH_LIMIT,
                    |board| {
                        containers
                            .iter()
                            .all(|c| board.exits.contains_key(&(pod, c.clone())))
                    },
                )
                .await?;
            let board = self.shared.board();
            let failed: Vec<String> = containers
                .iter()
                .filter_map(|c| {
                    let exit = &board.exits[&(pod, c.clone())];
                    (exit.code != Some(0)).then(|| format!("{c} {}", exit.text))
                })
                .collect();
            drop(board);
            if failed.is_empty() {
                self.shared.log(format!(
                    "Job {} complete in {:.1} s (attempt {attempt})",
                    object.name(),
                    started.elapsed().as_secs_f64()
                ));
                return Ok(());
            }
            self.shared.log(format!(
                "Job {} attempt {attempt} failed: {}",
                object.name(),
                failed.join(", ")
            ));
        }
        self.fail(format!(
            "{}: the Job failed {attempts} times (backoffLimit)",
            object.described()
        ));
        Ok(())
    }

    /// Argo CD waits for every resource of the phase/wave to be healthy before going on.
    pub(super) async fn wait_healthy(&mut self, app: &str) -> anyhow::Result<()> {
        let pending = std::mem::take(&mut self.pending_health);
        for (pods, what) in pending {
            let result = self
                .shared
                .wait_for(&format!("{what}: all pods Ready"), HEALTH_LIMIT, |board| {
                    pods.iter().all(|p| board.pods[*p].ready)
                        || pods.iter().any(|p| {
                            board.pods[*p]
                                .containers
                                .iter()
                                .any(|c| board.exits.contains_key(&(*p, c.clone())))
                        })
                        || pods.iter().any(|p| board.restarting(*p))
                })
                .await;
            if let Some(restart) = {
                let board = self.shared.board();
                pods.iter().find(|p| board.restarting(**p)).and_then(|p| {
                    board
                        .restarts
                        .iter()
                        .find(|r| r.starts_with(&format!("pod {} ", board.pods[*p].name)))
                        .cloned()
                })
            } {
                bail!("{what}: {restart} (Application {app} never becomes healthy)");
            }
            let board = self.shared.board();
            let crashed: Vec<String> =
                pods.iter()
                    .flat_map(|p| {
                        board.pods[*p]
                            .containers
                            .iter()
                            .filter_map(|c| {
                                board.exits.get(&(*p, c.clone())).map(|e| {
                                    format!("{}/{c} exited {}", board.pods[*p].name, e.text)
                                })
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect();
            let unready: Vec<String> = pods
                .iter()
                .filter(|p| !board.pods[**p].ready)
                .map(|p| describe_unready(&board, *p))
                .collect();
            drop(board);
            if !crashed.is_empty() {
                bail!(
                    "{what} crashed (Application {app} never becomes healthy): {}",
                    crashed.join("; ")
                );
            }
            if let Err(error) = result {
                bail!("{error:#}: {}", unready.join("; "));
            }
            self.shared.log(format!("{what}: all pods Ready"));
        }
        Ok(())
    }
}

/// What a pod of `template` references that does not exist yet.
pub(super) fn missing_references(
    template: &PodTemplate<'_>,
    applied: &BTreeSet<ObjectId>,
) -> Vec<ObjectId> {
    references(template)
        .into_iter()
        .filter(|id| !applied.contains(id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::test_object as object;

    /// The seeded bad case of issue 11: a PreSync hook whose pod uses a Sync-phase
    /// ServiceAccount cannot start on the first sync; as a hook of the same phase it can.
    #[test]
    fn a_hook_using_a_sync_phase_object_is_caught_at_its_turn() {
        let job = |sa_annotations: &str| {
            vec![
                object(&format!(
                    "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: migrate, namespace: ns{sa_annotations}}}"
                )),
                object(
                    "apiVersion: batch/v1\nkind: Job\nmetadata: {name: migrate, namespace: ns, annotations: {argocd.argoproj.io/hook: PreSync}}\n\
                     spec: {template: {spec: {serviceAccountName: migrate, containers: [{name: m, image: x}]}}}",
                ),
            ]
        };
        let missing_at_the_job = |objects: &[Object]| {
            let mut applied = BTreeSet::new();
            for object in sync_order(objects) {
                if let Some(template) = pod_template(object) {
                    return missing_references(&template, &applied);
                }
                applied.insert(object.id());
            }
            unreachable!("no Job")
        };
        let missing = missing_at_the_job(&job(""));
        assert_eq!(
            missing.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["ServiceAccount ns/migrate"]
        );
        let fixed = job(
            ", annotations: {argocd.argoproj.io/hook: PreSync, argocd.argoproj.io/sync-wave: \"-2\"}",
        );
        assert!(missing_at_the_job(&fixed).is_empty());
    }
}
