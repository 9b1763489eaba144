//! The I/O edge of the configuration: reading the file, then what pure checks cannot decide —
//! the static directory exists, pingora accepts its `server` section, the TLS certificate and
//! key load and match — around [`super::settings`].

use std::path::Path;

use crate::auth::policy::JwksSource;

use super::{
    ConfigError, GatewayConfig, Overrides, filters::FilterRuntime, invalid, schema::FileConfig,
    settings::gateway_config,
};

impl GatewayConfig {
    /// Reads the file (if any), applies overrides, validates.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let file = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Self::parse_file(&text)?
            }
            None => FileConfig::default(),
        };
        let mut config = Self::from_file(file, overrides)?;
        if let Some(dir) = path.and_then(Path::parent) {
            for filter in &mut config.filters {
                if let FilterRuntime::Wasm { module } = &mut filter.runtime
                    && module.is_relative()
                {
                    *module = dir.join(&*module);
                }
            }
            if let Some(auth) = &mut config.auth
                && let JwksSource::File(file) = &mut auth.jwks
                && file.is_relative()
            {
                *file = dir.join(&*file);
            }
        }
        Ok(config)
    }

    pub fn parse_file(text: &str) -> Result<FileConfig, ConfigError> {
        serde_norway::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))
    }

    /// Applies the overrides to the parsed file and validates the result.
    pub fn from_file(file: FileConfig, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut gateway = file.gateway;
        overrides.apply(&mut gateway);
        if let Some(dir) = &gateway.static_dir
            && !dir.is_dir()
        {
            return Err(invalid(
                "gateway.static_dir",
                format!(
                    "{} is not a directory (build the page: scripts/build-web)",
                    dir.display()
                ),
            ));
        }
        let server = match file.server {
            Some(value) => {
                let text = serde_norway::to_string(&value)
                    .map_err(|e| invalid("server", e.to_string()))?;
                pingora::server::configuration::ServerConf::from_yaml(&text)
                    .map_err(|e| invalid("server", e.to_string()))?;
                Some(text)
            }
            None => None,
        };
        let config = gateway_config(gateway, server)?;
        if let Some((_, cert, key)) = &config.tls {
            check_tls(cert, key)?;
        }
        Ok(config)
    }
}

/// The certificate and key are loaded and checked now, so a bad file is a config error.
#[cfg(feature = "rustls")]
fn check_tls(cert: &Path, key: &Path) -> Result<(), ConfigError> {
    crate::tls::load_certified_key(cert, key)
        .map(drop)
        .map_err(|e| invalid(e.key, e.reason))
}

#[cfg(not(feature = "rustls"))]
fn check_tls(_cert: &Path, _key: &Path) -> Result<(), ConfigError> {
    Err(invalid(
        "gateway.tls",
        "this edge-gateway was built without TLS (cargo feature `rustls`)",
    ))
}
