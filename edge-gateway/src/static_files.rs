//! Static files for browsers: the built web page (`web/dist`) served at `/` for
//! GET/HEAD paths that no API route claims.
//!
//! Path resolution is pure ([`resolve_request_path`]) and unit-tested; the file
//! system is touched only in [`StaticFiles::serve`], which also refuses any file
//! whose canonical path leaves the root (symlinks out of the directory).
//! Caching: Vite's content-hashed `assets/` are immutable for a year; everything
//! else (index.html) is `no-cache`, revalidated cheaply through the ETag.

use std::path::{Component, Path, PathBuf};
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http::{Method, StatusCode, header};
use meshgate_wire::etag::if_none_match_hits;
use percent_encoding::percent_decode_str;

/// Served for a path ending in `/`.
const INDEX_FILE: &str = "index.html";
/// Vite writes content-hashed file names here, so they never change in place.
const HASHED_ASSETS_DIR: &str = "assets";
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const REVALIDATE: &str = "no-cache";

/// Why a request path cannot name a file under the static root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPath {
    NotAbsolute,
    NotUtf8,
    ParentSegment,
    Backslash,
    NulByte,
}

impl BadPath {
    pub fn message(self) -> &'static str {
        match self {
            BadPath::NotAbsolute => "request path must start with '/'",
            BadPath::NotUtf8 => "request path is not valid UTF-8 once percent-decoded",
            BadPath::ParentSegment => "request path must not contain '..' segments",
            BadPath::Backslash => "request path must not contain '\\'",
            BadPath::NulByte => "request path must not contain NUL bytes",
        }
    }
}

/// What a request path names under the static root.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolved {
    /// A relative file path, free of `..`, root and prefix components.
    File(PathBuf),
    /// Dot-files (`.git`, `.env`) are never served, whatever the directory holds.
    Hidden,
}

/// Maps the URI path (without query) to a path relative to the static root.
/// Percent-decoding happens first, so `%2e%2e` and `%2f` are judged decoded.
pub fn resolve_request_path(uri_path: &str) -> Result<Resolved, BadPath> {
    if !uri_path.starts_with('/') {
        return Err(BadPath::NotAbsolute);
    }
    let decoded = percent_decode_str(uri_path)
        .decode_utf8()
        .map_err(|_| BadPath::NotUtf8)?;
    if decoded.contains('\0') {
        return Err(BadPath::NulByte);
    }
    if decoded.contains('\\') {
        return Err(BadPath::Backslash);
    }
    let mut relative = PathBuf::new();
    let mut hidden = false;
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => return Err(BadPath::ParentSegment),
            name => {
                hidden |= name.starts_with('.');
                relative.push(name);
            }
        }
    }
    if decoded.ends_with('/') {
        relative.push(INDEX_FILE);
    }
    // Belt and braces: only plain names may reach the file system.
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(BadPath::ParentSegment);
    }
    Ok(if hidden {
        Resolved::Hidden
    } else {
        Resolved::File(relative)
    })
}

/// `Content-Type` by extension; text types carry `charset=utf-8`.
pub fn content_type(path: &Path) -> String {
    // mime_guess calls source maps text/plain; browsers' dev tools expect JSON.
    if path.extension().is_some_and(|ext| ext == "map") {
        return "application/json; charset=utf-8".to_owned();
    }
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let textual = mime.type_() == mime_guess::mime::TEXT
        || matches!(mime.subtype().as_str(), "javascript" | "json" | "xml");
    if textual && mime.get_param("charset").is_none() {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_string()
    }
}

pub fn cache_control(relative: &Path) -> &'static str {
    match relative.components().next() {
        Some(Component::Normal(first))
            if first == HASHED_ASSETS_DIR && relative.components().count() > 1 =>
        {
            IMMUTABLE
        }
        _ => REVALIDATE,
    }
}

/// A strong validator from size and modification time (what nginx does too).
pub fn etag(len: u64, modified_nanos: u128) -> String {
    format!("\"{len:x}-{modified_nanos:x}\"")
}

/// A complete answer for the proxy to write.
#[derive(Debug)]
pub struct StaticResponse {
    pub status: StatusCode,
    pub headers: Vec<(header::HeaderName, String)>,
    /// Empty for HEAD and 304 (`Content-Length` still tells the size on HEAD).
    pub body: Bytes,
}

