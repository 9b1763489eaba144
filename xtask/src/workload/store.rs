//! The ConfigMaps and Secrets pods read, as the API server would hold them.

use super::*;

/// A ConfigMap or Secret as the API server would hold it.
#[derive(Debug, Clone)]
pub struct DataObject {
    pub id: ObjectId,
    pub origin: Option<Origin>,
    pub data: BTreeMap<String, Vec<u8>>,
}

/// The objects that exist (so far): what pods may reference.
#[derive(Debug, Default, Clone)]
pub struct Store {
    pub config_maps: BTreeMap<(String, String), DataObject>,
    pub secrets: BTreeMap<(String, String), DataObject>,
    pub service_accounts: BTreeSet<(String, String)>,
}

impl Store {
    /// Records an applied object (ConfigMaps, Secrets, ServiceAccounts; other kinds are kept
    /// elsewhere).
    pub fn apply(&mut self, object: &Object, namespace: &str) -> anyhow::Result<()> {
        let key = (namespace.to_owned(), object.name().to_owned());
        let id = ObjectId {
            namespace: Some(namespace.to_owned()),
            ..object.id()
        };
        match (object.group(), object.kind()) {
            ("", "ConfigMap") => {
                let mut data: BTreeMap<String, Vec<u8>> = object.value["data"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.as_str().unwrap_or_default().as_bytes().to_vec(),
                        )
                    })
                    .collect();
                for (k, v) in object.value["binaryData"].as_object().into_iter().flatten() {
                    data.insert(
                        k.clone(),
                        decode_base64(v).with_context(|| object.described())?,
                    );
                }
                self.config_maps.insert(
                    key,
                    DataObject {
                        id: id.clone(),
                        origin: Some(object.origin.clone()),
                        data,
                    },
                );
            }
            ("", "Secret") => {
                let mut data = BTreeMap::new();
                for (k, v) in object.value["data"].as_object().into_iter().flatten() {
                    data.insert(
                        k.clone(),
                        decode_base64(v).with_context(|| object.described())?,
                    );
                }
                for (k, v) in object.value["stringData"].as_object().into_iter().flatten() {
                    data.insert(
                        k.clone(),
                        v.as_str().unwrap_or_default().as_bytes().to_vec(),
                    );
                }
                self.secrets.insert(
                    key,
                    DataObject {
                        id: id.clone(),
                        origin: Some(object.origin.clone()),
                        data,
                    },
                );
            }
            ("", "ServiceAccount") => {
                self.service_accounts.insert(key);
            }
            _ => {}
        }
        Ok(())
    }

    pub fn add_secret(&mut self, namespace: &str, name: &str, data: BTreeMap<String, Vec<u8>>) {
        self.secrets.insert(
            (namespace.to_owned(), name.to_owned()),
            DataObject {
                id: ObjectId {
                    kind: "Secret".into(),
                    namespace: Some(namespace.to_owned()),
                    name: name.to_owned(),
                },
                origin: None,
                data,
            },
        );
    }

    pub(super) fn lookup<'a>(
        map: &'a BTreeMap<(String, String), DataObject>,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<&'a DataObject, String> {
        map.get(&(namespace.to_owned(), name.to_owned()))
            .ok_or_else(|| format!("{kind} {namespace}/{name} does not exist"))
    }
}

/// The API server's decoding: line breaks inside the value are ignored (folded YAML).
pub(super) fn decode_base64(value: &Value) -> anyhow::Result<Vec<u8>> {
    let text: String = value
        .as_str()
        .unwrap_or_default()
        .chars()
        .filter(|c| !matches!(c, '\n' | '\r'))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| anyhow!("invalid base64 in data: {e}"))
}
