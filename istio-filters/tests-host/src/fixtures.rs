//! Messages the tests and the benchmark send through the filters.

/// A `GetUser` answer: the response the span-enrichment and cache-headers filters read.
pub fn user_response() -> meshgate_proto::user::GetUserResponse {
    meshgate_proto::user::GetUserResponse {
        user: Some(meshgate_proto::user::User {
            id: "u-12345".into(),
            name: "Ada Lovelace".into(),
            email: "ada@example.com".into(),
            age: 36,
            created_at: 1_700_000_000,
            updated_at: 1_700_000_100,
        }),
        message: "ok".into(),
    }
}
