//! The end of a rehearsal: the kubelet's stop of every container, the logs kept, the summary.

use super::*;

impl<'a> Rehearsal<'a> {
    /// SIGTERM every container (the kubelet's stop), SIGKILL after the grace period, stop the
    /// databases; the namespaces and files go when `self` and the work dir drop.
    pub(super) async fn shutdown(&mut self) {
        println!("\n== teardown");
        let running: Vec<(usize, String, u32, Duration)> = {
            let board = self.shared.board();
            self.processes
                .iter()
                .filter(|p| !board.exits.contains_key(&(p.pod, p.name.clone())))
                .map(|p| (p.pod, p.name.clone(), p.pid, p.grace))
                .collect()
        };
        // The kubelet's stop: the pod leaves the endpoints and its preStop hooks run, then
        // SIGTERM.
        {
            let mut board = self.shared.board();
            for (pod, ..) in &running {
                board.stopping.insert(*pod);
            }
        }
        self.shared.notify();
        let mut hooks = tokio::task::JoinSet::new();
        for process in self
            .processes
            .iter()
            .filter(|p| running.iter().any(|r| r.2 == p.pid))
        {
            let Some((hook, target)) = process.pre_stop.clone() else {
                continue;
            };
            let grace = process.grace;
            hooks.spawn(async move {
                match hook {
                    Hook::Sleep { seconds } => {
                        tokio::time::sleep(scaled(seconds).min(grace)).await;
                        Ok(())
                    }
                    Hook::Action(action) => probe::check(&action, &target, grace).await,
                }
            });
        }
        let hook_count = hooks.len();
        let hook_errors: Vec<String> = hooks
            .join_all()
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        if hook_count > 0 {
            self.shared.log(format!(
                "preStop hooks: {hook_count} run (sleeps scaled by {}){}",
                probe::TIME_SCALE,
                if hook_errors.is_empty() {
                    String::new()
                } else {
                    format!(", failed: {}", hook_errors.join("; "))
                }
            ));
        }
        for (_, _, pid, _) in &running {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGTERM);
        }
        let grace = running.iter().map(|r| r.3).max().unwrap_or_default();
        let keys: Vec<(usize, String)> = running.iter().map(|(p, n, ..)| (*p, n.clone())).collect();
        let stopped = self
            .shared
            .wait_for("containers stopping after SIGTERM", grace, |board| {
                keys.iter().all(|k| board.exits.contains_key(k))
            })
            .await;
        let summary = {
            let board = self.shared.board();
            let mut summary = Vec::new();
            for (pod, name, pid, _) in &running {
                match board.exits.get(&(*pod, name.clone())) {
                    Some(exit) => {
                        summary.push(format!("{}/{name}: {}", board.pods[*pod].name, exit.text))
                    }
                    None => {
                        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
                        summary.push(format!(
                            "{}/{name}: killed after {grace:?}",
                            board.pods[*pod].name
                        ));
                    }
                }
            }
            summary
        };
        if !running.is_empty() {
            self.shared.log(format!("SIGTERM: {}", summary.join(", ")));
        }
        if stopped.is_err() {
            self.note(format!(
                "some containers did not stop within their grace period ({grace:?})"
            ));
        }
        for (_, server) in &mut self.postgres {
            let _ = server.stop().await;
        }
        for task in self.tasks.drain(..) {
            task.abort();
        }
        self.network.teardown();
    }

    /// Copies every container's log to `dir/<pod>/<container>.log` (the work dir goes away).
    pub(super) fn keep_logs(&self, dir: &Path) {
        let board = self.shared.board();
        for process in &self.processes {
            let pod_dir = dir.join(&board.pods[process.pod].name);
            let copied = std::fs::create_dir_all(&pod_dir).and_then(|()| {
                std::fs::copy(&process.log, pod_dir.join(format!("{}.log", process.name)))
            });
            if let Err(error) = copied {
                eprintln!("keeping {}: {error}", process.log.display());
            }
        }
        println!("container logs kept in {}", dir.display());
    }

    /// The last lines of every long-running container's log (for a failed traffic step).
    pub(super) fn log_tails(&self) -> Vec<String> {
        let board = self.shared.board();
        self.processes
            .iter()
            .filter(|p| board.pods[p.pod].long_running)
            .map(|p| {
                format!(
                    "{}/{}: {}",
                    board.pods[p.pod].name,
                    p.name,
                    postgres::tail(&p.log, 3)
                )
            })
            .collect()
    }

    pub(super) fn summary(&self, started: Instant) -> bool {
        println!(
            "\n== rehearsal of {}: {} in {:.1} s after the build ({} pods, {} notes)",
            self.env.name,
            if self.failures.is_empty() {
                "ok"
            } else {
                "FAILED"
            },
            started.elapsed().as_secs_f64(),
            self.shared.board().pods.len(),
            self.notes.len()
        );
        for failure in &self.failures {
            println!("FAIL {failure}");
        }
        self.failures.is_empty()
    }
}
