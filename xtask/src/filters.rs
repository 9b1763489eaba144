//! `cargo xtask build-filters`: the proxy-wasm filter modules (wasm32-wasip1, the size-tuned
//! `wasm` profile) into `<target>/wasm32-wasip1/wasm/meshgate_{rate_limit,cache_headers,
//! span_enrichment,filters}.wasm` (meshgate_filters.wasm: the three in one stream context, one
//! pluginConfig).

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::process;

const PACKAGES: [&str; 4] = [
    "meshgate-rate-limit",
    "meshgate-cache-headers",
    "meshgate-span-enrichment",
    "meshgate-filters",
];

/// Where the modules land.
pub fn output_dir(root: &Path) -> PathBuf {
    process::target_dir(root).join("wasm32-wasip1/wasm")
}

pub fn build(root: &Path) -> anyhow::Result<()> {
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
        let module = dir.join(format!("{}.wasm", package.replace('-', "_")));
        let size = module
            .metadata()
            .with_context(|| format!("{} was not built", module.display()))?
            .len();
        println!("  {}  {size} bytes", module.display());
    }
    Ok(())
}
