//! The module size ratchet: every module, as `cargo xtask build-filters` leaves it (wasm-opt
//! -Oz), stays within its recorded size. Envoy keeps one VM per worker thread per module in
//! every sidecar that attaches it, so growth is paid on every pod; a change that grows a module
//! past its ceiling has to raise the ceiling here, in the same commit, with the reason.
//! The sizes per module are in istio-filters/README.md.

use crate::common::{BUNDLE, CACHE_HEADERS, RATE_LIMIT, SPAN_ENRICHMENT, module_bytes};

const KIB: usize = 1024;

/// Each module's ceiling: its measured size (README) rounded up to the next 8 KiB. The issue's
/// goals are ≤ 400 KiB per module and ≤ 512 KiB for the bundle. Raised by 32–40 KiB for the
/// guest cost cut of issue 13 (the hot crates built at opt-level 3, which halved the fuel per
/// request with the other changes; BENCHMARKS.md, "Session 9"): rate-limit's ceiling is now
/// the goal itself.
const CEILINGS: [(&str, usize); 4] = [
    (RATE_LIMIT, 400 * KIB),
    (CACHE_HEADERS, 336 * KIB),
    (SPAN_ENRICHMENT, 376 * KIB),
    (BUNDLE, 488 * KIB),
];

/// The modules over their ceiling, as messages.
fn over_ceiling(sizes: &[(&str, usize)]) -> Vec<String> {
    sizes
        .iter()
        .zip(CEILINGS)
        .filter_map(|((module, size), (ceiling_module, ceiling))| {
            assert_eq!(*module, ceiling_module);
            (*size > ceiling).then(|| {
                format!(
                    "{module}: {size} bytes ({} KiB), ceiling {ceiling} bytes ({} KiB)",
                    size / KIB,
                    ceiling / KIB
                )
            })
        })
        .collect()
}

#[test]
fn every_module_stays_within_its_size_ceiling() {
    let sizes: Vec<(&str, usize)> = CEILINGS
        .iter()
        .map(|(module, _)| (*module, module_bytes(module).len()))
        .collect();
    let over = over_ceiling(&sizes);
    assert!(
        over.is_empty(),
        "modules grew (build with `cargo xtask build-filters`, which runs wasm-opt):\n{}",
        over.join("\n")
    );
}

#[test]
fn a_module_one_byte_over_its_ceiling_fails() {
    let sizes: Vec<(&str, usize)> = CEILINGS
        .iter()
        .map(|(module, ceiling)| (*module, ceiling + usize::from(*module == CACHE_HEADERS)))
        .collect();
    let over = over_ceiling(&sizes);
    assert_eq!(over.len(), 1, "{over:?}");
    assert!(over[0].starts_with(CACHE_HEADERS), "{over:?}");
}
