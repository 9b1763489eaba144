//! The tonic adapter: wire messages in, domain calls, wire messages or statuses out.
//! [`UserApi`] implements both `user.UserService` (here) and `user.v2.UserService` ([`v2`]):
//! one set of domain calls, two wire mappings.
//!
//! **Architecture invariant:** this module (with [`v2`]) is the only one that sees prost
//! types. Error mapping:
//! validation → `INVALID_ARGUMENT` with `google.rpc.BadRequest` field violations; missing →
//! `NOT_FOUND`; the email unique constraint → `ALREADY_EXISTS`; unreachable storage →
//! `UNAVAILABLE`; anything else → `INTERNAL` with a fixed message (the cause is only logged).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshgate_proto::user::user_service_server::UserService;
use meshgate_proto::user::{
    CreateUserRequest, CreateUserResponse, DeleteUserRequest, DeleteUserResponse, GetUserRequest,
    GetUserResponse, ListUserEventsRequest, ListUserEventsResponse, ListUsersRequest,
    ListUsersResponse, TestErrorRequest, TestErrorResponse, UpdateUserRequest, UpdateUserResponse,
    WatchUsersRequest,
};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::domain::{
    FieldViolation, Invalid, NewUser, PageRequest, StoreError, User, UserChanges, UserId, UserStore,
};
use crate::events::live::{LiveEvents, WatchEnd, Watcher};
use crate::events::{EventLog, UserEvent};
use crate::idempotency::{self, Claim, IdempotencyKey, IdempotentCreate, Outcome};
use crate::metrics::Metrics;
use crate::page_token::PageTokens;
use crate::telemetry;

pub mod v2;

/// The `user.UserService` and `user.v2.UserService` implementation over any store. Serve one
/// instance as both (`UserServiceServer::from_arc`), so they share the page-token key.
pub struct UserApi<S> {
    store: Arc<S>,
    live: LiveEvents,
    metrics: Arc<Metrics>,
    idempotency_ttl: Duration,
    /// user.v2 ListUsers' token signer, built on first use from the database's key (the
    /// database may still be starting when the service does).
    page_tokens: tokio::sync::OnceCell<PageTokens>,
}

/// How long `WatchUsers` waits for the live feed's JetStream consumer before UNAVAILABLE.
const LIVE_CONNECT_WAIT: Duration = Duration::from_secs(5);

/// `WatchUsers`' response stream.
pub type WatchStream =
    Pin<Box<dyn futures::Stream<Item = Result<meshgate_proto::user::UserEvent, Status>> + Send>>;

impl<S> UserApi<S> {
    pub fn new(store: Arc<S>, live: LiveEvents, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            live,
            metrics,
            idempotency_ttl: idempotency::DEFAULT_TTL,
            page_tokens: tokio::sync::OnceCell::new(),
        }
    }

    /// How long an `idempotency-key` is remembered.
    pub fn with_idempotency_ttl(mut self, ttl: Duration) -> Self {
        self.idempotency_ttl = ttl;
        self
    }
}

/// Per-call context handed to each handler.
struct Call {
    trace_id: Option<String>,
}

/// One RPC as spans and metrics name it.
#[derive(Debug, Clone, Copy)]
struct Rpc {
    service: &'static str,
    method: &'static str,
    /// `grpc_method` in the metrics: v1's bare method names (as the replaced service's
    /// dashboards know them), other versions' prefixed (`v2.ListUsers`).
    label: &'static str,
}

impl Rpc {
    const fn v1(method: &'static str) -> Self {
        Self {
            service: meshgate_proto::USER_SERVICE,
            method,
            label: method,
        }
    }
}

