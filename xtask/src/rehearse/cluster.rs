//! Services (ClusterIP through the kube-proxy stand-in, headless through DNS) and the
//! CloudNativePG Cluster's stand-in with the operator's Services and Secret.

use super::*;

impl<'a> Rehearsal<'a> {
    pub(super) async fn add_service(
        &mut self,
        object: &Object,
        namespace: &str,
        label: &str,
    ) -> anyhow::Result<()> {
        let spec = &object.value["spec"];
        if spec["type"].as_str() == Some("ExternalName") {
            println!("  {label}: ExternalName: not rehearsed");
            return Ok(());
        }
        let headless = spec["clusterIP"].as_str() == Some("None");
        let ports: Vec<(String, u16, TargetPort)> = spec["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let port = u16::try_from(p["port"].as_u64()?).ok()?;
                let target = match &p["targetPort"] {
                    Value::Number(n) => TargetPort::Number(u16::try_from(n.as_u64()?).ok()?),
                    Value::String(name) => match name.parse() {
                        Ok(n) => TargetPort::Number(n),
                        Err(_) => TargetPort::Name(name.clone()),
                    },
                    _ => TargetPort::Number(port),
                };
                Some((p["name"].as_str().unwrap_or("").to_owned(), port, target))
            })
            .collect();
        self.register_service(
            namespace,
            object.name(),
            string_map(&spec["selector"]),
            headless,
            ports,
            label,
        )
        .await
    }

    pub(super) async fn register_service(
        &mut self,
        namespace: &str,
        name: &str,
        selector: BTreeMap<String, String>,
        headless: bool,
        ports: Vec<(String, u16, TargetPort)>,
        label: &str,
    ) -> anyhow::Result<()> {
        let fqdn = dns::service_fqdn(name, namespace);
        let mut service_ports = Vec::new();
        let address = if headless {
            None
        } else {
            Some(self.network.allocate_service_ip()?)
        };
        for (port_name, port, target) in ports {
            let endpoints = Arc::new(Endpoints::default());
            if let Some(vip) = address {
                self.tasks
                    .push(proxy::serve(SocketAddr::from((vip, port)), endpoints.clone()).await?);
            }
            service_ports.push(ServicePort {
                name: port_name,
                port,
                target,
                endpoints,
            });
        }
        if let Some(vip) = address {
            self.shared.dns.set(&fqdn, &[vip]).await?;
        }
        let shown_ports: Vec<String> = service_ports
            .iter()
            .map(|p| {
                format!(
                    "{}:{}→{}",
                    p.name,
                    p.port,
                    match &p.target {
                        TargetPort::Number(n) => n.to_string(),
                        TargetPort::Name(n) => n.clone(),
                    }
                )
            })
            .collect();
        println!(
            "  {label}: DNS {fqdn} → {}; ports {}",
            address.map_or_else(
                || "ready pod IPs (headless)".to_owned(),
                |a| format!("ClusterIP {a}")
            ),
            shown_ports.join(", ")
        );
        self.shared.board().services.push(ServiceState {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            selector,
            headless,
            ports: service_ports,
            published: None,
        });
        self.shared.notify();
        Ok(())
    }

    pub(super) async fn start_database(
        &mut self,
        object: &Object,
        namespace: &str,
        label: &str,
    ) -> anyhow::Result<()> {
        let cluster = self
            .databases
            .iter()
            .find(|c| c.cluster == object.name() && c.namespace == namespace)
            .cloned()
            .context("database cluster vanished")?;
        let pod_name = format!("{}-1", cluster.cluster);
        let network = self.network.add_pod(&pod_name, namespace)?;
        let parameters: Vec<(String, String)> = object.value["spec"]["postgresql"]["parameters"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                )
            })
            .collect();
        let dir = self.work.join("databases").join(&cluster.cluster);
        std::fs::create_dir_all(&dir)?;
        let server = postgres::Postgres::bootstrap(&cluster, &parameters, &dir, &network.netns)
            .await
            .with_context(|| format!("{label}: the PostgreSQL stand-in"))?;
        let labels: BTreeMap<String, String> = [
            ("cnpg.io/cluster", cluster.cluster.as_str()),
            ("cnpg.io/instanceRole", "primary"),
            ("role", "primary"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let pod = {
            let mut board = self.shared.board();
            board.pods.push(PodState {
                name: pod_name.clone(),
                namespace: namespace.to_owned(),
                labels,
                ip: network.ip,
                ports: vec![(Some("postgresql".into()), 5432)],
                containers: Vec::new(),
                fixed_ready: Some(true),
                long_running: true,
                starting: false,
                binaries: Vec::new(),
                ready: false,
            });
            board.pods.len() - 1
        };
        println!(
            "  {label}: stood in by PostgreSQL {} (host binaries) as pod {pod_name} ({}): database {:?} owned by {:?}, \
             parameters {}; {} instance(s) declared, the primary rehearsed (replication and failover are the operator's)",
            server.version,
            network.ip,
            cluster.database,
            cluster.owner,
            parameters
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            cluster.instances
        );
        // What the operator creates next to it: the Services and the application Secret.
        let selector = |role: Option<&str>| -> BTreeMap<String, String> {
            let mut s = BTreeMap::from([("cnpg.io/cluster".to_owned(), cluster.cluster.clone())]);
            if let Some(role) = role {
                s.insert("cnpg.io/instanceRole".into(), role.into());
            }
            s
        };
        let [rw, ro, r] = cluster.service_names();
        for (service, role) in [(rw, Some("primary")), (ro, Some("replica")), (r, None)] {
            let label = format!("  (operator) Service {namespace}/{service}");
            self.register_service(
                namespace,
                &service,
                selector(role),
                false,
                vec![("postgres".into(), 5432, TargetPort::Number(5432))],
                label.trim(),
            )
            .await?;
            self.applied.insert(ObjectId {
                kind: "Service".into(),
                namespace: Some(namespace.to_owned()),
                name: service,
            });
        }
        let secret = cluster.app_secret();
        println!(
            "  (operator) Secret {namespace}/{}: {}",
            secret.name, secret.made_by
        );
        self.applied.insert(ObjectId {
            kind: "Secret".into(),
            namespace: Some(namespace.to_owned()),
            name: secret.name.clone(),
        });
        self.store
            .add_secret(&secret.namespace, &secret.name, secret.data);
        self.postgres.push((pod, server));
        self.shared.notify();
        Ok(())
    }
}
