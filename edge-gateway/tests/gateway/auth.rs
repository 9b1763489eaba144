//! `gateway.auth` end to end: tokens signed here with keys generated here (RS256 by the
//! `openssl` tool, ES256 by rcgen; nothing is committed), a JWKS from a file or served over
//! HTTP by the test, the real gateway in front of the real user-service (writes need a token,
//! reads do not) and of the kitchen backend, whose Echo answers the `x-jwt-*` metadata it
//! received as tags: what reached the service, for REST, gRPC-web and native gRPC.

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use base64::Engine;
use bytes::Bytes;
use edge_gateway::{
    auth::policy::{AuthRule, AuthSettings, ClaimCheck, ClaimRequirement, JwksSource},
    hooks::FilterChain,
    server::RunningGateway,
    state::StartError,
};
use jsonwebtoken::{
    Algorithm, EncodingKey, Header,
    jwk::{Jwk, PublicKeyUse},
};
use meshgate_proto::user;
use prost::Message;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::helpers::*;

const ISSUER: &str = "https://issuer.meshgate.test";
const AUDIENCE: &str = "meshgate-edge";
const ECHO: &str = "/kitchen.v1.KitchenService/Echo";

// === keys and tokens ===

struct SigningKey {
    kid: String,
    algorithm: Algorithm,
    key: EncodingKey,
}

impl SigningKey {
    fn es256(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        Self {
            kid: kid.to_owned(),
            algorithm: Algorithm::ES256,
            key: EncodingKey::from_ec_der(&pair.serialize_der()),
        }
    }

    /// A 2048-bit RSA key from `openssl genrsa` (PKCS#1, as jsonwebtoken reads RSA keys).
    fn rs256(kid: &str) -> Self {
        let output = std::process::Command::new("openssl")
            .args(["genrsa", "-traditional", "2048"])
            .output()
            .expect("the openssl tool generates the test's RSA key");
        assert!(output.status.success(), "openssl genrsa failed");
        let pem = String::from_utf8(output.stdout).unwrap();
        let body: String = pem
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        Self {
            kid: kid.to_owned(),
            algorithm: Algorithm::RS256,
            key: EncodingKey::from_rsa_der(&der),
        }
    }

    /// The public half as a JWK under this key's id.
    fn jwk(&self) -> Value {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.algorithm).unwrap();
        jwk.common.key_id = Some(self.kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        serde_json::to_value(jwk).unwrap()
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    /// Signed with this key, naming another key id.
    fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }

