//! Test values for the Secrets the manifests use but do not ship: those created out of band
//! (templates in `deploy/kustomize/secrets/`) and those an operator writes (CloudNativePG's
//! `<cluster>-app`, with the keys and URI format it generates).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;

use crate::argo::Environment;
use crate::objects::parse_yaml_stream;

pub const SECRET_TEMPLATES_DIR: &str = "deploy/kustomize/secrets";
const POSTGRES_PORT: u16 = 5432;

/// A Secret with test values, and why it exists.
#[derive(Debug, Clone)]
pub struct TestSecret {
    pub namespace: String,
    pub name: String,
    pub data: BTreeMap<String, Vec<u8>>,
    pub made_by: String,
}

/// A CloudNativePG Cluster's application database as the operator bootstraps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseCluster {
    pub cluster: String,
    pub namespace: String,
    pub database: String,
    pub owner: String,
    pub password: String,
    pub instances: u64,
    /// The declaring file, for messages.
    pub file: String,
}

impl DatabaseCluster {
    /// The read-write Service the operator creates (`<cluster>-rw`), and its siblings.
    pub fn service_names(&self) -> [String; 3] {
        ["rw", "ro", "r"].map(|suffix| format!("{}-{suffix}", self.cluster))
    }

    /// The `<cluster>-app` Secret CloudNativePG writes (pkg/specs/secrets.go's keys).
    pub fn app_secret(&self) -> TestSecret {
        let host = format!("{}-rw", self.cluster);
        let with_namespace = format!("{host}.{}:{POSTGRES_PORT}", self.namespace);
        let fqdn = format!(
            "{host}.{}.svc.cluster.local:{POSTGRES_PORT}",
            self.namespace
        );
        let uri = |host: &str| {
            format!(
                "postgresql://{}:{}@{host}/{}",
                self.owner, self.password, self.database
            )
        };
        let jdbc = |host: &str| {
            format!(
                "jdbc:postgresql://{host}/{}?password={}&user={}",
                self.database, self.password, self.owner
            )
        };
        let data: BTreeMap<String, String> = [
            ("username", self.owner.clone()),
            ("user", self.owner.clone()),
            ("password", self.password.clone()),
            ("dbname", self.database.clone()),
            ("host", host.clone()),
            ("port", POSTGRES_PORT.to_string()),
            (
                "pgpass",
                format!(
                    "{host}:{POSTGRES_PORT}:{}:{}:{}\n",
                    self.database, self.owner, self.password
                ),
            ),
            ("uri", uri(&with_namespace)),
            ("jdbc-uri", jdbc(&with_namespace)),
            ("fqdn-uri", uri(&fqdn)),
            ("fqdn-jdbc-uri", jdbc(&fqdn)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        TestSecret {
            namespace: self.namespace.clone(),
            name: format!("{}-app", self.cluster),
            data: data.into_iter().map(|(k, v)| (k, v.into_bytes())).collect(),
            made_by: format!("CloudNativePG for Cluster {} ({})", self.cluster, self.file),
        }
    }
}

/// A random value for a test secret (hex, URL-safe, no quoting needed anywhere).
pub fn random_value() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The CloudNativePG Clusters of an environment.
pub fn database_clusters(env: &Environment) -> Vec<DatabaseCluster> {
    env.objects()
        .filter(|(_, o)| o.kind() == "Cluster" && o.group() == "postgresql.cnpg.io")
        .map(|(app, o)| {
            let initdb = &o.value["spec"]["bootstrap"]["initdb"];
            DatabaseCluster {
                cluster: o.name().to_owned(),
                namespace: o.namespace_or(&app.namespace).to_owned(),
                database: initdb["database"].as_str().unwrap_or("app").to_owned(),
                owner: initdb["owner"].as_str().unwrap_or("app").to_owned(),
                password: random_value(),
                instances: o.value["spec"]["instances"].as_u64().unwrap_or(1),
                file: o.origin.file_or_source().to_owned(),
            }
        })
        .collect()
}

/// The out-of-band Secrets, from their templates, every key set to a random value.
pub fn template_secrets(root: &Path) -> anyhow::Result<Vec<TestSecret>> {
    let dir = root.join(SECRET_TEMPLATES_DIR);
    let mut secrets = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(secrets);
    };
    let mut files: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    for file in files {
        if !file.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            continue;
        }
        let text = std::fs::read_to_string(&file)?;
        let relative = format!(
            "{SECRET_TEMPLATES_DIR}/{}",
            file.file_name().unwrap_or_default().to_string_lossy()
        );
        for value in parse_yaml_stream(&text).with_context(|| relative.clone())? {
            if value["kind"] != "Secret" {
                continue;
            }
            let keys = value["stringData"]
                .as_object()
                .into_iter()
                .chain(value["data"].as_object())
                .flat_map(|m| m.keys().cloned());
            secrets.push(TestSecret {
                namespace: value["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("default")
                    .to_owned(),
                name: value["metadata"]["name"].as_str().unwrap_or("").to_owned(),
                data: keys.map(|k| (k, random_value().into_bytes())).collect(),
                made_by: format!("created out of band (template {relative})"),
            });
        }
    }
    Ok(secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cnpg_app_secret_has_the_operator_keys_and_uri_format() {
        let cluster = DatabaseCluster {
            cluster: "users-db".into(),
            namespace: "meshgate".into(),
            database: "users".into(),
            owner: "users".into(),
            password: "pw".into(),
            instances: 1,
            file: "f".into(),
        };
        let secret = cluster.app_secret();
        let get = |k: &str| String::from_utf8(secret.data[k].clone()).unwrap();
        assert_eq!(secret.name, "users-db-app");
        assert_eq!(
            get("uri"),
            "postgresql://users:pw@users-db-rw.meshgate:5432/users"
        );
        assert_eq!(
            get("fqdn-uri"),
            "postgresql://users:pw@users-db-rw.meshgate.svc.cluster.local:5432/users"
        );
        assert_eq!(get("host"), "users-db-rw");
        assert_eq!(get("pgpass"), "users-db-rw:5432:users:users:pw\n");
        assert_eq!(
            cluster.service_names(),
            ["users-db-rw", "users-db-ro", "users-db-r"]
        );
    }
}
