#!/usr/bin/env bash
# Installs the system packages Skiff and its tests need, idempotently.
# Debian 12, as root. Safe to run again: it only installs what is missing.
set -euo pipefail

PACKAGES=(
  crun runc            # OCI runtimes (crun is the default)
  libseccomp-dev pkg-config  # skiff links the libseccomp crun uses
  busybox-static       # the demo and test images are made from it
  iproute2             # ip(8), for looking at networks in tests
  docker-registry      # a real OCI distribution registry for tests
  apache2-utils        # htpasswd, for the registry-with-auth tests
  skopeo               # an independent OCI client, to cross-check our images
  python3 curl
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) != 0 ]]; then
    echo "skiff: these packages are missing and installing them needs root: ${missing[*]}" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts the registry as a service where systemd runs; tests start
# their own instances, so a packaged one is neither needed nor in the way.
