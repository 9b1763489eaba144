//! `user.v2.UserService`: the same domain calls as v1 ([`super`]), mapped to v2's messages.
//! What differs is only the mapping: cursor pages with signed tokens
//! ([`crate::page_token`]), `google.protobuf.Timestamp`s, the resource itself as the answer.

use meshgate_proto::user::v2::user_service_server::UserService;
use meshgate_proto::user::v2::{
    CreateUserRequest, DeleteUserRequest, GetUserRequest, ListUserEventsRequest,
    ListUserEventsResponse, ListUsersRequest, ListUsersResponse, UpdateUserRequest,
    User as WireUser, UserEvent as WireEvent,
};
use prost_types::Timestamp;
use tonic::{Request, Response, Status};

use super::{
    Rpc, UserApi, create_user, from_store, idempotency_key, invalid, parse_id, update_user,
};
use crate::domain::{CursorPages, Invalid, PageSize, User, UserStore};
use crate::events::{EventLog, UserEvent};
use crate::idempotency::IdempotentCreate;
use crate::page_token::PageTokens;

const fn rpc(method: &'static str, label: &'static str) -> Rpc {
    Rpc {
        service: meshgate_proto::USER_SERVICE_V2,
        method,
        label,
    }
}

impl<S: UserStore + CursorPages> UserApi<S> {
    async fn page_tokens(&self) -> Result<&PageTokens, Status> {
        self.page_tokens
            .get_or_try_init(|| async {
                let key = self.store.page_token_key().await.map_err(from_store)?;
                Ok(PageTokens::new(&key))
            })
            .await
    }
}

#[tonic::async_trait]
impl<S: UserStore + EventLog + IdempotentCreate + CursorPages> UserService for UserApi<S> {
    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<WireUser>, Status> {
        let key = idempotency_key(request.metadata());
        let ttl = self.idempotency_ttl;
        let rpc = rpc("CreateUser", "v2.CreateUser");
        self.handle(rpc, request, move |store, _, message| async move {
            let user = create_user(
                &*store,
                key,
                ttl,
                &message.name,
                &message.email,
                message.age,
            )
            .await?;
            Ok(to_wire(&user))
        })
        .await
    }

    async fn get_user(
        &self,
        request: Request<GetUserRequest>,
    ) -> Result<Response<WireUser>, Status> {
        let rpc = rpc("GetUser", "v2.GetUser");
        self.handle(rpc, request, |store, _, message| async move {
            let id = parse_id(&message.id)?;
            let user = store.get(id).await.map_err(from_store)?;
            Ok(to_wire(&user))
        })
        .await
    }

    async fn update_user(
        &self,
        request: Request<UpdateUserRequest>,
    ) -> Result<Response<WireUser>, Status> {
        let rpc = rpc("UpdateUser", "v2.UpdateUser");
        self.handle(rpc, request, |store, _, message| async move {
            let user = update_user(
                &*store,
                &message.id,
                &message.name,
                &message.email,
                message.age,
            )
            .await?;
            Ok(to_wire(&user))
        })
        .await
    }

    async fn delete_user(
        &self,
        request: Request<DeleteUserRequest>,
    ) -> Result<Response<()>, Status> {
        let rpc = rpc("DeleteUser", "v2.DeleteUser");
        self.handle(rpc, request, |store, _, message| async move {
            let id = parse_id(&message.id)?;
            store.delete(id).await.map_err(from_store)?;
            Ok(())
        })
        .await
    }

    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        let rpc = rpc("ListUsers", "v2.ListUsers");
        self.handle(rpc, request, |store, _, message| async move {
            // Read from the database on the first call only.
            let tokens = self.page_tokens().await?;
            // Both fields checked, both problems reported.
            let size = PageSize::parse(message.page_size);
            let after = match message.page_token.as_str() {
                "" => Ok(None),
                token => tokens.read(token).map(Some),
            };
            let (size, after) = match (size, after) {
                (Ok(size), Ok(after)) => (size, after),
                (size, after) => {
                    let violations = [size.err(), after.err()].into_iter().flatten().collect();
                    return Err(invalid(Invalid(violations)));
                }
            };
            let page = store.list_after(after, size).await.map_err(from_store)?;
            Ok(ListUsersResponse {
                users: page.users.iter().map(to_wire).collect(),
                next_page_token: page
                    .next
                    .map(|position| tokens.issue(position))
                    .unwrap_or_default(),
                total_size: i32::try_from(page.total).unwrap_or(i32::MAX),
            })
        })
        .await
    }

    async fn list_user_events(
        &self,
        request: Request<ListUserEventsRequest>,
    ) -> Result<Response<ListUserEventsResponse>, Status> {
        let rpc = rpc("ListUserEvents", "v2.ListUserEvents");
        self.handle(rpc, request, |store, _, message| async move {
            let id = parse_id(&message.id)?;
            let events = store.user_events(id).await.map_err(from_store)?;
            Ok(ListUserEventsResponse {
                events: events.iter().map(event_to_wire).collect(),
            })
        })
        .await
    }
}

fn seconds(unix_seconds: i64) -> Timestamp {
    Timestamp {
        seconds: unix_seconds,
        nanos: 0,
    }
}

fn to_wire(user: &User) -> WireUser {
    WireUser {
        id: user.id.to_string(),
        name: user.name.as_str().to_owned(),
        email: user.email.as_str().to_owned(),
        age: user.age.get(),
        created_at: Some(seconds(user.created_at)),
        updated_at: Some(seconds(user.updated_at)),
    }
}

fn event_to_wire(event: &UserEvent) -> WireEvent {
    let millis = event.occurred_at_ms;
    WireEvent {
        event_id: event.event_id.to_string(),
        user_id: event.user_id.to_string(),
        r#type: event.kind.as_str().to_owned(),
        version: event.version,
        user: event.snapshot_user().as_ref().map(to_wire),
        occurred_at: Some(Timestamp {
            seconds: millis.div_euclid(1000),
            // 0..=999_000_000: always fits.
            nanos: i32::try_from(millis.rem_euclid(1000) * 1_000_000).unwrap_or(0),
        }),
        trace_parent: event.trace_parent.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_times_keep_their_milliseconds() {
        let event = UserEvent::deleted(
            crate::domain::UserId::new_random(),
            crate::domain::Version::FIRST,
        );
        let wire = event_to_wire(&event);
        let at = wire.occurred_at.unwrap();
        assert_eq!(
            i64::from(at.nanos) / 1_000_000 + at.seconds * 1000,
            event.occurred_at_ms
        );
        assert!((0..1_000_000_000).contains(&at.nanos));
    }
}
