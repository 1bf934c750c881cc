#!/usr/bin/env bash
# The Python tools the Lambda tests drive Skiff with: the real `aws` CLI
# (v1, from PyPI) and boto3, in a venv outside the repo so CI installs
# them once per machine. Idempotent.
#
#   bash scripts/pytools.sh      → /var/cache/skiff-venv (SKIFF_VENV overrides)
set -euo pipefail
venv=${SKIFF_VENV:-/var/cache/skiff-venv}
if [[ -x $venv/bin/aws && -x $venv/bin/python ]] && "$venv/bin/python" -c 'import boto3' 2>/dev/null; then
  exit 0
fi
if ! python3 -m venv "$venv" 2>/dev/null; then
  # Debian's own python3 keeps venv in a package of its own.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  rm -rf "$venv"
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check awscli boto3
echo "pytools: $("$venv/bin/aws" --version 2>&1) in $venv"
