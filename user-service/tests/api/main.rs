//! Integration tests: the real service in process (port 0) against real PostgreSQL and Redis
//! (or the embedded SQLite default), called with tonic clients. Run with `./scripts/test`, or
//! `cargo test -p user-service` with DATABASE_URL / REDIS_URL pointing at servers where the
//! test role may CREATE DATABASE.

mod adoption;
mod binary;
mod cache_coherence;
mod events;
mod faults;
mod grpc_web;
mod helpers;
mod hooks;
mod idempotency;
mod input_rules;
mod load;
mod metrics_contract;
mod observability;
mod process;
mod proxy;
mod resilience;
mod throwaway;
mod users;
mod v2;
mod watch;

/// Generates one test per backend from an `async fn(Backend)` body.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::helpers::Backend::Postgres).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::helpers::Backend::Sqlite).await;
                }
            }
        )*
    };
}
