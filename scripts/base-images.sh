#!/usr/bin/env bash
# Local base images, made without any registry or container tool, tagged like
# the official ones so Dockerfiles and tests that name them work offline:
#
#   docker.io/library/debian:bookworm-slim  debian-bookworm-slim.tar
#       debootstrap --variant=minbase from the Debian mirror, cleaned
#   docker.io/library/python:3.11-slim      python-3.11-slim.tar
#       that + Debian's python3 (3.11), pip, venv, ca-certificates (and the
#       host's extra CAs, for a TLS-intercepting proxy); `python`, `pip`
#   public.ecr.aws/lambda/python:3.11       lambda-python-3.11.tar
#       that + awslambdaric (AWS's runtime interface client, from PyPI),
#       /var/task, ENTRYPOINT /lambda-entrypoint.sh (python3 -m awslambdaric)
#
# `docker save` archives (one gzip layer each) in $SKIFF_BASE_CACHE (default
# /var/cache/skiff-base), outside the repo so a machine pays once; load them
# with `skiff load -i`. Each is built only when missing (or with --force);
# the debootstrap'd and python trees are kept in the cache's rootfs/ so a
# rebuild of one image does not debootstrap again (--force redoes them too).
# Needs root to build (debootstrap, chroot); installs debootstrap with apt
# when missing. Builders of one cache take turns (flock on its .lock).
#
#   bash scripts/base-images.sh [--force] [debian|python|lambda]...
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

CACHE=${SKIFF_BASE_CACHE:-/var/cache/skiff-base}
MIRROR=${SKIFF_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
AWSLAMBDARIC=${SKIFF_AWSLAMBDARIC:-awslambdaric==4.2.2}
APT_OPTS=(-o Acquire::Check-Valid-Until=false -o Acquire::Retries=3 -o APT::Install-Recommends=false)

FORCE=0
WANT=()
for arg in "$@"; do
  case $arg in
    --force) FORCE=1 ;;
    debian | python | lambda) WANT+=("$arg") ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$REPO/scripts/base-images.sh" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "base-images: unknown argument $arg (--force, debian, python, lambda)" >&2
      exit 2
      ;;
  esac
