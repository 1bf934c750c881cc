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
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check awscli boto3
echo "pytools: $("$venv/bin/aws" --version 2>&1) in $venv"
