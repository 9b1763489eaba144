//! HTTP caching pieces: `Cache-Control` rendering, strong ETags, and which statuses may carry
//! caching headers (`If-None-Match` is `meshgate_wire::etag`).

use meshgate_wire::hex::push_hex;
use sha2::{Digest, Sha256};

/// Statuses that are cacheable by default (RFC 9110 §15.1); only these get max-age policies.
pub fn is_cacheable_status(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// The `Cache-Control` directives of one policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CacheControl {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub max_age: Option<u32>,
    pub s_maxage: Option<u32>,
    pub must_revalidate: bool,
}

impl CacheControl {
    pub fn render(&self) -> String {
        if self.no_store {
            return "no-store".to_owned();
        }
        let mut parts = Vec::new();
        if self.public {
            parts.push("public".to_owned());
        }
        if self.private {
            parts.push("private".to_owned());
        }
        if self.no_cache {
            parts.push("no-cache".to_owned());
        }
        if let Some(age) = self.max_age {
            parts.push(format!("max-age={age}"));
        }
        if let Some(age) = self.s_maxage {
            parts.push(format!("s-maxage={age}"));
        }
        if self.must_revalidate {
            parts.push("must-revalidate".to_owned());
        }
        parts.join(", ")
    }
}

/// Whether an upstream `Cache-Control` forbids storing.
pub fn has_no_store(cache_control: &str) -> bool {
    cache_control
        .split(',')
        .any(|d| d.trim().eq_ignore_ascii_case("no-store"))
}

/// A strong ETag of the body: the first 128 bits of its SHA-256, hex, quoted.
pub fn strong_etag(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let mut etag = String::with_capacity(34);
    etag.push('"');
    push_hex(&mut etag, &digest[..16]);
    etag.push('"');
    etag
}

/// Appends `names` to an existing `Vary` value without duplicates (case-insensitive).
pub fn merge_vary(existing: Option<&str>, names: &[String]) -> Option<String> {
    if let [name] = names
        && existing.is_none_or(|e| e.trim().is_empty())
    {
        // The usual case: no upstream `Vary`, one name.
        return Some(name.clone());
    }
    let mut out: Vec<String> = existing
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    for name in names {
        if !out.iter().any(|v| v.eq_ignore_ascii_case(name) || v == "*") {
            out.push(name.clone());
        }
    }
    (!out.is_empty()).then(|| out.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_the_first_half_of_the_sha256_in_hex() {
        assert_eq!(strong_etag(b"abc"), "\"ba7816bf8f01cfea414140de5dae2223\"");
    }

    #[test]
    fn renders_cache_control() {
        let cc = CacheControl {
            public: true,
            max_age: Some(60),
            s_maxage: Some(300),
            must_revalidate: true,
            ..Default::default()
        };
        assert_eq!(
            cc.render(),
            "public, max-age=60, s-maxage=300, must-revalidate"
        );
        let store = CacheControl {
            no_store: true,
            max_age: Some(5),
            ..Default::default()
        };
        assert_eq!(store.render(), "no-store");
    }

    #[test]
    fn etags_are_stable_and_body_sensitive() {
        assert_eq!(strong_etag(b"abc"), strong_etag(b"abc"));
        assert_ne!(strong_etag(b"abc"), strong_etag(b"abd"));
        assert!(strong_etag(b"").starts_with('"') && strong_etag(b"").len() == 34);
    }

    #[test]
    fn statuses_and_no_store() {
        assert!(is_cacheable_status(200) && is_cacheable_status(404));
        assert!(!is_cacheable_status(500) && !is_cacheable_status(201));
        assert!(has_no_store("private, No-Store"));
        assert!(!has_no_store("no-cache"));
    }

    #[test]
    fn merges_vary() {
        assert_eq!(
            merge_vary(Some("Accept"), &["accept".into(), "authorization".into()]).as_deref(),
            Some("Accept, authorization")
        );
        assert_eq!(merge_vary(None, &[]), None);
    }
}
