#!/usr/bin/env bash
# The test command: formatting, lints, and every test of the workspace.
# It installs what the tests need when it is missing, so a fresh machine with the Rust
# toolchain passes it by itself. `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests need, installed when missing (as root, non-interactively):
# - etcd-server: the etcd backend's tests run a real etcd;
# - protobuf-compiler and libprotobuf-dev: etcd-client's build script runs protoc on etcd's
#   protos, which import google/protobuf/descriptor.proto. Debian ships that file in
#   libprotobuf-dev, which protobuf-compiler only recommends, so `--no-install-recommends`
#   leaves it out and a fresh machine fails the build (issue 15);
# - iproute2 (`ip netns`, the chaos tests' partitions) and procps (`kill`): present on most
#   images, listed so a minimal one passes too.
# The default build (`cargo run --release -- dev`) needs none of these: the embedded store
# is redb, TLS is rustls, and the cross-process tests start `infraos` itself.
PACKAGES=(protobuf-compiler libprotobuf-dev etcd-server iproute2 procps)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"
fi
# Fail here, with the reason, rather than deep inside etcd-client's build script.
proto_probe=$(mktemp -d)
echo 'syntax = "proto3"; import "google/protobuf/descriptor.proto";' >"$proto_probe/probe.proto"
if ! protoc -I"$proto_probe" -o/dev/null "$proto_probe/probe.proto" 2>/dev/null; then
  rm -rf "$proto_probe"
  echo "protoc cannot find google/protobuf/descriptor.proto: install libprotobuf-dev" >&2
  exit 1
fi
rm -rf "$proto_probe"

# A fresh clone gains nothing from incremental builds, and they cost gigabytes of disk.
if [ "${CI:-}" = true ]; then
  export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
fi
echo "== disk: $(df -h . | awk 'NR==2 {print $4 " free of " $2}')"

echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo clippy (with the etcd backend)"
cargo clippy --workspace --all-targets --features etcd -- -D warnings
echo "== tests (with the etcd backend)"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --features etcd --profile "${NEXTEST_PROFILE:-$([ "${CI:-}" = true ] && echo ci || echo default)}"
else
  echo "cargo-nextest not found; running cargo test (install it with: cargo install cargo-nextest --locked)" >&2
  cargo test --workspace --features etcd
fi
