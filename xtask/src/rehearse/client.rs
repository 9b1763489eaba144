//! `cargo xtask rehearsal-client --edge HOST:PORT`: the rehearsal's client pod (started in its
//! own network namespace by the rehearsal). It resolves the edge's Service name with the libc
//! resolver (the pod's resolv.conf: the cluster DNS, search domains, ndots:5) and drives the
//! three protocols the edge serves: REST/JSON, gRPC-web and native gRPC (h2c). Each step
//! prints one line; any failure exits 1.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use meshgate_proto::user::user_service_client::UserServiceClient;
use meshgate_proto::user::{
    CreateUserRequest, DeleteUserRequest, GetUserRequest, GetUserResponse, ListUsersRequest,
};
use prost::Message;

const STEP_TIMEOUT: Duration = Duration::from_secs(10);

pub fn main(edge: &str) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("client: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(drive(edge)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            println!("FAIL {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn step<T>(what: &str, future: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(STEP_TIMEOUT, future)
        .await
        .map_err(|_| anyhow::anyhow!("{what}: no answer within {STEP_TIMEOUT:?}"))?
        .with_context(|| what.to_owned())
}

async fn drive(edge: &str) -> anyhow::Result<()> {
    let addresses: Vec<_> = step("resolving the edge", async {
        Ok(tokio::net::lookup_host(edge).await?.collect())
    })
    .await?;
    println!(
        "ok   DNS {edge} → {}",
        addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let unique = uuid::Uuid::new_v4().simple().to_string();

    // REST: create (201 + Location), read it back, and a NOT_FOUND mapped to 404.
    let body = serde_json::json!({"name": "Rehearsal", "email": format!("rehearsal-{unique}@example.com"), "age": 42});
    let (status, headers, created) = step(
        "REST POST /v1/users",
        http1(
            edge,
            "POST",
            "/v1/users",
            "application/json",
            body.to_string().into(),
        ),
    )
    .await?;
    ensure!(
        status == 201,
        "REST POST /v1/users answered {status}: {}",
        String::from_utf8_lossy(&created)
    );
    let location = headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .context("REST POST /v1/users: no Location header")?
        .to_owned();
    let created: serde_json::Value =
        serde_json::from_slice(&created).context("REST POST /v1/users: body is not JSON")?;
    let id = user_id(&created).context("REST POST /v1/users: no id in the body")?;
    println!("ok   REST POST /v1/users → 201, Location {location}");
    let (status, _, read) = step(
        "REST GET",
        http1(edge, "GET", &location, "application/json", Bytes::new()),
    )
    .await?;
    let read: serde_json::Value = serde_json::from_slice(&read).unwrap_or_default();
    ensure!(
        status == 200 && user_id(&read).as_deref() == Some(id.as_str()),
        "REST GET {location} answered {status}: {read}"
    );
    println!("ok   REST GET {location} → 200, the user just created");
    let missing = format!("/v1/users/{}", uuid::Uuid::new_v4());
    let (status, _, _) = step(
        "REST GET (missing)",
        http1(edge, "GET", &missing, "application/json", Bytes::new()),
    )
    .await?;
    ensure!(
        status == 404,
        "REST GET {missing} answered {status}, expected 404 (NOT_FOUND)"
    );
    println!("ok   REST GET {missing} → 404");

    // gRPC-web (binary): one length-prefixed message, the status in a trailer frame.
    let request = GetUserRequest { id: id.clone() };
    let mut frame = BytesMut::new();
    frame.put_u8(0);
    frame.put_u32(request.encoded_len() as u32);
    request.encode(&mut frame)?;
    let (status, headers, body) = step(
        "gRPC-web GetUser",
        http1(
            edge,
            "POST",
            "/user.UserService/GetUser",
            "application/grpc-web+proto",
            frame.freeze(),
        ),
    )
    .await?;
    ensure!(status == 200, "gRPC-web GetUser answered HTTP {status}");
    let (message, trailers) = parse_grpc_web(body)?;
    let grpc_status = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| trailer_value(&trailers, "grpc-status"))
        .unwrap_or_default();
    ensure!(
        grpc_status == "0",
        "gRPC-web GetUser: grpc-status {grpc_status:?} ({trailers})"
    );
    let user = GetUserResponse::decode(message.context("gRPC-web GetUser: no message")?)?
        .user
        .context("gRPC-web GetUser: no user")?;
    ensure!(user.id == id, "gRPC-web GetUser returned another user");
    println!("ok   gRPC-web POST /user.UserService/GetUser → grpc-status 0, the same user");

    // Native gRPC over h2c through the same port, resolved by tonic (getaddrinfo).
    let channel = step("gRPC connect", async {
        Ok(
            tonic::transport::Endpoint::from_shared(format!("http://{edge}"))?
                .connect_timeout(STEP_TIMEOUT)
                .connect()
                .await?,
        )
    })
    .await?;
    let mut client = UserServiceClient::new(channel);
    let listed = step("gRPC ListUsers", async {
        Ok(client
            .list_users(ListUsersRequest {
                page: 1,
                limit: 100,
            })
            .await?
            .into_inner())
    })
    .await?;
    ensure!(listed.total >= 1, "gRPC ListUsers: total {}", listed.total);
    let created = step("gRPC CreateUser", async {
        Ok(client
            .create_user(CreateUserRequest {
                name: "Rehearsal gRPC".into(),
                email: format!("rehearsal-grpc-{unique}@example.com"),
                age: 7,
            })
            .await?
            .into_inner())
    })
    .await?;
    let grpc_id = created.user.context("gRPC CreateUser: no user")?.id;
    for id in [&id, &grpc_id] {
        step("gRPC DeleteUser", async {
            Ok(client
                .delete_user(DeleteUserRequest { id: id.clone() })
                .await?)
        })
        .await?;
    }
    let gone = client
        .get_user(GetUserRequest {
            id: grpc_id.clone(),
        })
        .await;
    match gone {
        Err(status) if status.code() == tonic::Code::NotFound => {}
        other => bail!("gRPC GetUser after DeleteUser: expected NOT_FOUND, got {other:?}"),
    }
    println!(
        "ok   gRPC ListUsers (total {}), CreateUser, DeleteUser ×2, GetUser → NOT_FOUND",
        listed.total
    );
    Ok(())
}

/// The user's id in a REST body: the user itself (the FastAPI-compatible style the gateway
/// ships) or wrapped in the response message (`{"user": {...}}`, the grpc-gateway style).
fn user_id(body: &serde_json::Value) -> Option<String> {
    body["id"]
        .as_str()
        .or_else(|| body["user"]["id"].as_str())
        .map(str::to_owned)
}

type Response = (u16, http::HeaderMap, Bytes);

/// One HTTP/1.1 request on a new connection (the name resolved by getaddrinfo).
async fn http1(
    edge: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: Bytes,
) -> anyhow::Result<Response> {
    let stream = tokio::net::TcpStream::connect(edge).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", edge)
        .header("content-type", content_type)
        .header("accept", content_type)
        .body(Full::new(body))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, headers, body))
}

