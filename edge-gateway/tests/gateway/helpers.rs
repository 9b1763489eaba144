//! Test backends (a kitchen-sink service, an in-memory user service, grpc.health.v1) and an
//! in-process gateway per test.

#![allow(dead_code)]

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::Engine;
use bytes::{Buf, Bytes};
use edge_gateway::{
    config::GatewayConfig,
    hooks::FilterChain,
    server::{Listeners, RunningGateway},
};
use meshgate_proto::user::{self, user_service_server::UserServiceServer};
use prost::Message;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tokio_stream::{Stream, wrappers::TcpListenerStream};
use tonic::{Request, Response, Status};

pub use meshgate_test_support::kitchen::DESCRIPTOR_SET_PATH as KITCHEN_DESCRIPTORS;
pub use meshgate_test_support::kitchen::pb;
pub use meshgate_test_support::process::{ChildLog, ready as gateway_ready};
pub use meshgate_test_support::user_service::{EmbeddedUserService as UserService, sqlite_path};
pub use meshgate_test_support::wait::{ClosedPort, eventually, grpc_serving as wait_grpc_serving};

use kitchen::kitchen_service_server::{KitchenService, KitchenServiceServer};
pub use pb::kitchen::v1 as kitchen;

pub const ORIGIN: &str = "https://app.example";

/// The address an in-process gateway's listener is configured with: [`spawn_gateway_with`]
/// binds a socket of its own for each listener the config has and hands it to the gateway, so
/// no parallel test can take the port first. (An upstream that must refuse connections is a
/// [`ClosedPort`], which holds its port.)
pub const ANY_PORT: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    0,
));

// === impl Kitchen ===

#[derive(Clone)]
struct Kitchen {
    name: String,
}

fn bad_request(code: i32, message: &str, field: &str) -> Status {
    use meshgate_proto::google::rpc::{
        BadRequest, Status as RpcStatus, bad_request::FieldViolation,
    };
    let violation = BadRequest {
        field_violations: vec![FieldViolation {
            field: field.to_owned(),
            description: format!("{field} is wrong"),
            ..Default::default()
        }],
    };
    let details = RpcStatus {
        code,
        message: message.to_owned(),
        details: vec![prost_types::Any {
            type_url: "type.googleapis.com/google.rpc.BadRequest".into(),
            value: violation.encode_to_vec(),
        }],
    };
    Status::with_details(
        tonic::Code::from(code),
        message,
        details.encode_to_vec().into(),
    )
}

type TickStream = Pin<Box<dyn Stream<Item = Result<kitchen::Tick, Status>> + Send>>;

#[tonic::async_trait]
impl KitchenService for Kitchen {
    async fn echo(
        &self,
        request: Request<kitchen::Sink>,
    ) -> Result<Response<kitchen::Sink>, Status> {
        // The `x-jwt-*` metadata the edge sent (verified claims), as `name=value` tags, so
        // tests see what reached the service.
        let mut claims: Vec<String> = request
            .metadata()
            .clone()
            .into_headers()
            .iter()
            .filter(|(name, _)| name.as_str().starts_with("x-jwt-"))
            .map(|(name, value)| format!("{name}={}", value.to_str().unwrap_or("<binary>")))
            .collect();
        claims.sort();
        let mut sink = request.into_inner();
        sink.served_by = self.name.clone();
        sink.tags.extend(claims);
        Ok(Response::new(sink))
    }

    async fn query(
        &self,
        request: Request<kitchen::Sink>,
    ) -> Result<Response<kitchen::Sink>, Status> {
        // Echo the trace header so tests can see what was propagated.
        let traceparent = request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let custom = request
            .metadata()
            .get("x-custom")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut sink = request.into_inner();
        sink.served_by = self.name.clone();
        if sink.id == "trace" {
            sink.choice = Some(kitchen::sink::Choice::Text(traceparent));
        }
        if let Some(custom) = custom {
            sink.tags.push(format!("x-custom={custom}"));
        }
        Ok(Response::new(sink))
    }