impl<S: UserStore> UserApi<S> {
    /// Wraps one RPC: a span continuing the caller's trace, latency and outcome metrics.
    async fn handle<Req, Resp, F, Fut>(
        &self,
        rpc: Rpc,
        request: Request<Req>,
        handler: F,
    ) -> Result<Response<Resp>, Status>
    where
        F: FnOnce(Arc<S>, Call, Req) -> Fut,
        Fut: Future<Output = Result<Resp, Status>>,
    {
        let Rpc {
            service,
            method,
            label,
        } = rpc;
        let span = tracing::info_span!(
            "rpc",
            otel.name = label,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        let remote = telemetry::extract_context(request.metadata().as_ref());
        // Only fails when no OpenTelemetry layer is installed; the remote id is used then.
        let _ = span.set_parent(remote.clone());
        let trace_id = telemetry::trace_id_of(&span, &remote);
        if let Some(id) = &trace_id {
            span.record("trace_id", id.as_str());
        }
        if let Some(id) = telemetry::span_id_of(&span) {
            span.record("span_id", id.as_str());
        }

        let started = Instant::now();
        let _in_flight = InFlight::enter(&self.metrics, label);
        let trace_parent = telemetry::trace_parent_of(&span, &remote);
        let call = Call { trace_id };
        let outcome = crate::events::with_trace_parent(
            trace_parent,
            handler(self.store.clone(), call, request.into_inner()).instrument(span.clone()),
        )
        .await;
        let code = outcome.as_ref().map_or_else(Status::code, |_| Code::Ok);
        // Straight to the OpenTelemetry span: a tracing field would be re-formatted for logs.
        span.set_attribute("rpc.grpc.status_code", i64::from(code as i32));
        self.metrics
            .grpc_latency
            .with_label_values(&[label])
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .grpc_handled
            .with_label_values(&[label, code_name(code)])
            .inc();
        if matches!(code, Code::Internal | Code::Unavailable) {
            span.in_scope(|| tracing::warn!(grpc.code = code_name(code), "{label} failed"));
        }
        outcome.map(Response::new)
    }
}

/// Counts a call in `grpc_server_in_flight` until dropped (also when the client goes away and
/// the handler future is dropped mid-way).
struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn enter(metrics: &Metrics, method: &'static str) -> Self {
        let gauge = metrics.grpc_in_flight.with_label_values(&[method]);
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[tonic::async_trait]
impl<S: UserStore + EventLog + IdempotentCreate> UserService for UserApi<S> {
    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<CreateUserResponse>, Status> {
        let key = idempotency_key(request.metadata());
        let ttl = self.idempotency_ttl;
        self.handle(
            Rpc::v1("CreateUser"),
            request,
            move |store, _, message| async move {
                let user = create_user(
                    &*store,
                    key,
                    ttl,
                    &message.name,
                    &message.email,
                    message.age,
                )
                .await?;
                Ok(CreateUserResponse {
                    user: Some(to_wire(&user)),
                    message: "User created successfully".to_owned(),
                })
            },
        )
        .await
    }

    async fn get_user(
        &self,
        request: Request<GetUserRequest>,
    ) -> Result<Response<GetUserResponse>, Status> {
        self.handle(
            Rpc::v1("GetUser"),
            request,
            |store, _, message| async move {
                let id = parse_id(&message.id)?;
                let user = store.get(id).await.map_err(from_store)?;
                Ok(GetUserResponse {
                    user: Some(to_wire(&user)),
                    message: "User retrieved successfully".to_owned(),
                })
            },
        )
        .await
    }

    async fn update_user(
        &self,
        request: Request<UpdateUserRequest>,
    ) -> Result<Response<UpdateUserResponse>, Status> {
        self.handle(
            Rpc::v1("UpdateUser"),
            request,
            |store, _, message| async move {
                let user = update_user(
                    &*store,
                    &message.id,
                    &message.name,
                    &message.email,
                    message.age,
                )
                .await?;
                Ok(UpdateUserResponse {
                    user: Some(to_wire(&user)),
                    message: "User updated successfully".to_owned(),
                })
            },
        )
        .await
    }

    async fn delete_user(
        &self,
        request: Request<DeleteUserRequest>,
    ) -> Result<Response<DeleteUserResponse>, Status> {
        self.handle(
            Rpc::v1("DeleteUser"),
            request,
            |store, _, message| async move {
                let id = parse_id(&message.id)?;
                store.delete(id).await.map_err(from_store)?;
                Ok(DeleteUserResponse {
                    message: "User deleted successfully".to_owned(),
                })
            },
        )
        .await
    }

    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        self.handle(
            Rpc::v1("ListUsers"),
            request,
            |store, _, message| async move {
                let page = store
                    .list(PageRequest::new(message.page, message.limit))
                    .await
                    .map_err(from_store)?;
                Ok(ListUsersResponse {
                    users: page.users.iter().map(to_wire).collect(),
                    total: i32::try_from(page.total).unwrap_or(i32::MAX),
                    message: "Users retrieved successfully".to_owned(),
                })
            },
        )
        .await
    }

    async fn list_user_events(
        &self,
        request: Request<ListUserEventsRequest>,
    ) -> Result<Response<ListUserEventsResponse>, Status> {
        self.handle(
            Rpc::v1("ListUserEvents"),
            request,
            |store, _, message| async move {
                let id = parse_id(&message.id)?;
                let events = store.user_events(id).await.map_err(from_store)?;
                Ok(ListUserEventsResponse {
                    events: events.iter().map(event_to_wire).collect(),
                })
            },
        )
        .await
    }

    type WatchUsersStream = WatchStream;

    async fn watch_users(
        &self,
        request: Request<WatchUsersRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let live = self.live.clone();
        let metrics = self.metrics.clone();
        self.handle(Rpc::v1("WatchUsers"), request, |_, _, message| async move {
            let user = match message.user_id.as_str() {
                "" => None,
                raw => Some(UserId::parse(raw).map_err(|_| {
                    invalid(Invalid(vec![FieldViolation::new(
                        "user_id",
                        "must be a UUID (or empty for every user)",
                    )]))
                })?),
            };
            if !live.wait_connected(LIVE_CONNECT_WAIT).await {
                return Err(Status::unavailable(
                    "live updates are not connected to the event stream yet; retry",
                ));
            }
            let watcher = live.subscribe(user.map(|id| id.as_uuid()));
            Ok(watch_stream(watcher, metrics))
        })
        .await
    }

    async fn test_error(
        &self,
        request: Request<TestErrorRequest>,
    ) -> Result<Response<TestErrorResponse>, Status> {
        self.handle(
            Rpc::v1("TestError"),
            request,
            |_, call, message| async move {
                let code = test_error_code(&message.status_code);
                // Without an OpenTelemetry layer (a library user that skipped telemetry::init) and
                // without an incoming trace there is no id yet: make one so the answer still has it.
                let trace_id = call
                    .trace_id
                    .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
                let mut metadata = MetadataMap::new();
                if let Ok(value) = MetadataValue::try_from(trace_id.as_str()) {
                    metadata.insert("x-trace-id", value);
                }
                let details = ErrorDetails::with_error_info(
                    "TEST_ERROR",
                    "user-service.meshgate",
                    [
                        ("trace_id".to_owned(), trace_id.clone()),
                        ("status_code".to_owned(), message.status_code.clone()),
                    ],
                );
                Err::<TestErrorResponse, _>(Status::with_error_details_and_metadata(
                    code,
                    format!(
                        "test error for HTTP status {:?} (trace_id={trace_id})",
                        message.status_code
                    ),
                    details,
                    metadata,
                ))
            },
        )
        .await
    }
}

/// A watcher's events as the RPC's stream; its end as a status the client can act on.
fn watch_stream(watcher: Watcher, metrics: Arc<Metrics>) -> WatchStream {
    Box::pin(futures::stream::unfold(Some(watcher), move |watcher| {
        let metrics = metrics.clone();
        async move {
            let mut watcher = watcher?;
            match watcher.next().await {
                Ok(event) => Some((Ok(event_to_wire(&event)), Some(watcher))),
                Err(end) => {
                    // The watcher (and its place in the gauge) goes before the status does.
                    drop(watcher);
                    Some((Err(watch_end_status(end, &metrics)), None))
                }
            }
        }
    }))
}

fn watch_end_status(end: WatchEnd, metrics: &Metrics) -> Status {
    match end {
        WatchEnd::Lagged(missed) => {
            metrics.watchers_cut_off.inc();
            Status::resource_exhausted(format!(
                "watcher fell behind by {missed} events; list the users again and watch again"
            ))
        }
        WatchEnd::Stopping => Status::unavailable("the server is shutting down; watch again"),
    }
}

/// The HTTP status a `TestError` caller asks for, as the gRPC code an HTTP gateway maps back
/// to it. Anything unlisted is a 500.
pub fn test_error_code(http_status: &str) -> Code {
    match http_status.trim() {
        "400" => Code::InvalidArgument,
        "401" => Code::Unauthenticated,
        "403" => Code::PermissionDenied,
        "404" => Code::NotFound,
        "409" => Code::AlreadyExists,
        "429" => Code::ResourceExhausted,
        "501" => Code::Unimplemented,
        "503" => Code::Unavailable,
        "504" => Code::DeadlineExceeded,
        _ => Code::Internal,
    }
}

/// The call's `idempotency-key` metadata, parsed (checked inside the handler, so a bad key is
/// counted like any invalid request).
fn idempotency_key(metadata: &MetadataMap) -> Option<Result<IdempotencyKey, FieldViolation>> {
    metadata
        .get(idempotency::METADATA_KEY)
        .map(|value| IdempotencyKey::parse(value.as_bytes()))
}

/// CreateUser in every version: the input rules, then a plain or an idempotent create.
async fn create_user<S: UserStore + IdempotentCreate>(
    store: &S,
    key: Option<Result<IdempotencyKey, FieldViolation>>,
    ttl: Duration,
    name: &str,
    email: &str,
    age: i32,
) -> Result<User, Status> {
    let key = key
        .transpose()
        .map_err(|violation| invalid(Invalid(vec![violation])))?;
    let new_user = NewUser::parse(name, email, age).map_err(invalid)?;
    match key {
        None => store.create(new_user).await.map_err(from_store),
        Some(key) => {
            let claim = Claim::new(key, ttl, name, email, age);
            match store
                .create_idempotent(new_user, &claim)
                .await
                .map_err(from_store)?
            {
                Outcome::Created(user) | Outcome::Replayed(user) => Ok(user),
                Outcome::Conflict => Err(key_reused()),
            }
        }
    }
}

/// UpdateUser in every version: empty values keep the stored ones; nothing to change still
/// answers with the stored user (and NOT_FOUND if absent).
async fn update_user<S: UserStore>(
    store: &S,
    id: &str,
    name: &str,
    email: &str,
    age: i32,
) -> Result<User, Status> {
    let id = parse_id(id)?;
    let changes = UserChanges::parse(name, email, age).map_err(invalid)?;
    if changes.is_empty() {
        store.get(id).await
    } else {
        store.update(id, changes).await
    }
    .map_err(from_store)
}

fn parse_id(raw: &str) -> Result<UserId, Status> {
    UserId::parse(raw).map_err(|violation| invalid(Invalid(vec![violation])))
}

fn invalid(error: Invalid) -> Status {
    let violations: Vec<_> = error
        .0
        .iter()
        .map(|v| tonic_types::FieldViolation::new(v.field, v.description))
        .collect();
    Status::with_error_details(
        Code::InvalidArgument,
        error.to_string(),
        ErrorDetails::with_bad_request(violations),
    )
}

/// The same `idempotency-key` with a different request.
fn key_reused() -> Status {
    invalid(Invalid(vec![FieldViolation::new(
        idempotency::METADATA_KEY,
        "was already used with a different request; use a new key for a new request",
    )]))
}

#[expect(
    clippy::disallowed_methods,
    reason = "the one place INTERNAL is answered, with fixed text"
)]
fn from_store(error: StoreError) -> Status {
    match error {
        StoreError::NotFound => Status::not_found("user not found"),
        StoreError::EmailTaken => Status::already_exists("a user with this email already exists"),
        StoreError::Unavailable(_) => Status::unavailable("storage is unavailable; retry later"),
        StoreError::Internal(cause) => {
            tracing::error!(error = %cause, "storage error");
            Status::internal("internal error")
        }
    }
}

