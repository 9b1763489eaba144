//! The request and response the embedder hands the chain.

use meshgate_filter_core::host;

/// An HTTP request as the filters see it. Header names are lower-cased on entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub authority: String,
    pub scheme: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// `source.address` (`ip:port`).
    pub source_address: Option<String>,
    /// `connection.uri_san_peer_certificate` (the SPIFFE id of an mTLS peer).
    pub peer_principal: Option<String>,
}

impl Request {
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.to_owned(),
            path: path.to_owned(),
            authority: "localhost".to_owned(),
            scheme: "http".to_owned(),
            ..Self::default()
        }
    }
    #[must_use]
    pub fn source(mut self, address: &str) -> Self {
        self.source_address = Some(address.to_owned());
        self
    }
    #[must_use]
    pub fn principal(mut self, spiffe_id: &str) -> Self {
        self.peer_principal = Some(spiffe_id.to_owned());
        self
    }
}

/// An HTTP response (upstream's, or a filter's local reply).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
}

impl Response {
    pub fn new(status: u16) -> Self {
        Self {
            status,
            ..Self::default()
        }
    }
    #[must_use]
    pub fn trailer(mut self, name: &str, value: &str) -> Self {
        self.trailers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }
}

/// The builder and reader methods a request and a response share (both have `headers` and
/// `body`).
macro_rules! headers_and_body {
    ($message:ty) => {
        impl $message {
            #[must_use]
            pub fn header(mut self, name: &str, value: &str) -> Self {
                self.headers
                    .push((name.to_ascii_lowercase(), value.to_owned()));
                self
            }
            #[must_use]
            pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
                self.body = body.into();
                self
            }
            pub fn header_value(&self, name: &str) -> Option<&str> {
                host::header_value(&self.headers, name)
            }
        }
    };
}

headers_and_body!(Request);
headers_and_body!(Response);