    async fn set_nested(
        &self,
        request: Request<kitchen::Sink>,
    ) -> Result<Response<kitchen::Sink>, Status> {
        let mut sink = request.into_inner();
        if let Some(nested) = &mut sink.nested {
            nested.label = format!("{}:{}", sink.id, nested.label);
        }
        Ok(Response::new(sink))
    }

    async fn cancel(
        &self,
        request: Request<kitchen::Sink>,
    ) -> Result<Response<kitchen::Sink>, Status> {
        let mut sink = request.into_inner();
        sink.name = format!("cancelled {}", sink.id);
        Ok(Response::new(sink))
    }

    async fn fail(
        &self,
        request: Request<kitchen::FailRequest>,
    ) -> Result<Response<kitchen::Sink>, Status> {
        let request = request.into_inner();
        Err(bad_request(request.code, &request.message, &request.field))
    }

    async fn slow(
        &self,
        request: Request<kitchen::SlowRequest>,
    ) -> Result<Response<kitchen::Sink>, Status> {
        tokio::time::sleep(Duration::from_millis(u64::from(
            request.into_inner().millis,
        )))
        .await;
        Ok(Response::new(kitchen::Sink {
            served_by: self.name.clone(),
            ..Default::default()
        }))
    }

    async fn place_order(
        &self,
        request: Request<kitchen::Order>,
    ) -> Result<Response<kitchen::Order>, Status> {
        Ok(Response::new(request.into_inner()))
    }

    type CountStream = TickStream;

    async fn count(
        &self,
        request: Request<kitchen::CountRequest>,
    ) -> Result<Response<TickStream>, Status> {
        let request = request.into_inner();
        let mut items: Vec<Result<kitchen::Tick, Status>> = (0..request.n)
            .map(|index| Ok(kitchen::Tick { index }))
            .collect();
        if request.fail_code != 0 {
            items.push(Err(Status::new(
                tonic::Code::from(request.fail_code),
                "stream failed",
            )));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }
}

// === impl Users ===

#[derive(Clone, Default)]
struct Users {
    users: Arc<Mutex<HashMap<String, user::User>>>,
    next: Arc<Mutex<u64>>,
}

#[tonic::async_trait]
impl user::user_service_server::UserService for Users {
    async fn create_user(
        &self,
        request: Request<user::CreateUserRequest>,
    ) -> Result<Response<user::CreateUserResponse>, Status> {
        let request = request.into_inner();
        if !request.email.contains('@') {
            return Err(bad_request(3, "invalid email", "email"));
        }
        let mut users = self.users.lock().unwrap();
        if users.values().any(|u| u.email == request.email) {
            return Err(Status::already_exists("email already registered"));
        }
        let id = {
            let mut next = self.next.lock().unwrap();
            *next += 1;
            // UUIDs, like the real service: the contract's rules check the id's form.
            uuid::Uuid::from_u128(u128::from(*next)).to_string()
        };
        let user = user::User {
            id: id.clone(),
            name: request.name,
            email: request.email,
            age: request.age,
            created_at: 1_700_000_000,
            updated_at: 1_700_000_000,
        };
        users.insert(id, user.clone());
        Ok(Response::new(user::CreateUserResponse {
            user: Some(user),
            message: "created".into(),
        }))
    }

    async fn get_user(
        &self,
        request: Request<user::GetUserRequest>,
    ) -> Result<Response<user::GetUserResponse>, Status> {
        let id = request.into_inner().id;
        let user = self.users.lock().unwrap().get(&id).cloned();
        match user {
            Some(user) => Ok(Response::new(user::GetUserResponse {
                user: Some(user),
                message: "ok".into(),
            })),
            None => Err(Status::not_found(format!("user {id} not found"))),
        }
    }

    async fn update_user(
        &self,
        request: Request<user::UpdateUserRequest>,
    ) -> Result<Response<user::UpdateUserResponse>, Status> {
        let request = request.into_inner();
        let mut users = self.users.lock().unwrap();
        let user = users
            .get_mut(&request.id)
            .ok_or_else(|| Status::not_found(format!("user {} not found", request.id)))?;
        if !request.name.is_empty() {
            user.name = request.name;
        }
        if request.age != 0 {
            user.age = request.age;
        }
        Ok(Response::new(user::UpdateUserResponse {
            user: Some(user.clone()),
            message: "updated".into(),
        }))
    }

