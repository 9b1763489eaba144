# shellcheck shell=bash
# What a fresh machine needs before `cargo xtask` can run (sourced by scripts/run, scripts/test
# and .ci/run; everything after that is Rust: xtask/).

die() { echo "error: $*" >&2; exit 1; }

# ensure_packages COMMAND:DEBIAN-PACKAGE...: installs the package of each missing command with
# apt-get when root; otherwise stops, saying what to install.
ensure_packages() {
  local pair missing=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    die "install ${missing[*]} first (Debian/Ubuntu: sudo apt-get install -y ${missing[*]})"
  fi
}

# The build's own needs: pingora builds C with cmake.
ensure_build_tools() {
  ensure_packages cmake:cmake cc:build-essential
}

# Makes sure the toolchain pinned in rust-toolchain.toml is installed. rustup >= 1.28 no longer
# installs it on first use, so a fresh machine would otherwise stop at "toolchain not installed".
ensure_toolchain() {
  command -v rustup >/dev/null || command -v cargo >/dev/null \
    || die "cargo not found: install Rust with rustup (https://rustup.rs); rust-toolchain.toml pins the version"
  command -v rustup >/dev/null || return 0
  if ! rustup run "$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)" rustc --version >/dev/null 2>&1; then
    echo "== installing the pinned Rust toolchain (rust-toolchain.toml)"
    rustup toolchain install
  fi
}