done
((${#WANT[@]})) || WANT=(debian python lambda)

DEBIAN_TAR=$CACHE/debian-bookworm-slim.tar
PYTHON_TAR=$CACHE/python-3.11-slim.tar
LAMBDA_TAR=$CACHE/lambda-python-3.11.tar
ROOTFS=$CACHE/rootfs
WORK=$CACHE/work

log() { printf 'base-images: %s\n' "$*" >&2; }
wanted() { [[ " ${WANT[*]} " == *" $1 "* ]]; }
need() { ((FORCE)) || [[ ! -s $1 ]]; }
# The python tree's recipe version: bump it when ensure_python_root changes,
# so machines with an older cache rebuild the python-based images once.
PY_REV=3
stale() { [[ $(cat "$1.rev" 2>/dev/null) != "$PY_REV" ]]; }

# Nothing to do: no root, no lock, no apt needed.
todo=0
wanted debian && need "$DEBIAN_TAR" && todo=1
wanted python && { need "$PYTHON_TAR" || stale "$PYTHON_TAR"; } && todo=1
wanted lambda && { need "$LAMBDA_TAR" || stale "$LAMBDA_TAR"; } && todo=1
if ((todo)); then
  if [[ $(id -u) != 0 ]]; then
    echo "base-images: building the images needs root (debootstrap, chroot)" >&2
    exit 1
  fi
  mkdir -p "$CACHE"
  # One builder at a time per cache (test.sh and parallel tests may race).
  exec 9>"$CACHE/.lock"
  flock 9
fi

DEBIAN_ROOT=$ROOTFS/debian-$SUITE
PYTHON_ROOT=$ROOTFS/python-3.11
WHEELS=$CACHE/wheels
# --force rebuilds each cached tree once, whichever image asks first.
REDO_DEBIAN=$FORCE REDO_PYTHON=$FORCE REDO_WHEELS=$FORCE
stale "$PYTHON_ROOT" && REDO_PYTHON=1

# Mounts under the work dir (a /proc for apt) go before anything there is
# removed, also those a killed run left behind.
unmount_work() {
  local m
  [[ -d $WORK ]] || return 0
  while read -r _ m _; do
    case $m in "$WORK"/*) umount -l "$m" 2>/dev/null || true ;; esac
  done < <(tac /proc/self/mounts)
}
remove() {
  unmount_work
  rm -rf --one-file-system "$@"
}
trap unmount_work EXIT

# The Debian tree as debootstrap made it (plus apt sources and the official
# slim images' dpkg/apt settings), kept for the images built on it.
ensure_debian_root() {
  if ((REDO_DEBIAN)) || [[ ! -d $DEBIAN_ROOT ]]; then
    if ! command -v debootstrap >/dev/null; then
      log "installing debootstrap"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null ||
        { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null; }
    fi
    log "debootstrap --variant=minbase $SUITE from $MIRROR (about a minute)"
    local tmp=$DEBIAN_ROOT.tmp
    remove "$tmp"
    mkdir -p "$ROOTFS"
    debootstrap --variant=minbase "$SUITE" "$tmp" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 || {
      tail -20 "$CACHE/debootstrap.log" >&2
      log "debootstrap failed; the whole log is $CACHE/debootstrap.log"
      exit 1
    }
    [[ -d $tmp/etc/apt/apt.conf.d && -d $tmp/etc/dpkg/dpkg.cfg.d ]] || {
      log "debootstrap made no $tmp/etc/apt and /etc/dpkg"
      exit 1
    }
    printf 'deb %s %s main\n' "$MIRROR" "$SUITE" "$MIRROR" "$SUITE-updates" \
      "${MIRROR%/debian}/debian-security" "$SUITE-security" >"$tmp/etc/apt/sources.list"
    # As the official slim images: no docs, man pages or translations, and
    # apt keeps no packages.
    printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
      'path-exclude /usr/share/man/*' 'path-exclude /usr/share/groff/*' \
      'path-exclude /usr/share/info/*' 'path-exclude /usr/share/lintian/*' \
      'path-exclude /usr/share/linda/*' 'path-exclude /usr/share/locale/*' \
      >"$tmp/etc/dpkg/dpkg.cfg.d/docker"
    local rmdebs='rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true'
    printf '%s\n' "DPkg::Post-Invoke { \"$rmdebs\"; };" "APT::Update::Post-Invoke { \"$rmdebs\"; };" \
      'Dir::Cache::pkgcache "";' 'Dir::Cache::srcpkgcache "";' \
      >"$tmp/etc/apt/apt.conf.d/docker-clean"
    printf '%s\n' 'APT::Install-Recommends "false";' >"$tmp/etc/apt/apt.conf.d/docker-no-recommends"
    remove "$DEBIAN_ROOT"
    mv "$tmp" "$DEBIAN_ROOT"
  fi
  REDO_DEBIAN=0
}

# What an image does not need: apt lists and caches, logs, docs, the
# builder's resolv.conf and hostname (the runtime provides both).
clean_root() {
  local r=$1
  [[ -n $r && -d $r/etc && $r != / ]] || {
    log "clean_root: $r is not a tree to clean"
    exit 1
  }
  rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/* "$r"/var/cache/debconf/*-old \
    "$r"/var/lib/dpkg/*-old "$r"/tmp/* "$r"/var/tmp/* "$r"/root/.cache
  find "$r/var/log" -type f -delete
  find "$r/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
  find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
  rm -rf "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/groff/* \
    "$r"/usr/share/lintian/* "$r"/usr/share/locale/*
  rm -f "$r/etc/resolv.conf" "$r/etc/hostname"
  mkdir -p "$r/var/lib/apt/lists/partial" "$r/var/cache/apt/archives/partial"
}

# work_copy SRC NAME: a fresh copy of a cached tree in $WORK/NAME.
work_copy() {
  remove "$WORK/$2"
  mkdir -p "$WORK"
  cp -a "$1" "$WORK/$2"
}

# pack NAME OUT DIR [mkimage.py config options]: OUT appears only when whole.
pack() {
  local name=$1 out=$2 dir=$3
  shift 3
  log "packing $name"
  rm -f "$out.tmp"
  python3 "$REPO/scripts/mkimage.py" --name "$name" --format docker --gzip --rootfs "$dir" "$@" "$out.tmp"
  mv -f "$out.tmp" "$out"
}

in_root() {
  local r=$1
  shift
  chroot "$r" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 HOME=/root DEBIAN_FRONTEND=noninteractive "$@"
}

build_debian() {
  ensure_debian_root
  work_copy "$DEBIAN_ROOT" debian
  clean_root "$WORK/debian"
  pack docker.io/library/debian:bookworm-slim "$DEBIAN_TAR" "$WORK/debian" --cmd '["bash"]'
  remove "$WORK/debian"
}

# The python tree: Debian's python3 and pip in the Debian tree, cleaned.
ensure_python_root() {
  if ((REDO_PYTHON)) || [[ ! -d $PYTHON_ROOT ]]; then
    ensure_debian_root
    work_copy "$DEBIAN_ROOT" python
    local w=$WORK/python
    log "installing python3, python3-pip, python3-venv, ca-certificates (apt in a chroot)"
    cp /etc/resolv.conf "$w/etc/resolv.conf"
    mount -t proc proc "$w/proc"
    {
      in_root "$w" apt-get "${APT_OPTS[@]}" update -q &&
        in_root "$w" apt-get "${APT_OPTS[@]}" install -y -q python3 python3-pip python3-venv ca-certificates
    } >"$CACHE/python-apt.log" 2>&1 || {
      tail -20 "$CACHE/python-apt.log" >&2
      log "apt-get in the python tree failed; the whole log is $CACHE/python-apt.log"
      exit 1
    }
    umount "$w/proc"
    trust_host_cas "$w"
    # As the official image: `python` and `pip`, and pip installs into the
    # system (no PEP 668 "externally managed" refusal).
    ln -sfn /usr/bin/python3 "$w/usr/local/bin/python"
    [[ -e $w/usr/bin/pip ]] || ln -sfn pip3 "$w/usr/bin/pip"
    rm -f "$w"/usr/lib/python3.*/EXTERNALLY-MANAGED
    clean_root "$w"
    in_root "$w" python3 -c 'import platform; print(platform.python_version())' >"$CACHE/python-version.tmp"
    remove "$PYTHON_ROOT"
    mkdir -p "$ROOTFS"
    mv "$w" "$PYTHON_ROOT"
    mv "$CACHE/python-version.tmp" "$ROOTFS/python-version"
    echo "$PY_REV" >"$PYTHON_ROOT.rev"
  fi
  REDO_PYTHON=0
  PYTHON_VERSION=$(cat "$ROOTFS/python-version")
}

# The host's CAs that Debian's bundle lacks (a TLS-intercepting proxy's,
# say) become local CAs of the tree, so `pip install` in a build step
# reaches PyPI from wherever the host does; update-ca-certificates keeps
# them if an image rebuilds its bundle.
trust_host_cas() {
  local w=$1 host=/etc/ssl/certs/ca-certificates.crt
  [[ -s $host && -s $w/etc/ssl/certs/ca-certificates.crt ]] || return 0
  python3 - "$host" "$w/etc/ssl/certs/ca-certificates.crt" "$w/usr/local/share/ca-certificates" <<'PY'
import os, re, sys
pem = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)
host, tree, out = sys.argv[1:]
known = set(pem.findall(open(tree).read()))
extra = [c for c in pem.findall(open(host).read()) if c not in known]
os.makedirs(out, exist_ok=True)
for i, c in enumerate(extra):
    with open(os.path.join(out, f"skiff-host-{i}.crt"), "w") as f:
        f.write(c + "\n")
print(f"base-images: {len(extra)} host CA(s) added to the python tree", file=sys.stderr)
PY
  in_root "$w" update-ca-certificates >/dev/null 2>&1 || true
}

build_python() {
  ensure_python_root
  pack docker.io/library/python:3.11-slim "$PYTHON_TAR" "$PYTHON_ROOT" \
    --env LANG=C.UTF-8 --env "PYTHON_VERSION=$PYTHON_VERSION" --cmd '["python3"]'
}

# awslambdaric and its dependencies as cp311 manylinux wheels, downloaded
# once with the host's pip (or, without one, the python tree's).
ensure_wheels() {
  if ((REDO_WHEELS)) || ! compgen -G "$WHEELS/awslambdaric-*.whl" >/dev/null; then
    log "downloading $AWSLAMBDARIC and its dependencies from PyPI"
    local tmp=$WHEELS.tmp
    rm -rf "$tmp"
    mkdir -p "$tmp"
    if python3 -m pip --version >/dev/null 2>&1; then
      python3 -m pip download -q --disable-pip-version-check --no-cache-dir -d "$tmp" \
        --only-binary=:all: --platform "manylinux2014_$(uname -m)" --python-version 3.11 \
        --implementation cp --abi cp311 "$AWSLAMBDARIC"
    else
      ensure_python_root
      work_copy "$PYTHON_ROOT" pip
      cp /etc/resolv.conf "$WORK/pip/etc/resolv.conf"
      # The host's CAs (a proxy's may be among them) and index settings.
      local pass=(PIP_CERT=/tmp/host-ca.crt) v
      cp /etc/ssl/certs/ca-certificates.crt "$WORK/pip/tmp/host-ca.crt"
      for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST http_proxy https_proxy no_proxy; do
        [[ -z ${!v:-} ]] || pass+=("$v=${!v}")
      done
      in_root "$WORK/pip" "${pass[@]}" python3 -m pip download -q --disable-pip-version-check \
        --no-cache-dir -d /tmp/wheels --only-binary=:all: "$AWSLAMBDARIC"
      mv "$WORK"/pip/tmp/wheels/* "$tmp/"
      remove "$WORK/pip"
    fi
    rm -rf "$WHEELS"
    mv "$tmp" "$WHEELS"
  fi
  REDO_WHEELS=0
}

build_lambda() {
  ensure_python_root
  ensure_wheels
  work_copy "$PYTHON_ROOT" lambda
  local w=$WORK/lambda
  log "installing awslambdaric (the image's pip in a chroot)"
  mkdir -p "$w/tmp/wheels"
  cp "$WHEELS"/*.whl "$w/tmp/wheels/"
  in_root "$w" python3 -m pip install -q --no-index --find-links /tmp/wheels --no-cache-dir \
    --disable-pip-version-check --root-user-action=ignore "$AWSLAMBDARIC"
  rm -rf "$w/tmp/wheels"
  in_root "$w" python3 -c 'import awslambdaric.bootstrap, runtime_client' || {
    log "awslambdaric does not import in the lambda tree"
    exit 1
  }
  mkdir -p "$w/var/task" "$w/var/runtime"
  cat >"$w/lambda-entrypoint.sh" <<'ENTRYPOINT'
#!/bin/sh
# Runs the function with AWS's runtime interface client (awslambdaric),
# which takes invocations from the Runtime API at $AWS_LAMBDA_RUNTIME_API.
# The official image falls back to the runtime interface emulator (RIE)
# when that is unset; this one ships no emulator.
if [ -z "${AWS_LAMBDA_RUNTIME_API:-}" ]; then
  echo "lambda-entrypoint.sh: AWS_LAMBDA_RUNTIME_API is not set and this image has no runtime interface emulator; run it where a Lambda Runtime API is served" >&2
  exit 64
fi
if [ $# -eq 0 ]; then
  echo "lambda-entrypoint.sh: no handler given (CMD [\"module.function\"])" >&2
  exit 64
fi
exec python3 -m awslambdaric "$@"
ENTRYPOINT
  chmod 755 "$w/lambda-entrypoint.sh"
  clean_root "$w"
  pack public.ecr.aws/lambda/python:3.11 "$LAMBDA_TAR" "$w" \
    --env LANG=C.UTF-8 --env "PYTHON_VERSION=$PYTHON_VERSION" --env TZ=:UTC \
    --env LAMBDA_TASK_ROOT=/var/task --env LAMBDA_RUNTIME_DIR=/var/runtime \
    --workdir /var/task --entrypoint '["/lambda-entrypoint.sh"]'
  remove "$w"
}

if ((todo)); then
  start=$SECONDS
  if wanted debian && need "$DEBIAN_TAR"; then build_debian; fi
  if wanted python && { need "$PYTHON_TAR" || stale "$PYTHON_TAR"; }; then
    build_python
    echo "$PY_REV" >"$PYTHON_TAR.rev"
  fi
  if wanted lambda && { need "$LAMBDA_TAR" || stale "$LAMBDA_TAR"; }; then
    build_lambda
    echo "$PY_REV" >"$LAMBDA_TAR.rev"
  fi
  remove "$WORK"
  log "built in $((SECONDS - start)) s"
fi

for img in debian python lambda; do
  wanted $img || continue
  case $img in
    debian) echo "docker.io/library/debian:bookworm-slim $DEBIAN_TAR" ;;
    python) echo "docker.io/library/python:3.11-slim $PYTHON_TAR" ;;
    lambda) echo "public.ecr.aws/lambda/python:3.11 $LAMBDA_TAR" ;;
  esac
done
