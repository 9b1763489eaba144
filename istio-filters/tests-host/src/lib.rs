//! Integration tests live in `tests/`; the library holds what they and the benchmark share:
//! [`guest_cost`], the deterministic per-request cost of a module (wasmtime's fuel units), and
//! the [`fixtures`] they send.
#![forbid(unsafe_code)]

pub mod fixtures;
pub mod guest_cost;