    async fn delete_user(
        &self,
        request: Request<user::DeleteUserRequest>,
    ) -> Result<Response<user::DeleteUserResponse>, Status> {
        let id = request.into_inner().id;
        match self.users.lock().unwrap().remove(&id) {
            Some(_) => Ok(Response::new(user::DeleteUserResponse {
                message: format!("user {id} deleted"),
            })),
            None => Err(Status::not_found(format!("user {id} not found"))),
        }
    }

    async fn list_users(
        &self,
        request: Request<user::ListUsersRequest>,
    ) -> Result<Response<user::ListUsersResponse>, Status> {
        let request = request.into_inner();
        let mut users: Vec<_> = self.users.lock().unwrap().values().cloned().collect();
        users.sort_by(|a, b| a.id.cmp(&b.id));
        let total = users.len() as i32;
        let limit = if request.limit == 0 {
            10
        } else {
            request.limit.clamp(1, 100)
        } as usize;
        let page = request.page.max(1) as usize;
        let users = users
            .into_iter()
            .skip((page - 1) * limit)
            .take(limit)
            .collect();
        Ok(Response::new(user::ListUsersResponse {
            users,
            total,
            message: "ok".into(),
        }))
    }

    async fn test_error(
        &self,
        request: Request<user::TestErrorRequest>,
    ) -> Result<Response<user::TestErrorResponse>, Status> {
        let code = match request.into_inner().status_code.as_str() {
            "400" => tonic::Code::InvalidArgument,
            "401" => tonic::Code::Unauthenticated,
            "403" => tonic::Code::PermissionDenied,
            "404" => tonic::Code::NotFound,
            "409" => tonic::Code::AlreadyExists,
            "429" => tonic::Code::ResourceExhausted,
            "503" => tonic::Code::Unavailable,
            _ => tonic::Code::Internal,
        };
        Err(Status::new(code, "test error"))
    }

    async fn list_user_events(
        &self,
        _: Request<user::ListUserEventsRequest>,
    ) -> Result<Response<user::ListUserEventsResponse>, Status> {
        Err(Status::unimplemented(
            "the gateway tests' backend keeps no event history",
        ))
    }

    type WatchUsersStream = tokio_stream::Empty<Result<user::UserEvent, Status>>;

    async fn watch_users(
        &self,
        _: Request<user::WatchUsersRequest>,
    ) -> Result<Response<Self::WatchUsersStream>, Status> {
        Err(Status::unimplemented(
            "the gateway tests' backend has no live updates (the real user-service has)",
        ))
    }
}

// === impl Backend ===

/// A test gRPC server: kitchen + users + grpc.health.v1.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
    pub health: tonic_health::server::HealthReporter,
}

impl Backend {
    pub async fn start(name: &str) -> Self {
        Self::start_at(name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Binds `ip` on a port that is free on every one of `ips` (so one DNS name with one port
    /// can point at several backends); returns the backends in the order of `ips`.
    pub async fn start_on_ips(names: &[&str], ips: &[std::net::IpAddr]) -> (u16, Vec<Self>) {
        'port: loop {
            let first = TcpListener::bind((ips[0], 0)).await.unwrap();
            let port = first.local_addr().unwrap().port();
            let mut listeners = vec![first];
            for ip in &ips[1..] {
                match TcpListener::bind((*ip, port)).await {
                    Ok(listener) => listeners.push(listener),
                    Err(_) => continue 'port,
                }
            }
            let mut backends = Vec::new();
            for (name, listener) in names.iter().zip(listeners) {
                backends.push(Self::serve(name, listener).await);
            }
            return (port, backends);
        }
    }

    pub async fn start_at(name: &str, addr: SocketAddr) -> Self {
        Self::serve(name, TcpListener::bind(addr).await.unwrap()).await
    }

    async fn serve(name: &str, listener: TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let (tx, rx) = oneshot::channel::<()>();
        let kitchen = Kitchen {
            name: name.to_owned(),
        };
        let handle = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(health_service)
                .add_service(KitchenServiceServer::new(kitchen))
                .add_service(UserServiceServer::new(Users::default()))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            name: name.to_owned(),
            shutdown: Some(tx),
            handle: Some(handle),
            health,
        }
    }

    /// Stops accepting and closes connections (GOAWAY), like a killed pod behind a Service.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
        }
    }
}

