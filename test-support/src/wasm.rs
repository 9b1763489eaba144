//! The filter modules built by `scripts/build-filters`
//! (`cargo build --profile wasm --target wasm32-wasip1 ...`).

use std::path::PathBuf;

/// How to build the modules, for messages about a missing one.
pub const BUILD_COMMAND: &str = "scripts/build-filters";

/// `$MESHGATE_WASM_DIR/<stem>.wasm`, else `<target dir>/wasm32-wasip1/<profile>/<stem>.wasm`
/// with profile `wasm` (or `$MESHGATE_WASM_PROFILE`). The target dir is the one the running
/// test or bench binary was built into, so a shared `CARGO_TARGET_DIR` finds its own modules.
pub fn module_path(stem: &str) -> PathBuf {
    let file = format!("{stem}.wasm");
    if let Some(dir) = std::env::var_os("MESHGATE_WASM_DIR") {
        return PathBuf::from(dir).join(file);
    }
    // <target>/<profile>/deps/<binary>
    let exe = std::env::current_exe().expect("the running binary's path");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("test and bench binaries live in <target>/<profile>/deps");
    let profile = std::env::var("MESHGATE_WASM_PROFILE").unwrap_or_else(|_| "wasm".to_owned());
    target.join("wasm32-wasip1").join(profile).join(file)
}

/// [`module_path`], which must exist: a missing module fails with the command that builds it.
pub fn module(stem: &str) -> PathBuf {
    let path = module_path(stem);
    assert!(
        path.is_file(),
        "{} is missing: build the filter modules first with `{BUILD_COMMAND}` \
         (or point MESHGATE_WASM_DIR at them)",
        path.display()
    );
    path
}

/// The bytes of [`module`].
pub fn module_bytes(stem: &str) -> Vec<u8> {
    let path = module(stem);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A real proxy-wasm guest that traps on demand (`x-trap: request-headers | request-body |
/// response-headers | response-body`), compiled from `trapping_guest.wat`: what the hosts'
/// failure tests (failStrategy, VM reload) run. The file says what it does.
#[cfg(feature = "trapping-guest")]
pub fn trapping_guest() -> Vec<u8> {
    wat::parse_str(include_str!("trapping_guest.wat"))
        .unwrap_or_else(|e| panic!("trapping_guest.wat: {e}"))
}
