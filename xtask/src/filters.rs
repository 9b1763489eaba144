//! `cargo xtask build-filters`: the proxy-wasm filter modules (wasm32-wasip1, the size-tuned
//! `wasm` profile) into `<target>/wasm32-wasip1/wasm/meshgate_{rate_limit,cache_headers,
//! span_enrichment,filters}.wasm` (meshgate_filters.wasm: the three in one stream context, one
//! pluginConfig), each then shrunk with binaryen's `wasm-opt -Oz`: the tests (the Envoy ABI
//! check and the size ratchet included), the gateway and the images use the optimised modules.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::process;

const PACKAGES: [&str; 4] = [
    "meshgate-rate-limit",
    "meshgate-cache-headers",
    "meshgate-span-enrichment",
    "meshgate-filters",
];

/// The features rustc's wasm32-wasip1 target emits (and Envoy's V8 runs); wasm-opt must
/// neither reject them nor introduce others.
const FEATURES: [&str; 6] = [
    "--enable-bulk-memory",
    "--enable-sign-ext",
    "--enable-nontrapping-float-to-int",
    "--enable-mutable-globals",
    "--enable-reference-types",
    "--enable-multivalue",
];

/// Where the modules land.
pub fn output_dir(root: &Path) -> PathBuf {
    process::target_dir(root).join("wasm32-wasip1/wasm")
}

pub fn build(root: &Path) -> anyhow::Result<()> {
    let wasm_opt = process::ensure_program("wasm-opt", "binaryen")?;
    let mut cargo = process::cargo(root);
    cargo.args([
        "build",
        "--locked",
        "--profile",
        "wasm",
        "--target",
        "wasm32-wasip1",
    ]);
    for package in PACKAGES {
        cargo.args(["-p", package]);
    }
    process::run(&mut cargo)?;
    let dir = output_dir(root);
    for package in PACKAGES {
        let file = format!("{}.wasm", package.replace('-', "_"));
        let module = dir.join(&file);
        optimise(&wasm_opt, &dir.join("deps").join(&file), &module)?;
        let size = module
            .metadata()
            .with_context(|| format!("{} was not built", module.display()))?
            .len();
        println!("  {}  {size} bytes ({} KiB)", module.display(), size / 1024);
    }
    Ok(())
}

/// `wasm-opt -Oz` of cargo's `built` (left as it is, so cargo's own bookkeeping holds) into
/// `module`, a new file rather than a rewrite: cargo hard-links `module` to `built` on every
/// build, fresh or not. Skipped when `module` is already the optimised form of these bytes.
fn optimise(wasm_opt: &Path, built: &Path, module: &Path) -> anyhow::Result<()> {
    let input =
        std::fs::read(built).with_context(|| format!("{} was not built", built.display()))?;
    let digest = hex::encode(Sha256::digest(&input));
    let stamp = module.with_extension("wasm.opt-input");
    let current = std::fs::read_to_string(&stamp).unwrap_or_default() == digest
        && module
            .metadata()
            .is_ok_and(|m| m.len() != input.len() as u64);
    if current {
        return Ok(());
    }
    let tmp = module.with_extension("wasm.opt-tmp");
    process::run(
        Command::new(wasm_opt)
            .arg("-Oz")
            .args(FEATURES)
            .arg(built)
            .arg("-o")
            .arg(&tmp),
    )?;
    std::fs::rename(&tmp, module)
        .with_context(|| format!("replacing {} with {}", module.display(), tmp.display()))?;
    std::fs::write(&stamp, digest).with_context(|| format!("writing {}", stamp.display()))
}