// === impl TestGateway ===

pub struct TestGateway {
    pub addr: SocketAddr,
    pub base: String,
    pub metrics_addr: Option<SocketAddr>,
    /// `gateway.tls.listen`, when the config has TLS.
    pub tls_addr: Option<SocketAddr>,
    running: RunningGateway,
}

impl TestGateway {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Downstream connections this gateway has admitted and not closed yet.
    pub fn open_connections(&self) -> usize {
        self.running.state.connections.open_connections()
    }

    /// This gateway's metrics as `/metrics` serves them (its own registry: no other test's
    /// requests are in it).
    pub fn scrape(&self) -> String {
        self.running.state.metrics.render()
    }

    /// What its metrics port serves (its socket is bound before the gateway starts: it answers
    /// once served).
    pub async fn scrape_metrics_port(&self) -> String {
        scrape_metrics(self.metrics_addr.expect("started with a metrics port")).await
    }

    /// The value of one sample of this gateway's metrics, 0 when absent.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        meshgate_test_support::metrics_contract::value(&self.scrape(), name, labels).unwrap_or(0.0)
    }
}

pub fn test_config(upstreams: &[SocketAddr]) -> GatewayConfig {
    let mut config = GatewayConfig::for_upstreams(ANY_PORT, upstreams.to_vec());
    config.descriptor_sets = vec![KITCHEN_DESCRIPTORS.into()];
    config.upstream.health_interval = Duration::from_millis(200);
    // Generous: a loaded CI machine must not flap upstreams to unhealthy.
    config.upstream.health_timeout = Duration::from_millis(1000);
    config.cors_origins = vec![ORIGIN.to_owned()];
    config.timeout = Duration::from_secs(5);
    config
}

pub async fn spawn_gateway(upstreams: &[SocketAddr]) -> TestGateway {
    spawn_gateway_with(test_config(upstreams), FilterChain::default()).await
}

/// Starts the gateway in process on sockets bound here (its addresses are theirs; the config's
/// are ignored). A bound socket queues connections at once, so the gateway can be called as
/// soon as this returns.
pub async fn spawn_gateway_with(config: GatewayConfig, filters: FilterChain) -> TestGateway {
    let bind = || std::net::TcpListener::bind(ANY_PORT).unwrap();
    let listeners = Listeners {
        main: Some(bind()),
        tls: config.tls.as_ref().map(|_| bind()),
        metrics: config.metrics_listen.map(|_| bind()),
    };
    let running = tokio::task::spawn_blocking(move || {
        RunningGateway::start_on(config, filters, listeners).unwrap()
    })
    .await
    .unwrap();
    let config = &running.state.config;
    let addr = config.listen;
    TestGateway {
        addr,
        base: format!("http://{addr}"),
        metrics_addr: config.metrics_listen,
        tls_addr: config.tls.as_ref().map(|tls| tls.0),
        running,
    }
}

/// What the metrics port at `addr` serves on `/metrics` (the text exposition format), over
/// HTTP as Prometheus scrapes it.
pub async fn scrape_metrics(addr: SocketAddr) -> String {
    h1().get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("the metrics port answers")
        .text()
        .await
        .expect("a text body")
}

/// The status `GET url` answers.
pub async fn get_status(
    client: &reqwest::Client,
    url: impl reqwest::IntoUrl,
) -> reqwest::StatusCode {
    client.get(url).send().await.unwrap().status()
}

/// The JSON body `GET url` answers.
pub async fn get_json(client: &reqwest::Client, url: impl reqwest::IntoUrl) -> serde_json::Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

pub fn h1() -> reqwest::Client {
    reqwest::Client::builder().http1_only().build().unwrap()
}

pub fn h2() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

