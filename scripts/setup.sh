#!/usr/bin/env bash
# Sets Skiff up on this machine and runs its main job: builds the binary,
# makes the demo image (busybox httpd, no container tool needed), loads it
# and runs it detached with its port published on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
cargo build --release --locked -p skiff
install -m 0755 target/release/skiff /usr/local/bin/skiff

demo_port=${SKIFF_DEMO_PORT:-8088}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 scripts/mkimage.py --demo --gzip --format oci --name localhost/skiff-demo:latest "$tmp/demo.tar"
skiff load -i "$tmp/demo.tar"
skiff rm -f skiff-demo >/dev/null 2>&1 || true
skiff run -d --name skiff-demo -p "127.0.0.1:$demo_port:8080" localhost/skiff-demo:latest
for _ in $(seq 1 50); do
  curl -fsS "http://127.0.0.1:$demo_port/" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$demo_port/"
echo
echo "skiff is set up: the demo container answers on http://127.0.0.1:$demo_port/ (skiff ps; skiff logs skiff-demo; skiff rm -f skiff-demo)"
