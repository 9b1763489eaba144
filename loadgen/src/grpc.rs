//! Native gRPC transport: tonic clients over a fixed set of HTTP/2 connections.

use meshgate_proto::user::user_service_client::UserServiceClient;
use meshgate_proto::user::{CreateUserRequest, GetUserRequest, ListUsersRequest};
use tonic::transport::{Channel, Endpoint};

use crate::{Operation, Outcome, Transport};

pub struct GrpcTransport {
    clients: Vec<UserServiceClient<Channel>>,
}

impl GrpcTransport {
    /// Opens `connections` HTTP/2 connections; workers are spread over them round-robin.
    pub async fn connect(target: &str, connections: usize) -> anyhow::Result<Self> {
        let mut clients = Vec::with_capacity(connections);
        for _ in 0..connections {
            let channel = Endpoint::from_shared(target.to_owned())?
                .tcp_nodelay(true)
                .connect()
                .await?;
            clients.push(UserServiceClient::new(channel));
        }
        Ok(Self { clients })
    }

    fn client(&self, worker: usize) -> UserServiceClient<Channel> {
        self.clients[worker % self.clients.len()].clone()
    }
}

impl Transport for GrpcTransport {
    async fn call(&self, worker: usize, op: Operation) -> Outcome {
        let mut client = self.client(worker);
        let result = match op {
            Operation::GetUser { id } => client.get_user(GetUserRequest { id }).await.map(drop),
            Operation::CreateUser { name, email, age } => client
                .create_user(CreateUserRequest { name, email, age })
                .await
                .map(drop),
            Operation::ListUsers { page, limit } => client
                .list_users(ListUsersRequest { page, limit })
                .await
                .map(drop),
        };
        match result {
            Ok(()) => Outcome::Ok,
            Err(status) if status.code() == tonic::Code::NotFound => Outcome::NotFound,
            Err(_) => Outcome::Failed,
        }
    }

    async fn seed(&self, op: Operation) -> anyhow::Result<String> {
        let Operation::CreateUser { name, email, age } = op else {
            anyhow::bail!("only CreateUser seeds users");
        };
        let response = self
            .client(0)
            .create_user(CreateUserRequest { name, email, age })
            .await?;
        let user = response
            .into_inner()
            .user
            .ok_or_else(|| anyhow::anyhow!("no user in the response"))?;
        Ok(user.id)
    }
}
