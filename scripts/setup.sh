#!/usr/bin/env bash
# Sets Skiff up on this machine and runs its main job: builds the binary,
# makes the demo image (busybox httpd, no container tool needed), starts
# the daemon (`skiff serve`, gateway on 127.0.0.1:8080) if it is not
# running, deploys the demo as a service and fetches it through the
# gateway: the first request cold-starts an instance, which goes away
# again after the idle timeout. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
out=$(bash scripts/release.sh)
install -m 0755 "$out/skiff" /usr/local/bin/skiff

gateway=${SKIFF_GATEWAY:-127.0.0.1:8080}
admin=${SKIFF_ADMIN:-127.0.0.1:8081}
root=${SKIFF_ROOT:-/var/lib/skiff}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 scripts/mkimage.py --demo --gzip --format oci --name localhost/skiff-demo:latest "$tmp/demo.tar"
skiff load -i "$tmp/demo.tar"

if ! skiff services >/dev/null 2>&1; then
  mkdir -p "$root"
  # The daemon outlives this script; its log stays in the data directory.
  setsid skiff serve --gateway "$gateway" --admin "$admin" >>"$root/serve.log" 2>&1 </dev/null &
  for _ in $(seq 1 100); do
    skiff services >/dev/null 2>&1 && break
    sleep 0.1
  done
  skiff services >/dev/null || { tail -5 "$root/serve.log" >&2; exit 1; }
fi
# Deployed once: running this again makes no new revision (nor mends a
# demo service changed since; `skiff deploy demo ...` does).
skiff describe demo >/dev/null 2>&1 ||
  skiff deploy demo --image localhost/skiff-demo:latest --port 8080 --idle-timeout 60s
curl -fsS -D "$tmp/headers" -H 'Host: demo.localhost' "http://$gateway/"
grep -i '^x-skiff-cold-start' "$tmp/headers" || true
echo
echo "skiff is set up: the daemon serves the demo at http://demo.localhost:${gateway##*:}/ and http://$gateway/demo/"
echo "(skiff services; skiff describe demo; skiff ps; metrics on http://$admin/metrics)"
