//! The Envoy ABI check: every module (as `scripts/build-filters` leaves it, optimised) loads in
//! Envoy's Wasm host, proxy-wasm-cpp-host, for ABI 0.2.1: each import is a host function it
//! registers (`env.proxy_*` for 0.2.1, or a WASI function it provides), there is exactly one
//! ABI version marker, and the memory and an allocator are exported.

use wasmparser::{ExternalKind, Parser, Payload, TypeRef};

use crate::common::{BUNDLE, CACHE_HEADERS, RATE_LIMIT, SPAN_ENRICHMENT, module_bytes};

/// proxy-wasm-cpp-host's `env.proxy_*` host functions for ABI 0.2.1 (all ABIs' plus
/// `continue_stream`, `close_stream`, `get_log_level`).
const PROXY_HOST_FUNCTIONS: &[&str] = &[
    "log",
    "get_status",
    "set_property",
    "get_property",
    "send_local_response",
    "get_shared_data",
    "set_shared_data",
    "register_shared_queue",
    "resolve_shared_queue",
    "dequeue_shared_queue",
    "enqueue_shared_queue",
    "get_header_map_value",
    "add_header_map_value",
    "replace_header_map_value",
    "remove_header_map_value",
    "get_header_map_pairs",
    "set_header_map_pairs",
    "get_header_map_size",
    "get_buffer_status",
    "get_buffer_bytes",
    "set_buffer_bytes",
    "http_call",
    "grpc_call",
    "grpc_stream",
    "grpc_close",
    "grpc_cancel",
    "grpc_send",
    "set_tick_period_milliseconds",
    "get_current_time_nanoseconds",
    "define_metric",
    "increment_metric",
    "record_metric",
    "get_metric",
    "set_effective_context",
    "done",
    "call_foreign_function",
    "continue_stream",
    "close_stream",
    "get_log_level",
];

/// The WASI functions proxy-wasm-cpp-host provides (as `wasi_snapshot_preview1`).
const WASI_FUNCTIONS: &[&str] = &[
    "fd_write",
    "fd_read",
    "fd_seek",
    "fd_close",
    "fd_fdstat_get",
    "environ_get",
    "environ_sizes_get",
    "args_get",
    "args_sizes_get",
    "clock_time_get",
    "random_get",
    "proc_exit",
    "path_open",
    "fd_prestat_get",
    "fd_prestat_dir_name",
];

/// What in `wasm` Envoy would refuse (empty when it loads).
fn envoy_abi_problems(wasm: &[u8]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut markers = Vec::new();
    let (mut memory, mut allocator) = (false, false);
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.expect("a valid module") {
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.expect("an import");
                    let known = match (import.module, &import.ty) {
                        ("env", TypeRef::Func(_)) => import
                            .name
                            .strip_prefix("proxy_")
                            .is_some_and(|name| PROXY_HOST_FUNCTIONS.contains(&name)),
                        ("wasi_snapshot_preview1", TypeRef::Func(_)) => {
                            WASI_FUNCTIONS.contains(&import.name)
                        }
                        _ => false,
                    };
                    if !known {
                        problems.push(format!("imports {}.{}", import.module, import.name));
                    }
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.expect("an export");
                    match (export.kind, export.name) {
                        (ExternalKind::Memory, "memory") => memory = true,
                        (ExternalKind::Func, "malloc" | "proxy_on_memory_allocate") => {
                            allocator = true;
                        }
                        (ExternalKind::Func, name) if name.starts_with("proxy_abi_version_") => {
                            markers.push(name.to_owned());
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if markers != ["proxy_abi_version_0_2_1"] {
        problems.push(format!("ABI markers {markers:?}, not exactly 0.2.1"));
    }
    if !memory {
        problems.push("no exported memory".to_owned());
    }
    if !allocator {
        problems.push("no malloc / proxy_on_memory_allocate".to_owned());
    }
    problems
}

#[test]
fn every_module_fits_envoys_abi() {
    for module in [RATE_LIMIT, CACHE_HEADERS, SPAN_ENRICHMENT, BUNDLE] {
        let problems = envoy_abi_problems(&module_bytes(module));
        assert!(problems.is_empty(), "{module}: {problems:?}");
    }
}

#[test]
fn the_check_refuses_what_envoy_would() {
    let foreign = wat_module(
        r#"(module (import "env" "proxy_get_configuration" (func (param i32 i32) (result i32)))
                   (import "wasi_snapshot_preview1" "sock_accept" (func (param i32 i32 i32) (result i32)))
                   (func (export "proxy_abi_version_0_1_0")))"#,
    );
    let problems = envoy_abi_problems(&foreign);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("proxy_get_configuration")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("sock_accept")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("markers")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("memory")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("malloc")),
        "{problems:?}"
    );
}

fn wat_module(text: &str) -> Vec<u8> {
    wat::parse_str(text).expect("valid WAT")
}