impl StaticResponse {
    fn bad_path(reason: BadPath) -> Self {
        let body = Bytes::from(format!("{}\n", reason.message()));
        StaticResponse {
            status: StatusCode::BAD_REQUEST,
            headers: vec![
                (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
                (header::CONTENT_LENGTH, body.len().to_string()),
            ],
            body,
        }
    }
}

/// The static root, canonicalised once at start-up.
#[derive(Debug, Clone)]
pub struct StaticFiles {
    root: PathBuf,
}

impl StaticFiles {
    /// Fails when `dir` is missing or not a directory (a config error).
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        let root = dir.canonicalize()?;
        if !root.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            ));
        }
        Ok(StaticFiles { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The answer for a GET or HEAD of `uri_path`, or `None` when no file
    /// matches (the caller answers 404 as it does for any unknown path).
    pub async fn serve(
        &self,
        method: &Method,
        uri_path: &str,
        if_none_match: Option<&str>,
    ) -> Option<StaticResponse> {
        if method != Method::GET && method != Method::HEAD {
            return None;
        }
        let relative = match resolve_request_path(uri_path) {
            Ok(Resolved::File(relative)) => relative,
            Ok(Resolved::Hidden) => return None,
            Err(reason) => return Some(StaticResponse::bad_path(reason)),
        };
        let full = tokio::fs::canonicalize(self.root.join(&relative))
            .await
            .ok()?;
        if !full.starts_with(&self.root) {
            return None;
        }
        let metadata = tokio::fs::metadata(&full).await.ok()?;
        if !metadata.is_file() {
            return None;
        }
        let modified_nanos = metadata
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let tag = etag(metadata.len(), modified_nanos);
        let mut headers = vec![
            (header::ETAG, tag.clone()),
            (header::CACHE_CONTROL, cache_control(&relative).to_owned()),
        ];
        if if_none_match.is_some_and(|value| if_none_match_hits(value, &tag)) {
            return Some(StaticResponse {
                status: StatusCode::NOT_MODIFIED,
                headers,
                body: Bytes::new(),
            });
        }
        let body = if method == Method::HEAD {
            Bytes::new()
        } else {
            Bytes::from(tokio::fs::read(&full).await.ok()?)
        };
        headers.extend([
            (header::CONTENT_TYPE, content_type(&relative)),
            (header::CONTENT_LENGTH, metadata.len().to_string()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
        ]);
        Some(StaticResponse {
            status: StatusCode::OK,
            headers,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> Resolved {
        Resolved::File(PathBuf::from(path))
    }

    #[test]
    fn plain_paths_and_directories_resolve_inside_the_root() {
        assert_eq!(resolve_request_path("/"), Ok(file("index.html")));
        assert_eq!(resolve_request_path("/index.html"), Ok(file("index.html")));
        assert_eq!(
            resolve_request_path("/assets/index-abc.js"),
            Ok(file("assets/index-abc.js"))
        );
        assert_eq!(resolve_request_path("/docs/"), Ok(file("docs/index.html")));
        assert_eq!(resolve_request_path("//a/./b"), Ok(file("a/b")));
        assert_eq!(resolve_request_path("/a%20b.txt"), Ok(file("a b.txt")));
    }

    #[test]
    fn traversal_is_rejected_raw_and_percent_encoded() {
        for path in [
            "/..",
            "/../etc/passwd",
            "/assets/../../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/%2E%2E%2fetc%2fpasswd",
            "/assets/%2e%2e%2f%2e%2e%2fsecret",
        ] {
            assert_eq!(
                resolve_request_path(path),
                Err(BadPath::ParentSegment),
                "{path}"
            );
        }
        assert_eq!(
            resolve_request_path("/..%5c..%5cwindows"),
            Err(BadPath::Backslash)
        );
        assert_eq!(resolve_request_path("/a\\b"), Err(BadPath::Backslash));
        assert_eq!(resolve_request_path("/a%00.html"), Err(BadPath::NulByte));
        assert_eq!(resolve_request_path("/%ff%fe"), Err(BadPath::NotUtf8));
        assert_eq!(
            resolve_request_path("etc/passwd"),
            Err(BadPath::NotAbsolute)
        );
    }

    #[test]
    fn dot_files_are_hidden() {
        assert_eq!(resolve_request_path("/.env"), Ok(Resolved::Hidden));
        assert_eq!(resolve_request_path("/.git/config"), Ok(Resolved::Hidden));
        assert_eq!(resolve_request_path("/%2egit/HEAD"), Ok(Resolved::Hidden));
    }

    #[test]
    fn content_types_follow_extensions() {
        assert_eq!(
            content_type(Path::new("index.html")),
            "text/html; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("a.css")), "text/css; charset=utf-8");
        assert_eq!(
            content_type(Path::new("assets/a.js")),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            content_type(Path::new("a.js.map")),
            "application/json; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("a.png")), "image/png");
        assert_eq!(content_type(Path::new("a.svg")), "image/svg+xml");
        assert_eq!(
            content_type(Path::new("unknown.bin")),
            "application/octet-stream"
        );
    }

    #[test]
    fn hashed_assets_are_immutable_and_the_rest_revalidates() {
        assert_eq!(cache_control(Path::new("assets/index-abc.js")), IMMUTABLE);
        assert_eq!(cache_control(Path::new("index.html")), REVALIDATE);
        assert_eq!(cache_control(Path::new("assets")), REVALIDATE);
        assert_eq!(cache_control(Path::new("other/assets/x.js")), REVALIDATE);
    }

    #[test]
    fn etag_is_size_and_mtime_in_hex() {
        // Matching it against If-None-Match is `meshgate_wire::etag`'s (tested there).
        assert_eq!(etag(10, 255), "\"a-ff\"");
    }

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "static-files-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("site/assets")).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn serves_files_with_validators_and_refuses_escapes() {
        let temp = TempDir::new("serve");
        let site = temp.0.join("site");
        std::fs::write(site.join("index.html"), "<h1>hi</h1>").unwrap();
        std::fs::write(site.join("assets/app-1.js"), "x()").unwrap();
        std::fs::write(site.join(".env"), "SECRET=1").unwrap();
        std::fs::write(temp.0.join("secret.txt"), "outside").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(temp.0.join("secret.txt"), site.join("link.txt")).unwrap();
        let files = StaticFiles::new(&site).unwrap();

        let index = files.serve(&Method::GET, "/", None).await.unwrap();
        assert_eq!(index.status, StatusCode::OK);
        assert_eq!(&index.body[..], b"<h1>hi</h1>");
        let header = |r: &StaticResponse, name: header::HeaderName| {
            r.headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            header(&index, header::CONTENT_TYPE).as_deref(),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(
            header(&index, header::CONTENT_LENGTH).as_deref(),
            Some("11")
        );
        assert_eq!(
            header(&index, header::CACHE_CONTROL).as_deref(),
            Some(REVALIDATE)
        );

        let tag = header(&index, header::ETAG).unwrap();
        let revalidated = files
            .serve(&Method::GET, "/index.html", Some(&tag))
            .await
            .unwrap();
        assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED);
        assert!(revalidated.body.is_empty());

        let head = files
            .serve(&Method::HEAD, "/assets/app-1.js", None)
            .await
            .unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert!(head.body.is_empty());
        assert_eq!(header(&head, header::CONTENT_LENGTH).as_deref(), Some("3"));
        assert_eq!(
            header(&head, header::CACHE_CONTROL).as_deref(),
            Some(IMMUTABLE)
        );

        let traversal = files
            .serve(&Method::GET, "/%2e%2e/secret.txt", None)
            .await
            .unwrap();
        assert_eq!(traversal.status, StatusCode::BAD_REQUEST);
        assert!(files.serve(&Method::GET, "/.env", None).await.is_none());
        #[cfg(unix)]
        assert!(files.serve(&Method::GET, "/link.txt", None).await.is_none());
        assert!(
            files
                .serve(&Method::GET, "/missing.js", None)
                .await
                .is_none()
        );
        assert!(files.serve(&Method::GET, "/assets", None).await.is_none());
        assert!(
            files
                .serve(&Method::POST, "/index.html", None)
                .await
                .is_none()
        );
    }

    #[test]
    fn a_missing_root_is_an_error() {
        assert!(StaticFiles::new(Path::new("/definitely/not/here")).is_err());
    }
}
