//! Rendered Kubernetes objects: the parsed value plus where it came from (the Argo CD
//! Application, the source it renders and the file that declared it).

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

/// Where an object was declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The Argo CD Application that syncs it (the root Application for the child Applications).
    pub application: String,
    /// The rendered source, repository-relative (`deploy/kustomize/overlays/dev`).
    pub source: String,
    /// The file that declared it, repository-relative, when kustomize recorded it.
    pub file: Option<String>,
    /// For generated objects (configMapGenerator, secretGenerator): the kustomization and the
    /// generator's input files, as `key=path`, repository-relative.
    pub generated_by: Option<Generated>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub kustomization: String,
    pub files: BTreeMap<String, String>,
}

impl Origin {
    /// The file to name in a message: the declaring file, else the source.
    pub fn file_or_source(&self) -> &str {
        self.file.as_deref().unwrap_or(&self.source)
    }
}

#[derive(Debug, Clone)]
pub struct Object {
    pub value: Value,
    pub origin: Origin,
}

impl Object {
    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }

    pub fn api_version(&self) -> &str {
        self.value["apiVersion"].as_str().unwrap_or("")
    }

    /// The API group (`apps`, `argoproj.io`, "" for core).
    pub fn group(&self) -> &str {
        match self.api_version().rsplit_once('/') {
            Some((group, _)) => group,
            None => "",
        }
    }

    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }

    /// The object's namespace, or `default_namespace` (the Application's destination) when the
    /// manifest leaves it out.
    pub fn namespace_or<'a>(&'a self, default_namespace: &'a str) -> &'a str {
        self.value["metadata"]["namespace"]
            .as_str()
            .unwrap_or(default_namespace)
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.value["metadata"]["annotations"][key].as_str()
    }

    /// `Kind namespace/name`, or `Kind name` for cluster-scoped objects.
    pub fn id(&self) -> ObjectId {
        ObjectId {
            kind: self.kind().to_owned(),
            namespace: self.value["metadata"]["namespace"]
                .as_str()
                .map(str::to_owned),
            name: self.name().to_owned(),
        }
    }

    /// `file: Kind ns/name`, what every message about an object starts with.
    pub fn described(&self) -> String {
        format!("{}: {}", self.origin.file_or_source(), self.id())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{} {}/{}", self.kind, namespace, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// A JSON object of strings (labels, ConfigMap data) as a map; other values are skipped.
pub fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|map| {
            map.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `labels` carry every pair of a `matchLabels`-style selector (an empty selector
/// matches nothing, as for a Service).
pub fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Parses a multi-document YAML stream into JSON values, skipping empty documents.
pub fn parse_yaml_stream(text: &str) -> anyhow::Result<Vec<Value>> {
    use serde::Deserialize;
    let mut values = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let value = Value::deserialize(document)?;
        if !value.is_null() {
            values.push(value);
        }
    }
    Ok(values)
}

/// A parsed object for unit tests, declared in `deploy/x/deployment.yaml` of Application `apps`.
#[cfg(test)]
pub fn test_object(yaml: &str) -> Object {
    Object {
        value: serde_norway::from_str(yaml).expect("test YAML"),
        origin: Origin {
            application: "apps".into(),
            source: "deploy/x".into(),
            file: Some("deploy/x/deployment.yaml".into()),
            generated_by: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_streams_skip_empty_documents_and_keep_order() {
        let values = parse_yaml_stream("---\nkind: A\n---\n---\nkind: B\n").unwrap();
        let kinds: Vec<_> = values.iter().map(|v| v["kind"].clone()).collect();
        assert_eq!(kinds, vec![Value::from("A"), Value::from("B")]);
    }

    #[test]
    fn selectors_need_every_pair_and_empty_matches_nothing() {
        let labels: BTreeMap<_, _> = [("app", "x"), ("tier", "api")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let select = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert!(selector_matches(&select(&[("app", "x")]), &labels));
        assert!(!selector_matches(
            &select(&[("app", "x"), ("tier", "db")]),
            &labels
        ));
        assert!(!selector_matches(&select(&[]), &labels));
    }
}
