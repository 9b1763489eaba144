//! Reading the JSON Web Key Set: a file, or an `http(s)://` URL with rustls (ring, the
//! platform's roots), bounded in time and size.

use std::{path::PathBuf, time::Duration};

use super::policy::JwksSource;

/// Larger documents are refused: a key set is a few KB.
const MAX_JWKS_BYTES: usize = 1 << 20;

pub(super) enum Fetcher {
    File {
        path: PathBuf,
        timeout: Duration,
    },
    Url {
        url: String,
        client: reqwest::Client,
    },
}

impl Fetcher {
    pub(super) fn new(source: &JwksSource, timeout: Duration) -> Result<Self, String> {
        Ok(match source {
            JwksSource::File(path) => Self::File {
                path: path.clone(),
                timeout,
            },
            JwksSource::Url(url) => Self::Url {
                url: url.clone(),
                client: reqwest::Client::builder()
                    .timeout(timeout)
                    .connect_timeout(timeout)
                    .user_agent("meshgate-edge-gateway")
                    .build()
                    .map_err(|e| format!("gateway.auth.jwks.url: no HTTP client: {e}"))?,
            },
        })
    }

    /// What the log calls the source.
    pub(super) fn describe(&self) -> String {
        match self {
            Self::File { path, .. } => path.display().to_string(),
            Self::Url { url, .. } => url.clone(),
        }
    }

    /// A file source, read at start so a bad file stops the gateway; `None` for a URL.
    pub(super) fn read_file_now(&self) -> Option<Result<Vec<u8>, String>> {
        let Self::File { path, .. } = self else {
            return None;
        };
        Some(
            read_bounded(std::fs::read(path))
                .map_err(|e| format!("gateway.auth.jwks.file {}: {e}", path.display())),
        )
    }

    pub(super) async fn fetch(&self) -> Result<Vec<u8>, String> {
        match self {
            Self::File { path, timeout } => {
                match tokio::time::timeout(*timeout, tokio::fs::read(path)).await {
                    Ok(read) => read_bounded(read),
                    Err(_) => Err(format!("not read within {timeout:?}")),
                }
            }
            Self::Url { url, client } => {
                let mut response = client
                    .get(url)
                    .header(http::header::ACCEPT, "application/json")
                    .send()
                    .await
                    .map_err(|e| format!("fetch failed: {e}"))?;
                if !response.status().is_success() {
                    return Err(format!("answered {}", response.status()));
                }
                if response
                    .content_length()
                    .is_some_and(|length| length > MAX_JWKS_BYTES as u64)
                {
                    return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
                }
                let mut body = Vec::new();
                while let Some(chunk) = response
                    .chunk()
                    .await
                    .map_err(|e| format!("reading the body failed: {e}"))?
                {
                    if body.len() + chunk.len() > MAX_JWKS_BYTES {
                        return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(body)
            }
        }
    }
}

fn read_bounded(read: std::io::Result<Vec<u8>>) -> Result<Vec<u8>, String> {
    let document = read.map_err(|e| e.to_string())?;
    if document.len() > MAX_JWKS_BYTES {
        return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
    }
    Ok(document)
}
