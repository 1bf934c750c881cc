#!/usr/bin/env bash
# Builds Skiff's release binary as it ships, and prints the directory it
# is in. Extra arguments go to cargo, and name what to build then:
# `--bin skiff --example hello_http` puts the example in `examples/` there.
#
#   out=$(bash scripts/release.sh) && "$out/skiff" --version
#
# Linked statically, libc and libseccomp included: a static-pie, still
# loaded at a random address. Every `skiff` command then starts without
# the dynamic loader finding, mapping and relocating four libraries:
# `skiff --version` 1.42 -> 0.98 ms, `skiff run --rm IMG true` -0.53 ms
# [-0.69, -0.36] (bench/ab-start, 400 runs a side). glibc's static
# resolver still does nsswitch's `files` and `dns` (/etc/hosts, then the
# servers of /etc/resolv.conf); other modules would need this glibc's
# own at run time. Skiff looks up no users on the host.
# Its 24k relocations are packed (DT_RELR, glibc 2.36 and binutils 2.38):
# 7 KB to read at start instead of 575 KB, 15 fewer page faults; `run --rm`
# -0.57 ms [-0.81, -0.15] and -0.36 [-0.55, -0.20] (both orders).
# The target is named so the flags reach only the binary, not build
# scripts and proc-macros (which cannot be static); the output then lands
# under `$CARGO_TARGET_DIR/<host triple>/release`.
set -euo pipefail
cd "$(dirname "$0")/.."

# CARGO_ENCODED_RUSTFLAGS would silently replace the flags below, and a
# target directory set elsewhere than CARGO_TARGET_DIR would put the
# binary where the caller does not look.
for v in CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_TARGET_DIR; do
  [[ -z ${!v:-} ]] || { echo "skiff: unset $v to build the release binary" >&2; exit 1; }
done
command -v cc >/dev/null || { echo "skiff: no C compiler (apt install gcc)" >&2; exit 1; }
host=$(rustc -vV | sed -n 's/^host: //p')
# With --target, RUSTFLAGS (the caller's, if any, and these) reaches only
# the target's artifacts.
export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs"
export LIBSECCOMP_LINK_TYPE=static
seccomp_a=$(cc -print-file-name=libseccomp.a)
[[ $seccomp_a == /* ]] || { echo "skiff: libseccomp.a not found (apt install libseccomp-dev)" >&2; exit 1; }
export LIBSECCOMP_LIB_PATH=${seccomp_a%/*}
target_dir=$(realpath -m "${CARGO_TARGET_DIR:-target}")
cargo build --release --locked -p skiff --target "$host" "$@" >&2
echo "$target_dir/$host/release"
