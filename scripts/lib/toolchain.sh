# shellcheck shell=bash
# Makes sure the toolchain pinned in rust-toolchain.toml is installed. rustup >= 1.28 no longer
# installs it on first use, so a fresh machine would otherwise stop at "toolchain not installed".
ensure_toolchain() {
  command -v rustup >/dev/null || command -v cargo >/dev/null \
    || { echo "error: cargo not found: install Rust with rustup (https://rustup.rs); rust-toolchain.toml pins the version" >&2; exit 1; }
  command -v rustup >/dev/null || return 0
  if ! rustup run "$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)" rustc --version >/dev/null 2>&1; then
    echo "== installing the pinned Rust toolchain (rust-toolchain.toml)"
    rustup toolchain install
  fi
}
