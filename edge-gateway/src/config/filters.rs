//! `gateway.filters`: each entry checked into a [`FilterSpec`] (unique names, a known
//! built-in, which runtime runs it, its pluginConfig as JSON). Pure; a relative `.wasm` path
//! is resolved against the config file's directory by [`super::load`].

use std::path::PathBuf;

use meshgate_filter_host::{BuiltIn, FailStrategy};

use super::{ConfigError, invalid, schema::FilterSection};

/// What runs a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterRuntime {
    /// A built-in filter, natively (Envoy's null VM).
    Native(BuiltIn),
    /// A proxy-wasm module on wasmtime.
    Wasm { module: PathBuf },
}

/// A validated [`FilterSection`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterSpec {
    pub name: String,
    pub runtime: FilterRuntime,
    pub config_json: String,
    pub workers: usize,
    pub fail_strategy: FailStrategy,
}

/// Workers per filter when `workers` is not set: enough that the gateway's threads rarely wait.
pub const DEFAULT_FILTER_WORKERS: usize = 4;
const MAX_FILTER_WORKERS: usize = 64;

fn builtin_names() -> String {
    BuiltIn::ALL.map(BuiltIn::name).join(", ")
}

fn filter_runtime(
    section: &FilterSection,
    key: &dyn Fn(&str) -> String,
) -> Result<FilterRuntime, ConfigError> {
    let builtin = match section.builtin.as_deref() {
        None => None,
        Some(name) => Some(BuiltIn::from_name(name).ok_or_else(|| {
            invalid(
                &key("builtin"),
                format!("{name:?} is not a built-in filter ({})", builtin_names()),
            )
        })?),
    };
    let native = match section.runtime.as_deref() {
        None => builtin.is_some(),
        Some("native") => true,
        Some("wasm") => false,
        Some(other) => {
            return Err(invalid(
                &key("runtime"),
                format!("{other:?} must be native or wasm"),
            ));
        }
    };
    if native {
        let builtin = builtin.ok_or_else(|| {
            invalid(
                &key("builtin"),
                format!(
                    "runtime native runs a built-in filter: set builtin ({})",
                    builtin_names()
                ),
            )
        })?;
        return Ok(FilterRuntime::Native(builtin));
    }
    match &section.module {
        Some(module) if !module.as_os_str().is_empty() => Ok(FilterRuntime::Wasm {
            module: module.clone(),
        }),
        _ => Err(invalid(
            &key("module"),
            "runtime wasm needs a path to a .wasm module",
        )),
    }
}

pub(super) fn filter_specs(sections: Vec<FilterSection>) -> Result<Vec<FilterSpec>, ConfigError> {
    let mut specs: Vec<FilterSpec> = Vec::with_capacity(sections.len());
    for (index, section) in sections.into_iter().enumerate() {
        let key = |field: &str| format!("gateway.filters[{index}].{field}");
        let name_ok = !section.name.is_empty()
            && section
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err(invalid(
                &key("name"),
                format!("{:?} must be non-empty [A-Za-z0-9_-]", section.name),
            ));
        }
        if specs.iter().any(|spec| spec.name == section.name) {
            return Err(invalid(
                &key("name"),
                format!("{:?} is used by an earlier filter", section.name),
            ));
        }
        let runtime = filter_runtime(&section, &key)?;
        let config_json = match section.config {
            None => "{}".to_owned(),
            Some(value @ serde_json::Value::Object(_)) => value.to_string(),
            Some(other) => {
                return Err(invalid(
                    &key("config"),
                    format!("must be an object (the WasmPlugin pluginConfig), not {other}"),
                ));
            }
        };
        let workers = section.workers.unwrap_or(DEFAULT_FILTER_WORKERS);
        if !(1..=MAX_FILTER_WORKERS).contains(&workers) {
            return Err(invalid(
                &key("workers"),
                format!("must be between 1 and {MAX_FILTER_WORKERS}"),
            ));
        }
        let fail_strategy = match section.fail_strategy.as_deref() {
            None => FailStrategy::default(),
            Some(name) => FailStrategy::from_name(name).ok_or_else(|| {
                invalid(
                    &key("failStrategy"),
                    format!("{name:?} must be FAIL_CLOSE or FAIL_OPEN"),
                )
            })?,
        };
        specs.push(FilterSpec {
            name: section.name,
            runtime,
            config_json,
            workers,
            fail_strategy,
        });
    }
    Ok(specs)
}