pub async fn kitchen_client(
    addr: SocketAddr,
) -> kitchen::kitchen_service_client::KitchenServiceClient<tonic::transport::Channel> {
    kitchen::kitchen_service_client::KitchenServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

// === gRPC-web, decoded independently of the gateway's codec ===

pub fn grpc_web_request(message: &impl Message, text: bool) -> Vec<u8> {
    let frame = meshgate_wire::grpc::message_frame(&message.encode_to_vec());
    if text {
        meshgate_wire::grpc_web::encode_text(&frame).into_bytes()
    } else {
        frame
    }
}

#[derive(Debug)]
pub struct GrpcWebReply {
    pub messages: Vec<Bytes>,
    pub trailers: HashMap<String, String>,
}

/// The frames (flags, payload) of a gRPC-web body received so far (`text`: grpc-web-text), and
/// how much follows them unread: characters of an incomplete base64 quantum plus bytes of an
/// incomplete frame. Written independently of the gateway's framing code, as the tests' oracle.
pub fn grpc_web_frames(body: &[u8], text: bool) -> (Vec<(u8, Bytes)>, usize) {
    let (raw, partial_quantum): (Vec<u8>, usize) = if text {
        let clean: Vec<u8> = body
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        // Each chunk may be separately padded: decode 4-character groups one by one.
        let decoded = clean
            .chunks_exact(4)
            .flat_map(|group| {
                base64::engine::general_purpose::STANDARD
                    .decode(group)
                    .unwrap()
            })
            .collect();
        (decoded, clean.len() % 4)
    } else {
        (body.to_vec(), 0)
    };
    let mut buf = Bytes::from(raw);
    let mut frames = Vec::new();
    while buf.remaining() >= 5 {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.remaining() < 5 + len {
            break;
        }
        let flags = buf.get_u8();
        buf.advance(4);
        frames.push((flags, buf.split_to(len)));
    }
    (frames, partial_quantum + buf.remaining())
}

pub fn parse_grpc_web(body: &[u8], text: bool) -> GrpcWebReply {
    let (frames, unread) = grpc_web_frames(body, text);
    assert_eq!(unread, 0, "trailing bytes in gRPC-web body");
    let mut messages = Vec::new();
    let mut trailers = HashMap::new();
    for (flags, payload) in frames {
        if flags & 0x80 != 0 {
            for line in String::from_utf8(payload.to_vec()).unwrap().split("\r\n") {
                if let Some((k, v)) = line.split_once(':') {
                    trailers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                }
            }
        } else {
            messages.push(payload);
        }
    }
    GrpcWebReply { messages, trailers }
}

// === a test PKI: a CA and a server certificate signed by it, written to a temp dir ===

pub struct TestPki {
    pub dir: std::path::PathBuf,
    /// The CA certificate clients trust (PEM).
    pub ca_pem: String,
    /// Server chain (leaf, then CA) and key, for `gateway.tls`.
    pub cert_path: std::path::PathBuf,
    pub key_path: std::path::PathBuf,
}

impl TestPki {
    /// The server certificate is for `localhost` and `127.0.0.1`.
    pub fn generate() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "meshgate test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();

        let dir = std::env::temp_dir().join(format!("edge-gateway-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert_path = dir.join("server-chain.pem");
        let key_path = dir.join("server-key.pem");
        std::fs::write(&cert_path, format!("{}{}", leaf.pem(), ca.pem())).unwrap();
        std::fs::write(&key_path, leaf_key.serialize_pem()).unwrap();
        Self {
            dir,
            ca_pem: ca.pem(),
            cert_path,
            key_path,
        }
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// === closed-loop load through the gateway, with counts ===

/// What a load run saw.
#[derive(Debug, Default)]
pub struct LoadStats {
    pub ok: usize,
    /// One line per failed request: status or transport error.
    pub failed: Vec<String>,
    /// Answers per `servedBy` (kitchen backends name themselves).
    pub served_by: HashMap<String, usize>,
}

/// `workers` clients sending GETs to `url` back to back until [`Load::finish`].
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<JoinHandle<LoadStats>>,
    /// Requests sent and not yet answered.
    pub in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// Requests answered (any outcome).
    pub completed: Arc<std::sync::atomic::AtomicUsize>,
    /// The last `servedBy` seen per backend name, as a count of answers so far.
    pub served: Arc<Mutex<HashMap<String, usize>>>,
}

/// One request of a load run: `Ok(served_by)` when it succeeded, `Err(why)` when it failed.
pub type LoadCall = Arc<
    dyn Fn() -> Pin<Box<dyn std::future::Future<Output = Result<Option<String>, String>> + Send>>
        + Send
        + Sync,
>;

impl Load {
    /// GETs of `url`; a 2xx is a success (its JSON `servedBy` is recorded).
    pub fn start(client: reqwest::Client, url: String, workers: usize) -> Self {
        Self::run(
            workers,
            Arc::new(move || {
                let (client, url) = (client.clone(), url.clone());
                Box::pin(async move {
                    let response = client.get(&url).send().await.map_err(|e| {
                        if e.is_connect() {
                            format!("connect: {e}")
                        } else {
                            format!("transport: {e}")
                        }
                    })?;
                    let status = response.status();
                    let body = response
                        .bytes()
                        .await
                        .map_err(|e| format!("transport: {e}"))?;
                    if !status.is_success() {
                        return Err(format!("{status} {}", String::from_utf8_lossy(&body)));
                    }
                    Ok(serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["servedBy"].as_str().map(str::to_owned)))
                })
            }),
        )
    }

    /// `workers` loops of `call` until [`Load::finish`].
    pub fn run(workers: usize, call: LoadCall) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let completed = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(Mutex::new(HashMap::new()));
        let tasks = (0..workers)
            .map(|_| {
                let (call, stop) = (call.clone(), stop.clone());
                let (in_flight, completed, served) =
                    (in_flight.clone(), completed.clone(), served.clone());
                tokio::spawn(async move {
                    let mut stats = LoadStats::default();
                    while !stop.load(Ordering::Acquire) {
                        in_flight.fetch_add(1, Ordering::AcqRel);
                        let result = call().await;
                        in_flight.fetch_sub(1, Ordering::AcqRel);
                        completed.fetch_add(1, Ordering::AcqRel);
                        match result {
                            Ok(by) => {
                                stats.ok += 1;
                                if let Some(by) = by {
                                    *stats.served_by.entry(by.clone()).or_default() += 1;
                                    *served.lock().unwrap().entry(by).or_default() += 1;
                                }
                            }
                            Err(why) => stats.failed.push(why),
                        }
                    }
                    stats
                })
            })
            .collect();
        Self {
            stop,
            tasks,
            in_flight,
            completed,
            served,
        }
    }

    /// Requests sent and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn completed(&self) -> usize {
        self.completed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Answers served by `backend` so far.
    pub fn served_by(&self, backend: &str) -> usize {
        self.served
            .lock()
            .unwrap()
            .get(backend)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until `more` further requests have completed (the load really ran meanwhile);
    /// bounded by a minute, for a machine busy with other tests.
    pub async fn run_for(&self, more: usize) {
        let target = self.completed() + more;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.completed() < target {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {more} more requests through the gateway"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn finish(self) -> LoadStats {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        let mut total = LoadStats::default();
        for task in self.tasks {
            let stats = task.await.unwrap();
            total.ok += stats.ok;
            total.failed.extend(stats.failed);
            for (by, count) in stats.served_by {
                *total.served_by.entry(by).or_default() += count;
            }
        }
        total
    }
}

/// A config file for the gateway binary in a fresh directory: listening on `listen`, no
/// metrics, `grace_period_seconds`, then the given `gateway` keys (YAML lines, indented).
pub fn binary_config(
    listen: SocketAddr,
    grace_period_seconds: u64,
    gateway_keys: &str,
) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("edge-gateway-bin-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.yaml");
    std::fs::write(
        &path,
        format!(
            "server:\n  version: 1\n  threads: 2\n  pid_file: {d}/pid\n  upgrade_sock: {d}/sock\n  grace_period_seconds: {grace_period_seconds}\ngateway:\n  listen: {listen}\n  metrics_listen: \"\"\n{gateway_keys}",
            d = dir.display(),
        ),
    )
    .unwrap();
    path
}