/// Splits a gRPC-web body into its message and its trailer block.
fn parse_grpc_web(mut body: Bytes) -> anyhow::Result<(Option<Bytes>, String)> {
    let mut message = None;
    let mut trailers = String::new();
    while body.remaining() >= 5 {
        let flags = body.get_u8();
        let len = body.get_u32() as usize;
        ensure!(body.remaining() >= len, "gRPC-web frame truncated");
        let payload = body.split_to(len);
        if flags & 0x80 != 0 {
            trailers.push_str(&String::from_utf8_lossy(&payload));
        } else {
            message = Some(payload);
        }
    }
    Ok((message, trailers))
}

fn trailer_value(trailers: &str, name: &str) -> Option<String> {
    trailers.split("\r\n").find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_found_in_both_json_styles() {
        let fastapi = serde_json::json!({"id": "a", "name": "n"});
        let grpc_gateway = serde_json::json!({"user": {"id": "b"}, "message": "m"});
        assert_eq!(user_id(&fastapi).as_deref(), Some("a"));
        assert_eq!(user_id(&grpc_gateway).as_deref(), Some("b"));
        assert_eq!(user_id(&serde_json::json!({"detail": "x"})), None);
    }

    #[test]
    fn grpc_web_bodies_split_into_message_and_trailers() {
        let mut body = BytesMut::new();
        body.put_u8(0);
        body.put_u32(2);
        body.put_slice(b"hi");
        let trailer = b"grpc-status: 0\r\ngrpc-message: \r\n";
        body.put_u8(0x80);
        body.put_u32(trailer.len() as u32);
        body.put_slice(trailer);
        let (message, trailers) = parse_grpc_web(body.freeze()).unwrap();
        assert_eq!(message.as_deref(), Some(&b"hi"[..]));
        assert_eq!(
            trailer_value(&trailers, "grpc-status").as_deref(),
            Some("0")
        );
    }
}
