#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests.
# Integration tests run real crun, a real registry and real layers, as root.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
if [[ $(id -u) != 0 ]]; then
  echo "skiff tests: the integration tests start containers and need root" >&2
  exit 1
fi
# A build cache outside the clone, so CI's fresh clones reuse it.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/skiff-target}
cargo fmt --all --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo build --locked -p skiff
bash scripts/base-images.sh  # offline base images, cached outside the clone (once per machine)
bash scripts/pytools.sh      # the aws CLI and boto3 for the Lambda tests, likewise
# Integration tests share the host's bridge and cgroups; two threads keeps
# the 2-core machines honest without serialising everything.
cargo test --locked --workspace -- --test-threads=2

# The tests above run the debug build; the release binary is linked
# statically (scripts/release.sh): it must run a container too.
out=$(bash scripts/release.sh)
smoke=$(mktemp -d)
smoke_run_dir=/run/skiff/$(printf %s "$(realpath "$smoke")/root" | sha256sum | cut -c1-12)
# Never through a mount a failed run may have left.
trap 'rm -rf --one-file-system "$smoke" "$smoke_run_dir" 2>/dev/null || true' EXIT
if readelf -lW "$out/skiff" | grep -q INTERP; then
  echo "the release binary $out/skiff is linked dynamically" >&2
  exit 1
fi
python3 scripts/mkimage.py --name localhost/smoke:latest --format docker "$smoke/img.tar" >/dev/null
SKIFF_ROOT=$smoke/root "$out/skiff" load -q -i "$smoke/img.tar" >/dev/null
said=$(SKIFF_ROOT=$smoke/root "$out/skiff" run --rm localhost/smoke echo static-ok)
[[ $said == static-ok ]] || { echo "the release binary's container said '$said'" >&2; exit 1; }
echo "release binary ($out/skiff): ok"
