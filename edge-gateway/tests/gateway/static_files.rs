//! `static_dir`: the web page served at `/` beside the API, over real HTTP/1.1.

use std::path::PathBuf;

use edge_gateway::hooks::FilterChain;
use reqwest::{StatusCode, header};
use serde_json::Value;

use crate::helpers::*;

/// A site directory of this test's own, removed on drop.
struct Site(PathBuf);

impl Site {
    fn new() -> Self {
        let root = std::env::temp_dir().join(format!("gw-static-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(root.join("site/assets")).unwrap();
        std::fs::write(
            root.join("site/index.html"),
            "<!doctype html><title>t</title>",
        )
        .unwrap();
        std::fs::write(root.join("site/assets/app-1a2b.js"), "console.log(1)").unwrap();
        std::fs::write(root.join("secret.txt"), "outside the root").unwrap();
        Site(root)
    }

    fn dir(&self) -> PathBuf {
        self.0.join("site")
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn serves_the_page_beside_the_api() {
    let site = Site::new();
    let backend = Backend::start("static").await;
    let mut config = test_config(&[backend.addr]);
    config.static_dir = Some(site.dir());
    let gw = spawn_gateway_with(config, FilterChain::default()).await;
    let client = h1();

    let index = client.get(gw.url("/")).send().await.unwrap();
    assert_eq!(index.status(), StatusCode::OK);
    assert_eq!(
        index.headers()[header::CONTENT_TYPE],
        "text/html; charset=utf-8"
    );
    assert_eq!(index.headers()[header::CACHE_CONTROL], "no-cache");
    let etag = index.headers()[header::ETAG].to_str().unwrap().to_owned();
    assert_eq!(
        index.text().await.unwrap(),
        "<!doctype html><title>t</title>"
    );

    let revalidated = client
        .get(gw.url("/index.html"))
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(revalidated.status(), StatusCode::NOT_MODIFIED);

    let script = client
        .get(gw.url("/assets/app-1a2b.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), StatusCode::OK);
    assert_eq!(
        script.headers()[header::CONTENT_TYPE],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(
        script.headers()[header::CACHE_CONTROL],
        "public, max-age=31536000, immutable"
    );

    let head = client.head(gw.url("/")).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()[header::CONTENT_LENGTH], "31");

    // URL parsers fold `..` and `%2e%2e` segments away; an encoded `/` keeps the attempt intact.
    let escape = client
        .get(gw.url("/assets/%2e%2e%2f%2e%2e%2fsecret.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(escape.status(), StatusCode::BAD_REQUEST);
    assert!(escape.text().await.unwrap().contains(".."));

    // Paths without a file keep the API's JSON 404; API routes are untouched.
    let missing = client.get(gw.url("/missing.js")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let status: Value = missing.json().await.unwrap();
    assert_eq!(status["code"], 5);
    let list = client.get(gw.url("/v1/users")).send().await.unwrap();
    assert_eq!(list.status(), StatusCode::OK);
    assert!(list.json::<Value>().await.unwrap()["users"].is_array());
    // Static files answer GET/HEAD only.
    let post = client.post(gw.url("/index.html")).send().await.unwrap();
    assert_eq!(post.status(), StatusCode::NOT_FOUND);
}
