#!/usr/bin/env bash
# Runs every edge-gateway fuzz target for N seconds each (default 60), one after the other,
# single process each. Installs cargo-fuzz if it is missing. Works from a clean clone:
#
#   edge-gateway/fuzz/run.sh            # 60 s per target
#   edge-gateway/fuzz/run.sh 600        # 10 min per target
#   TARGETS="rest_router" edge-gateway/fuzz/run.sh 30
#
# Corpus grows in fuzz/corpus/<target>/ (not committed); the committed seeds in
# fuzz/seeds/<target>/ are read too. Crashes land in fuzz/artifacts/<target>/ and make the
# script exit 1 after all targets ran. Build output goes to $CARGO_TARGET_DIR if set, else to
# fuzz/target/.
set -euo pipefail

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
    echo "usage: $0 [seconds-per-target]" >&2
    exit 2
fi

fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
gateway_dir="$(dirname "$fuzz_dir")"
targets="${TARGETS:-json_to_message grpc_web_decoder rest_router response_json}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$fuzz_dir/target}"

# libFuzzer needs a nightly compiler (-Zsanitizer, sancov passes).
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "installing the nightly toolchain (needed by cargo-fuzz)" >&2
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    (cd / && cargo +nightly install cargo-fuzz --locked)
fi

cd "$gateway_dir"
# The fuzz crate has its own workspace and Cargo.lock; refuse to run with a stale lock file.
cargo +nightly metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null

dict_for() {
    case "$1" in
        json_to_message) echo "-dict=fuzz/dict/json.dict" ;;
        rest_router) echo "-dict=fuzz/dict/path.dict" ;;
        *) echo "" ;;
    esac
}

cargo +nightly fuzz build
failed=()
for target in $targets; do
    mkdir -p "fuzz/corpus/$target" "fuzz/seeds/$target"
    echo "=== $target: ${seconds}s" >&2
    # -timeout: an input taking over 10 s is reported as a hang; -rss_limit_mb: as OOM.
    # shellcheck disable=SC2046
    if ! cargo +nightly fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        $(dict_for "$target"); then
        failed+=("$target")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAILED: ${failed[*]} (inputs in edge-gateway/fuzz/artifacts/<target>/)" >&2
    exit 1
fi
echo "all targets ran ${seconds}s without a finding" >&2