    fn token(&self, scope: &str) -> String {
        self.sign(&claims(scope))
    }
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

fn claims(scope: &str) -> Value {
    json!({
        "iss": ISSUER,
        "aud": [AUDIENCE, "another-api"],
        "sub": "user-42",
        "scope": scope,
        "iat": now(),
        "nbf": now() - 5,
        "exp": now() + 300,
    })
}

fn jwks(keys: &[&SigningKey]) -> String {
    json!({"keys": keys.iter().map(|key| key.jwk()).collect::<Vec<_>>()}).to_string()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn payload(token: &str) -> &str {
    token.split('.').nth(1).unwrap()
}

// === JWKS sources ===

/// A JWKS file in a directory of its own.
struct JwksFile {
    dir: PathBuf,
    path: PathBuf,
}

impl JwksFile {
    fn new(document: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("edge-gateway-jwks-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("jwks.json");
        std::fs::write(&path, document).unwrap();
        Self { dir, path }
    }
}

impl Drop for JwksFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A JWKS served over HTTP/1.1 (hyper), whose document the test changes; `stop` closes the
/// listener and every open connection.
struct JwksServer {
    url: String,
    document: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl JwksServer {
    async fn start(document: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let document = Arc::new(Mutex::new(document));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (document.clone(), fetches.clone());
        let task = tokio::spawn(async move {
            // Dropped with the task: aborting it closes kept-alive connections too.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                while connections.try_join_next().is_some() {}
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (served, counted) = (served.clone(), counted.clone());
                let service = hyper::service::service_fn(move |_request| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let body = served.lock().unwrap().clone();
                    async move {
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .header("content-type", "application/json")
                                .body(http_body_util::Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                connections.spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        Self {
            url: format!("http://{addr}/.well-known/jwks.json"),
            document,
            fetches,
            task,
        }
    }

    fn serve(&self, document: String) {
        *self.document.lock().unwrap() = document;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === the gateway ===

fn scope_rule(name: &str, methods: &[&str], scope: &str) -> AuthRule {
    AuthRule {
        name: name.to_owned(),
        methods: methods.iter().map(|m| (*m).to_owned()).collect(),
        routes: Vec::new(),
        claims: vec![ClaimRequirement {
            claim: "scope".into(),
            check: ClaimCheck::Contains(scope.to_owned()),
        }],
    }
}

fn auth_settings(jwks: JwksSource, rules: Vec<AuthRule>) -> AuthSettings {
    AuthSettings {
        jwks,
        refresh_interval: Duration::from_secs(60),
        min_refresh_interval: Duration::from_secs(60),
        fetch_timeout: Duration::from_secs(2),
        issuers: vec![ISSUER.to_owned()],
        audiences: vec![AUDIENCE.to_owned()],
        leeway: Duration::from_secs(5),
        rules,
    }
}

async fn gateway_with(upstream: SocketAddr, auth: AuthSettings) -> TestGateway {
    let mut config = test_config(&[upstream]);
    config.auth = Some(auth);
    spawn_gateway_with(config, FilterChain::default()).await
}

async fn wait_for_keys(gw: &TestGateway, keys: f64) {
    eventually("the JWKS to be fetched", || async {
        gw.metric("meshgate_gateway_jwks_keys", &[]) == keys
    })
    .await;
}

fn decisions(gw: &TestGateway, outcome: &str) -> f64 {
    gw.metric(
        "meshgate_gateway_auth_decisions_total",
        &[("outcome", outcome)],
    )
}

// === calls ===

/// REST Echo: status, JSON body, `WWW-Authenticate`.
async fn rest_echo(
    gw: &TestGateway,
    headers: &[(&str, &str)],
) -> (StatusCode, Value, Option<String>) {
    let mut request = h2().post(gw.url("/v1/sinks")).json(&json!({"id": "s1"}));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, response.json().await.unwrap(), challenge)
}

/// gRPC-web Echo: grpc-status, grpc-message and the echoed tags.
async fn grpc_web_echo(
    gw: &TestGateway,
    headers: &[(&str, &str)],
) -> (String, String, Vec<String>) {
    let sink = kitchen::Sink {
        id: "s1".into(),
        ..Default::default()
    };
    let mut request = h1()
        .post(gw.url(ECHO))
        .header("content-type", "application/grpc-web+proto")
        .body(grpc_web_request(&sink, false));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    if let Some(status) = response.headers().get("grpc-status") {
        // Trailers-only: the gateway answered without calling the service.
        let message = response.headers()["grpc-message"].to_str().unwrap();
        let message = percent_encoding::percent_decode_str(message)
            .decode_utf8()
            .unwrap()
            .into_owned();
        return (status.to_str().unwrap().to_owned(), message, Vec::new());
    }
    let reply = parse_grpc_web(&response.bytes().await.unwrap(), false);
    let tags = reply
        .messages
        .first()
        .map(|m| kitchen::Sink::decode(m.clone()).unwrap().tags)
        .unwrap_or_default();
    (reply.trailers["grpc-status"].clone(), String::new(), tags)
}

/// Native gRPC Echo with the given metadata.
async fn grpc_echo(
    gw: &TestGateway,
    metadata: &[(&'static str, &str)],
) -> Result<kitchen::Sink, tonic::Status> {
    let mut client = kitchen_client(gw.addr).await;
    let mut request = tonic::Request::new(kitchen::Sink {
        id: "s1".into(),
        ..Default::default()
    });
    for (name, value) in metadata {
        request.metadata_mut().insert(*name, value.parse().unwrap());
    }
    client.echo(request).await.map(tonic::Response::into_inner)
}

/// A gRPC request carrying `token`.
fn authorized<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", bearer(token).parse().unwrap());
    request
}

fn tags_of(sink: &Value) -> Vec<String> {
    sink["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect()
}

// === tests ===

#[tokio::test]
async fn rs256_and_es256_tokens_pass_on_rest_grpc_web_and_grpc_and_their_claims_reach_the_service()
{
    let backend = Backend::start("kitchen").await;
    let (rsa, ec) = (SigningKey::rs256("rsa-1"), SigningKey::es256("ec-1"));
    let file = JwksFile::new(&jwks(&[&rsa, &ec]));
    let gw = gateway_with(
        backend.addr,
        auth_settings(
            JwksSource::File(file.path.clone()),
            vec![scope_rule("sink-writes", &[ECHO], "sinks:write")],
        ),
    )
    .await;
    // Read at start: the file's keys are in use at once.
    assert_eq!(gw.metric("meshgate_gateway_jwks_keys", &[]), 2.0);
    for key in [&rsa, &ec] {
        let token = key.token("sinks:read sinks:write");
        let expected = vec![
            format!("x-jwt-claims={}", payload(&token)),
            "x-jwt-sub=user-42".to_owned(),
        ];
        let authorization = bearer(&token);
        // Client copies of the claim headers never reach the service.
        let spoofing = [
            ("authorization", authorization.as_str()),
            ("x-jwt-sub", "admin"),
            ("x-jwt-role", "root"),
        ];

        let (status, sink, _) = rest_echo(&gw, &spoofing).await;
        assert_eq!(status, StatusCode::OK, "{:?}: {sink}", key.algorithm);
        assert_eq!(tags_of(&sink), expected, "REST {:?}", key.algorithm);

        let (status, _, tags) = grpc_web_echo(&gw, &spoofing).await;
        assert_eq!(status, "0");
        assert_eq!(tags, expected, "gRPC-web {:?}", key.algorithm);

        let sink = grpc_echo(&gw, &spoofing).await.unwrap();
        assert_eq!(sink.tags, expected, "gRPC {:?}", key.algorithm);
    }
    // What the service got is the verified token's claims, readable as JSON.
    let sink = grpc_echo(
        &gw,
        &[("authorization", bearer(&ec.token("sinks:write")).as_str())],
    )
    .await
    .unwrap();
    let forwarded = sink
        .tags
        .iter()
        .find_map(|tag| tag.strip_prefix("x-jwt-claims="))
        .unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(forwarded)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["scope"], "sinks:write");
    assert_eq!(claims["iss"], ISSUER);
    // Calls no rule names need no token.
    let read = h1().get(gw.url("/v1/sinks/q1")).send().await.unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    // PUT /v1/sinks/{id} is Echo too: the method's rule covers every binding.
    let other_binding = h1()
        .put(gw.url("/v1/sinks/s2"))
        .json(&json!({"name": "n"}))
        .send()
        .await
        .unwrap();
    assert_eq!(other_binding.status(), StatusCode::UNAUTHORIZED);
    // CORS preflights stay unauthenticated.
    let preflight = h1()
        .request(reqwest::Method::OPTIONS, gw.url("/v1/sinks"))
        .header("origin", ORIGIN)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), StatusCode::NO_CONTENT);
    assert_eq!(decisions(&gw, "allowed"), 7.0);
    assert_eq!(decisions(&gw, "missing_token"), 1.0);
}

#[tokio::test]
async fn client_claim_headers_are_dropped_without_auth_too() {
    let backend = Backend::start("kitchen").await;
    let gw = spawn_gateway(&[backend.addr]).await;
    let spoofing = [("x-jwt-sub", "admin"), ("x-jwt-claims", "e30")];
    let (status, sink, _) = rest_echo(&gw, &spoofing).await;
    assert_eq!(status, StatusCode::OK);
    assert!(tags_of(&sink).is_empty(), "{sink}");
    let (status, _, tags) = grpc_web_echo(&gw, &spoofing).await;
    assert_eq!(status, "0");
    assert!(tags.is_empty(), "{tags:?}");
    let sink = grpc_echo(&gw, &spoofing).await.unwrap();
    assert!(sink.tags.is_empty(), "{sink:?}");
    // The backend does echo what it gets: straight to it, the header shows.
    let mut direct = kitchen_client(backend.addr).await;
    let mut request = tonic::Request::new(kitchen::Sink::default());
    request
        .metadata_mut()
        .insert("x-jwt-sub", "admin".parse().unwrap());
    let echoed = direct.echo(request).await.unwrap().into_inner();
    assert_eq!(echoed.tags, ["x-jwt-sub=admin"]);
}

#[tokio::test]
async fn real_user_service_writes_need_a_token_and_reads_do_not() {
    let service = UserService::start(sqlite_path()).await;
    let (rsa, ec) = (SigningKey::rs256("rsa-1"), SigningKey::es256("ec-1"));
    let file = JwksFile::new(&jwks(&[&rsa, &ec]));
    let gw = gateway_with(
        service.addr,
        auth_settings(
            JwksSource::File(file.path.clone()),
            vec![scope_rule(
                "user-writes",
                &[
                    "/user.UserService/CreateUser",
                    "/user.UserService/UpdateUser",
                    "/user.UserService/DeleteUser",
                ],
                "users:write",
            )],
        ),
    )
    .await;
    let client = h2();
    let body = json!({"name": "Ada", "email": "ada@example.com", "age": 36});

    // REST: 401 with the challenge and the gateway's Status JSON.
    let refused = client
        .post(gw.url("/v1/users"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        refused.headers()["www-authenticate"],
        "Bearer realm=\"meshgate\""
    );
    let status: Value = refused.json().await.unwrap();
    assert_eq!(status["code"], 16, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("missing bearer token")
    );

    let created = client
        .post(gw.url("/v1/users"))
        .header("authorization", bearer(&rsa.token("users:write")))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    // Reads need no token.
    assert_eq!(get_status(&client, gw.url(&location)).await, StatusCode::OK);
    assert_eq!(
        get_status(&client, gw.url("/v1/users?page=1&limit=10")).await,
        StatusCode::OK
    );
    // A valid token without the scope: 403 / PERMISSION_DENIED naming the requirement.
    let forbidden = client
        .put(gw.url(&location))
        .header("authorization", bearer(&ec.token("users:read")))
        .json(&json!({"age": 37}))
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    assert!(
        forbidden.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("error=\"insufficient_scope\"")
    );
    let status: Value = forbidden.json().await.unwrap();
    assert_eq!(status["code"], 7);
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("claim \"scope\" must contain \"users:write\""),
        "{status}"
    );
    let updated = client
        .put(gw.url(&location))
        .header("authorization", bearer(&ec.token("users:write")))
        .json(&json!({"age": 37}))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), StatusCode::OK);

    // gRPC-web.
    let create = |email: &str| user::CreateUserRequest {
        name: "Grace".into(),
        email: email.into(),
        age: 45,
    };
    for (authorization, expected) in [
        (None, "16"),
        (Some(bearer(&ec.token("users:read"))), "7"),
        (Some(bearer(&rsa.token("users:write"))), "0"),
    ] {
        let mut request = h1()
            .post(gw.url("/user.UserService/CreateUser"))
            .header("content-type", "application/grpc-web+proto")
            .body(grpc_web_request(&create("grace@example.com"), false));
        if let Some(authorization) = &authorization {
            request = request.header("authorization", authorization);
        }
        let response = request.send().await.unwrap();
        let status = match response.headers().get("grpc-status") {
            Some(status) => status.to_str().unwrap().to_owned(),
            None => {
                let reply = parse_grpc_web(&response.bytes().await.unwrap(), false);
                let created = user::CreateUserResponse::decode(reply.messages[0].clone());
                assert_eq!(created.unwrap().user.unwrap().email, "grace@example.com");
                reply.trailers["grpc-status"].clone()
            }
        };
        assert_eq!(status, expected, "{authorization:?}");
    }

    // Native gRPC.
    let mut grpc =
        user::user_service_client::UserServiceClient::connect(format!("http://{}", gw.addr))
            .await
            .unwrap();
    let refused = grpc
        .create_user(create("lin@example.com"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert!(
        refused.message().contains("missing bearer token"),
        "{refused:?}"
    );
    let lin = grpc
        .create_user(authorized(
            create("lin@example.com"),
            &ec.token("users:write"),
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let fetched = grpc
        .get_user(user::GetUserRequest { id: lin.id.clone() })
        .await
        .unwrap();
    assert_eq!(fetched.into_inner().user.unwrap().email, "lin@example.com");
    let denied = grpc
        .delete_user(authorized(
            user::DeleteUserRequest { id: lin.id.clone() },
            &rsa.token("users:read"),
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    grpc.delete_user(authorized(
        user::DeleteUserRequest { id: lin.id },
        &rsa.token("users:write"),
    ))
    .await
    .unwrap();
}

#[tokio::test]
async fn bad_tokens_are_refused_naming_the_problem() {
    let backend = Backend::start("kitchen").await;
    let (rsa, ec) = (SigningKey::rs256("rsa-1"), SigningKey::es256("ec-1"));
    let stranger = SigningKey::es256("ec-1");
    let file = JwksFile::new(&jwks(&[&rsa, &ec]));
    let gw = gateway_with(
        backend.addr,
        auth_settings(
            JwksSource::File(file.path.clone()),
            vec![scope_rule("sink-writes", &[ECHO], "sinks:write")],
        ),
    )
    .await;
    let with = |changes: Value| {
        let mut claims = claims("sinks:write");
        for (name, value) in changes.as_object().unwrap() {
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(name);
            } else {
                claims[name] = value.clone();
            }
        }
        claims
    };
    let hmac = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("sinks:write"),
        &EncodingKey::from_secret(b"a shared secret the edge never accepts").unwrap(),
    )
    .unwrap();
    let cases: Vec<(&str, Option<String>, u16, &str, &str)> = vec![
        (
            "missing",
            None,
            401,
            "missing bearer token",
            "missing_token",
        ),
        (
            "basic",
            Some("Basic dXNlcjpwdw==".into()),
            401,
            "malformed bearer token",
            "malformed_token",
        ),
        (
            "not a jwt",
            Some(bearer("not-a-jwt")),
            401,
            "malformed bearer token",
            "malformed_token",
        ),
        (
            "expired",
            Some(bearer(&rsa.sign(&with(json!({"exp": now() - 120}))))),
            401,
            "token expired",
            "expired",
        ),
        (
            "not yet valid",
            Some(bearer(&ec.sign(&with(json!({"nbf": now() + 120}))))),
            401,
            "not valid yet",
            "not_yet_valid",
        ),
        (
            "wrong issuer",
            Some(bearer(&ec.sign(&with(json!({"iss": "https://evil.test"}))))),
            401,
            "token issuer is not accepted",
            "wrong_issuer",
        ),
        (
            "wrong audience",
            Some(bearer(&rsa.sign(&with(json!({"aud": "another-api"}))))),
            401,
            "token audience is not accepted",
            "wrong_audience",
        ),
        (
            "no exp",
            Some(bearer(&ec.sign(&with(json!({"exp": null}))))),
            401,
            "lacks the \"exp\" claim",
            "missing_registered_claim",
        ),
        (
            "unknown kid",
            Some(bearer(&ec.sign_as("ec-2", &claims("sinks:write")))),
            401,
            "unknown key",
            "unknown_key",
        ),
        (
            "another key under a known kid",
            Some(bearer(&stranger.token("sinks:write"))),
            401,
            "signature is invalid",
            "bad_signature",
        ),
        (
            "hmac",
            Some(bearer(&hmac)),
            401,
            "\"HS256\" is not accepted",
            "unsupported_algorithm",
        ),
        (
            "scope missing",
            Some(bearer(&rsa.token("sinks:read"))),
            403,
            "claim \"scope\" must contain \"sinks:write\"",
            "forbidden",
        ),
    ];
    for (case, authorization, http_status, message, outcome) in &cases {
        let before = decisions(&gw, outcome);
        let headers: Vec<(&str, &str)> = authorization
            .iter()
            .map(|a| ("authorization", a.as_str()))
            .collect();
        let (status, body, challenge) = rest_echo(&gw, &headers).await;
        assert_eq!(status.as_u16(), *http_status, "{case}: {body}");
        let grpc_code = if *http_status == 401 { 16 } else { 7 };
        assert_eq!(body["code"], grpc_code, "{case}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(message),
            "{case}: {body}"
        );
        let challenge = challenge.unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer realm=\"meshgate\""),
            "{case}: {challenge}"
        );
        if *http_status == 401 && *case != "missing" {
            assert!(
                challenge.contains("error=\"invalid_token\""),
                "{case}: {challenge}"
            );
        }

        let (status, grpc_message, _) = grpc_web_echo(&gw, &headers).await;
        assert_eq!(status, grpc_code.to_string(), "gRPC-web {case}");
        assert!(
            grpc_message.contains(message),
            "gRPC-web {case}: {grpc_message}"
        );

        let metadata: Vec<(&'static str, &str)> = authorization
            .iter()
            .map(|a| ("authorization", a.as_str()))
            .collect();
        let refused = grpc_echo(&gw, &metadata).await.unwrap_err();
        assert_eq!(refused.code() as i32, grpc_code, "gRPC {case}: {refused:?}");
        assert!(
            refused.message().contains(message),
            "gRPC {case}: {refused:?}"
        );
        assert_eq!(decisions(&gw, outcome), before + 3.0, "{case}");
    }
    assert_eq!(decisions(&gw, "allowed"), 0.0);
}

#[tokio::test]
async fn keys_rotate_over_http_without_a_restart_and_unknown_key_refreshes_are_rate_limited() {
    let backend = Backend::start("kitchen").await;
    let (old, new) = (SigningKey::es256("2026-old"), SigningKey::rs256("2026-new"));
    let server = JwksServer::start(jwks(&[&old])).await;
    let gw = gateway_with(
        backend.addr,
        auth_settings(
            JwksSource::Url(server.url.clone()),
            vec![scope_rule("sink-writes", &[ECHO], "sinks:write")],
        ),
    )
    .await;
    wait_for_keys(&gw, 1.0).await;
    let fetched_at_start = server.fetches();
    let (status, _, _) = rest_echo(
        &gw,
        &[("authorization", bearer(&old.token("sinks:write")).as_str())],
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // The provider rotates: the new key's first token makes the gateway fetch the set again.
    server.serve(jwks(&[&new]));
    let token = new.token("sinks:write");
    let sink = grpc_echo(&gw, &[("authorization", bearer(&token).as_str())])
        .await
        .unwrap();
    assert!(
        sink.tags.contains(&"x-jwt-sub=user-42".to_owned()),
        "{sink:?}"
    );
    assert_eq!(server.fetches(), fetched_at_start + 1);
    assert_eq!(gw.metric("meshgate_gateway_jwks_keys", &[]), 1.0);
    // The retired key is gone with the old set.
    let (status, body, _) = rest_echo(
        &gw,
        &[("authorization", bearer(&old.token("sinks:write")).as_str())],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["message"].as_str().unwrap().contains("unknown key"),
        "{body}"
    );
    // Further unknown key ids within min_refresh_interval fetch nothing.
    for kid in ["forged-1", "forged-2", "forged-3"] {
        let forged = new.sign_as(kid, &claims("sinks:write"));
        let (status, _, _) = rest_echo(&gw, &[("authorization", bearer(&forged).as_str())]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(server.fetches(), fetched_at_start + 1);
    assert_eq!(
        gw.metric("meshgate_gateway_jwks_refresh_failures_total", &[]),
        0.0
    );
}

#[tokio::test]
async fn an_unreachable_or_broken_jwks_keeps_the_last_good_keys() {
    let backend = Backend::start("kitchen").await;
    let key = SigningKey::es256("ec-1");
    let server = JwksServer::start(jwks(&[&key])).await;
    let mut settings = auth_settings(
        JwksSource::Url(server.url.clone()),
        vec![scope_rule("sink-writes", &[ECHO], "sinks:write")],
    );
    settings.refresh_interval = Duration::from_millis(100);
    settings.fetch_timeout = Duration::from_millis(500);
    let gw = gateway_with(backend.addr, settings).await;
    wait_for_keys(&gw, 1.0).await;
    let token = key.token("sinks:write");
    let passes = || async {
        let (status, body, _) = rest_echo(&gw, &[("authorization", bearer(&token).as_str())]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    };
    passes().await;
    let failures = || gw.metric("meshgate_gateway_jwks_refresh_failures_total", &[]);
    assert_eq!(failures(), 0.0);

    // A document that is not a key set, then one without a usable key: counted, keys kept.
    server.serve("<html>maintenance</html>".into());
    eventually("a failed refresh", || async { failures() >= 1.0 }).await;
    passes().await;
    server.serve(json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}).to_string());
    let counted = failures();
    eventually("another failed refresh", || async { failures() > counted }).await;
    passes().await;

    // The JWKS server goes away: every refresh fails, the keys stay.
    server.stop();
    let counted = failures();
    eventually("refreshes failing against a closed port", || async {
        failures() >= counted + 2.0
    })
    .await;
    passes().await;
    assert_eq!(gw.metric("meshgate_gateway_jwks_keys", &[]), 1.0);
}

#[tokio::test]
async fn a_rule_naming_what_is_not_served_or_an_unusable_key_file_stops_the_start() {
    let key = SigningKey::es256("ec-1");
    let file = JwksFile::new(&jwks(&[&key]));
    let start = |auth: AuthSettings| {
        let mut config = test_config(&["127.0.0.1:1".parse().unwrap()]);
        config.auth = Some(auth);
        match RunningGateway::start(config, FilterChain::default()) {
            Ok(_) => panic!("the gateway started"),
            Err(StartError::Auth(reason)) => reason,
            Err(other) => panic!("{other}"),
        }
    };
    let reason = start(auth_settings(
        JwksSource::File(file.path.clone()),
        vec![scope_rule("typo", &["/user.UserService/CreateUsers"], "w")],
    ));
    assert!(reason.contains("/user.UserService/CreateUsers"), "{reason}");
    let mut route_rule = scope_rule("rest", &[], "w");
    route_rule.routes = vec!["POST /v1/user".into()];
    let reason = start(auth_settings(
        JwksSource::File(file.path.clone()),
        vec![route_rule],
    ));
    assert!(reason.contains("POST /v1/user"), "{reason}");
    let broken = JwksFile::new("{\"keys\": []}");
    let reason = start(auth_settings(
        JwksSource::File(broken.path.clone()),
        vec![scope_rule("w", &[ECHO], "w")],
    ));
    assert!(
        reason.contains("no usable RS256/ES256 signing key"),
        "{reason}"
    );
    let reason = start(auth_settings(
        JwksSource::File(file.dir.join("missing.json")),
        vec![scope_rule("w", &[ECHO], "w")],
    ));
    assert!(reason.contains("missing.json"), "{reason}");
}
