//! TLS on the main listener (`gateway.tls`, cargo feature `rustls`, on by default): REST,
//! gRPC-web and gRPC over HTTP/1.1 or h2, chosen by ALPN (`h2` preferred).
//!
//! The certificate chain and key are read, parsed and checked against each other here, once
//! when the config is validated (so `--test` and start-up report a bad file as a config error
//! naming the key, exit 2) and again when the listener is built. pingora's own file loading
//! panics inside the listener on a bad file; handing it a ready certificate resolver avoids
//! that path entirely.

use std::{path::Path, sync::Arc};

use pingora::listeners::tls::TlsSettings;
use pingora::tls::{
    CertificateDer, CryptoProvider, PrivateKeyDer,
    sign::{CertifiedKey, SingleCertAndKey},
};
use rustls_pki_types::pem::PemObject;

/// A certificate or key problem, naming the config key it comes from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct TlsError {
    /// `gateway.tls.cert_path`, `gateway.tls.key_path` or `gateway.tls`.
    pub key: &'static str,
    pub reason: String,
}

fn error(key: &'static str, reason: impl Into<String>) -> TlsError {
    TlsError {
        key,
        reason: reason.into(),
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| error(key, format!("cannot read {}: {e}", path.display())))
}

/// Reads the PEM certificate chain (leaf first) and private key (PKCS#8, PKCS#1 or SEC1) and
/// checks that the key belongs to the leaf certificate.
pub fn load_certified_key(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    const CERT: &str = "gateway.tls.cert_path";
    const KEY: &str = "gateway.tls.key_path";
    let cert_pem = read(CERT, cert_path)?;
    let key_pem = read(KEY, key_path)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            error(
                CERT,
                format!(
                    "{} is not a PEM certificate chain: {e}",
                    cert_path.display()
                ),
            )
        })?;
    if chain.is_empty() {
        return Err(error(
            CERT,
            format!("no CERTIFICATE block in {}", cert_path.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        error(
            KEY,
            format!(
                "no PEM private key (PKCS#8, PKCS#1 or SEC1) in {}: {e}",
                key_path.display()
            ),
        )
    })?;
    pingora::tls::install_default_crypto_provider();
    let provider = CryptoProvider::get_default()
        .ok_or_else(|| error("gateway.tls", "no rustls crypto provider is installed"))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        error(
            "gateway.tls",
            format!(
                "the key {} does not fit the certificate {}: {e}",
                key_path.display(),
                cert_path.display()
            ),
        )
    })
}

/// Listener settings serving the certificate, ALPN `h2` then `http/1.1`.
pub fn listener_settings(cert_path: &Path, key_path: &Path) -> Result<TlsSettings, TlsError> {
    let certified = load_certified_key(cert_path, key_path)?;
    let mut settings =
        TlsSettings::intermediate(&cert_path.to_string_lossy(), &key_path.to_string_lossy())
            .map_err(|e| error("gateway.tls", e.to_string()))?;
    // With a resolver set, pingora never opens the files itself (its loader panics on errors).
    settings.set_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    settings.enable_h2();
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        dir: std::path::PathBuf,
    }

    impl Files {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(format!(
                "edge-gateway-tls-unit-{}-{}",
                std::process::id(),
                rand::random::<u64>()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Self { dir }
        }

        fn write(&self, name: &str, contents: &str) -> std::path::PathBuf {
            let path = self.dir.join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn self_signed() -> (String, String) {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (cert.pem(), signing_key.serialize_pem())
    }

    #[test]
    fn a_matching_pair_loads() {
        let files = Files::new();
        let (cert, key) = self_signed();
        let cert = files.write("cert.pem", &cert);
        let key = files.write("key.pem", &key);
        let certified = load_certified_key(&cert, &key).unwrap();
        assert_eq!(certified.cert.len(), 1);
        assert!(listener_settings(&cert, &key).is_ok());
    }

    #[test]
    fn each_problem_names_its_key() {
        let files = Files::new();
        let (cert, key) = self_signed();
        let (_, other_key) = self_signed();
        let cert = files.write("cert.pem", &cert);
        let key = files.write("key.pem", &key);
        let other_key = files.write("other.pem", &other_key);
        let garbage = files.write("garbage.pem", "not pem at all\n");
        let missing = files.dir.join("missing.pem");

        let cases = [
            (&missing, &key, "gateway.tls.cert_path", "cannot read"),
            (&cert, &missing, "gateway.tls.key_path", "cannot read"),
            (&garbage, &key, "gateway.tls.cert_path", "no CERTIFICATE"),
            // A certificate is not a key.
            (&cert, &cert, "gateway.tls.key_path", "no PEM private key"),
            (&cert, &other_key, "gateway.tls", "does not fit"),
        ];
        for (cert_path, key_path, key_name, reason) in cases {
            let error = load_certified_key(cert_path, key_path).unwrap_err();
            assert_eq!(error.key, key_name, "{error}");
            assert!(error.reason.contains(reason), "{error}");
        }
    }
}
