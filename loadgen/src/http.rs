//! HTTP transports for the edge gateway: REST/JSON and gRPC-web (binary), both over HTTP/2
//! with prior knowledge (h2c) on a fixed set of connections, like the gRPC transport.

use bytes::Bytes;
use meshgate_proto::user::{
    CreateUserRequest, CreateUserResponse, GetUserRequest, ListUsersRequest,
};
use meshgate_wire::grpc::{
    self,
    status::{NOT_FOUND, OK},
};
use prost::Message;

use crate::{Operation, Outcome, Transport};

fn clients(connections: usize) -> anyhow::Result<Vec<reqwest::Client>> {
    (0..connections)
        .map(|_| {
            reqwest::Client::builder()
                .http2_prior_knowledge()
                .tcp_nodelay(true)
                // One client = one pooled connection: keep the connection count fixed.
                .pool_max_idle_per_host(1)
                .build()
                .map_err(Into::into)
        })
        .collect()
}

/// REST/JSON through the gateway's transcoder.
pub struct RestTransport {
    base: String,
    clients: Vec<reqwest::Client>,
}

impl RestTransport {
    pub fn new(target: &str, connections: usize) -> anyhow::Result<Self> {
        Ok(Self {
            base: target.trim_end_matches('/').to_owned(),
            clients: clients(connections)?,
        })
    }
}

impl Transport for RestTransport {
    async fn call(&self, worker: usize, op: Operation) -> Outcome {
        let client = &self.clients[worker % self.clients.len()];
        let request = match op {
            Operation::GetUser { id } => client.get(format!("{}/v1/users/{id}", self.base)),
            Operation::CreateUser { name, email, age } => client
                .post(format!("{}/v1/users", self.base))
                .header("content-type", "application/json")
                .body(format!(
                    r#"{{"name":"{name}","email":"{email}","age":{age}}}"#
                )),
            Operation::ListUsers { page, limit } => {
                client.get(format!("{}/v1/users?page={page}&limit={limit}", self.base))
            }
        };
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                // Read the body: the request is not done until it arrived.
                let _ = response.bytes().await;
                match status {
                    200..=299 => Outcome::Ok,
                    404 => Outcome::NotFound,
                    _ => Outcome::Failed,
                }
            }
            Err(_) => Outcome::Failed,
        }
    }

    async fn seed(&self, op: Operation) -> anyhow::Result<String> {
        let Operation::CreateUser { name, email, age } = op else {
            anyhow::bail!("only CreateUser seeds users");
        };
        let body = format!(r#"{{"name":"{name}","email":"{email}","age":{age}}}"#);
        let text = self.clients[0]
            .post(format!("{}/v1/users", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        // Pull "id" out without a JSON dependency: the answer is the user, {"id":"...",...}
        let id = text
            .split("\"id\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .ok_or_else(|| anyhow::anyhow!("no user id in {text}"))?;
        Ok(id.to_owned())
    }
}

/// gRPC-web (binary) through the gateway.
pub struct GrpcWebTransport {
    base: String,
    clients: Vec<reqwest::Client>,
}

impl GrpcWebTransport {
    pub fn new(target: &str, connections: usize) -> anyhow::Result<Self> {
        Ok(Self {
            base: target.trim_end_matches('/').to_owned(),
            clients: clients(connections)?,
        })
    }

    async fn unary(
        &self,
        worker: usize,
        method: &str,
        message: Vec<u8>,
    ) -> anyhow::Result<(u32, Option<Bytes>)> {
        let body = grpc::message_frame(&message);
        let response = self.clients[worker % self.clients.len()]
            .post(format!("{}/user.UserService/{method}", self.base))
            .header("content-type", "application/grpc-web+proto")
            .header("x-grpc-web", "1")
            .body(body)
            .send()
            .await?;
        // Trailers-only answers carry the status in the headers.
        let header_status = response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let bytes = response.bytes().await?;
        let mut first = None;
        let mut status = header_status;
        for frame in grpc::frames(&bytes)? {
            if frame.is_trailers() {
                status = grpc::trailer_status(frame.payload);
            } else if first.is_none() {
                first = Some(bytes.slice_ref(frame.payload));
            }
        }
        Ok((
            status.ok_or_else(|| anyhow::anyhow!("no grpc-status"))?,
            first,
        ))
    }
}

impl Transport for GrpcWebTransport {
    async fn call(&self, worker: usize, op: Operation) -> Outcome {
        let (method, message) = match op {
            Operation::GetUser { id } => ("GetUser", GetUserRequest { id }.encode_to_vec()),
            Operation::CreateUser { name, email, age } => (
                "CreateUser",
                CreateUserRequest { name, email, age }.encode_to_vec(),
            ),
            Operation::ListUsers { page, limit } => (
                "ListUsers",
                ListUsersRequest { page, limit }.encode_to_vec(),
            ),
        };
        match self.unary(worker, method, message).await {
            Ok((OK, _)) => Outcome::Ok,
            Ok((NOT_FOUND, _)) => Outcome::NotFound,
            _ => Outcome::Failed,
        }
    }

    async fn seed(&self, op: Operation) -> anyhow::Result<String> {
        let Operation::CreateUser { name, email, age } = op else {
            anyhow::bail!("only CreateUser seeds users");
        };
        let (status, message) = self
            .unary(
                0,
                "CreateUser",
                CreateUserRequest { name, email, age }.encode_to_vec(),
            )
            .await?;
        anyhow::ensure!(status == OK, "CreateUser failed with grpc-status {status}");
        let response = CreateUserResponse::decode(message.unwrap_or_default())?;
        Ok(response
            .user
            .ok_or_else(|| anyhow::anyhow!("no user in the response"))?
            .id)
    }
}