fn to_wire(user: &User) -> meshgate_proto::user::User {
    meshgate_proto::user::User {
        id: user.id.to_string(),
        name: user.name.as_str().to_owned(),
        email: user.email.as_str().to_owned(),
        age: user.age.get(),
        created_at: user.created_at,
        updated_at: user.updated_at,
    }
}

fn event_to_wire(event: &UserEvent) -> meshgate_proto::user::UserEvent {
    meshgate_proto::user::UserEvent {
        event_id: event.event_id.to_string(),
        user_id: event.user_id.to_string(),
        r#type: event.kind.as_str().to_owned(),
        version: event.version,
        user: event.snapshot_user().as_ref().map(to_wire),
        occurred_at: event.occurred_at_ms,
        trace_parent: event.trace_parent.clone().unwrap_or_default(),
    }
}

/// The canonical upper-case name of a gRPC code, as used in metric labels.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_becomes_bad_request_details() {
        let status = invalid(NewUser::parse("", "x", 0).unwrap_err());
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let fields: Vec<_> = details
            .bad_request()
            .unwrap()
            .field_violations
            .iter()
            .map(|v| v.field.clone())
            .collect();
        assert_eq!(fields, ["name", "email", "age"]);
    }

    #[test]
    fn storage_internals_never_reach_clients() {
        let status = from_store(StoreError::Internal(
            "relation \"users\" does not exist".into(),
        ));
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
        let status = from_store(StoreError::Unavailable("connection refused".into()));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("refused"));
    }
}
