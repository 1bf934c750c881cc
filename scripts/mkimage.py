#!/usr/bin/env python3
"""Make small OCI images without any container tool, for tests, the demo and
the benchmarks: a busybox rootfs from Debian's busybox-static, packed as a
`docker save` archive or an OCI image-layout archive, with plain or gzip
layers. Output is deterministic (fixed mtimes), so digests are stable.

    mkimage.py --name NAME:TAG --format docker|oci [--gzip] [--demo] [--cmd JSON] [--binary PATH] OUT.tar
    mkimage.py --name NAME:TAG --format docker --base BASE.tar --add SRC:DEST... [--cmd JSON] OUT.tar

With --rootfs DIR it packs a directory instead (a debootstrap'd Debian, for
scripts/base-images.sh) as the image's one layer, streamed through temporary
files next to OUT, with the config from --entrypoint/--cmd/--env/--workdir:

    mkimage.py --name NAME:TAG --format docker|oci [--gzip] --rootfs DIR
               [--entrypoint JSON] [--cmd JSON] [--env K=V]... [--workdir DIR] OUT.tar

--binary PATH adds the executable PATH as /app, with every shared library
`ldd PATH` names and the dynamic loader at their paths, and makes Cmd
["/app"] (bench/serving packs its keep-alive HTTP server this way).
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time

BUSYBOX = "/bin/busybox"
MTIME = 1700000000
DEMO_PAGE = b"""<!doctype html>
<title>Skiff</title>
<h1>Hello from Skiff</h1>
<p>This page is served by busybox httpd in a container that Skiff started with crun.</p>
"""

# CGI programs busybox httpd runs, for the tests: a slow response
# (/cgi-bin/sleep?SECONDS), a request body counted (/cgi-bin/count), the
# request's headers as the instance saw them (/cgi-bin/env).
DEMO_CGI = {
    "sleep": b"""#!/bin/sh
sleep "${QUERY_STRING:-1}"
printf 'Content-Type: text/plain\r\n\r\nslept %s\n' "${QUERY_STRING:-1}"
""",
    "count": b"""#!/bin/sh
n=$(wc -c | tr -d ' ')
printf 'Content-Type: text/plain\r\n\r\n%s\n' "$n"
""",
    "env": b"""#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
env | grep '^HTTP_' | sort
""",
}
# Run by `nc -ll -p PORT -e /bin/upgrade-echo`: reads a request head,
# switches protocols (Upgrade: echo), then echoes what it receives.
UPGRADE_ECHO = b"""#!/bin/sh
while read -r line; do [ "${#line}" -le 1 ] && break; done
printf 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n'
exec cat
"""

# Run by `nc -ll -p PORT -e /bin/keepalive-count`, once per connection:
# answers every request on its connection (HTTP/1.1, kept alive) with how
# many connections the server has had so far.
KEEPALIVE_COUNT = b"""#!/bin/sh
echo >> /tmp/connections
n=$(wc -l < /tmp/connections | tr -d ' ')
while read -r line; do
  while read -r h; do [ "${#h}" -le 1 ] && break; done
  printf 'HTTP/1.1 200 OK\r\nContent-Length: %s\r\n\r\n%s' "${#n}" "$n"
done
"""

# A Lambda custom runtime (the Runtime API with busybox wget), for the
# tests: answers {"echo": EVENT, "function": NAME}; an event with
# "fail" posts an error, "sleep" sleeps 30 s (past any test timeout),
# "exit" exits mid-invocation, "print" prints a log line first, "shaped"
# answers an HTTP response (statusCode, headers, cookies, body), "big"
# answers 7 MB (over Lambda's 6 MB), "badjson" answers text, "wrongid"
# first posts a result for an id that is not outstanding.
LAMBDA_ECHO = b"""#!/bin/sh
api="http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime"
echo "init $AWS_LAMBDA_FUNCTION_NAME handler=$_HANDLER"
while true; do
  event=$(wget -q -S -O - "$api/invocation/next" 2>/tmp/headers) || exit 1
  id=$(sed -n 's/^ *[Ll]ambda-[Rr]untime-[Aa]ws-[Rr]equest-[Ii]d: *//p' /tmp/headers | tr -d '\r')
  case "$event" in
    *print*) echo "handling $id" ;;
  esac
  case "$event" in
    *fail*) wget -q -O /dev/null --header 'Lambda-Runtime-Function-Error-Type: Unhandled' \
              --post-data '{"errorMessage":"asked to fail","errorType":"EchoError"}' "$api/invocation/$id/error" ;;
    *shaped*) wget -q -O /dev/null --post-data '{"statusCode":201,"headers":{"x-fn":"yes"},"cookies":["a=1"],"body":"made"}' "$api/invocation/$id/response" ;;
    *badjson*) wget -q -O /dev/null --post-data 'this is not json' "$api/invocation/$id/response" ;;
    *wrongid*) wget -q -O /dev/null --post-data '{}' "$api/invocation/not-$id/response"
               wget -q -O /dev/null --post-data '{"after":"wrongid"}' "$api/invocation/$id/response" ;;
    *sleep*) sleep 30 ;;
    *big*) # 8 MiB of "a" by doubling: cat moves it in big blocks, where
           # tr went byte by byte and took seconds on a loaded machine.
           printf a > /tmp/big
           for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23; do
             cat /tmp/big /tmp/big > /tmp/big2 && mv /tmp/big2 /tmp/big
           done
           wget -q -O /dev/null --post-file /tmp/big "$api/invocation/$id/response" ;;
    *exit*) exit 3 ;;
    *) wget -q -O /dev/null --post-data "{\\"echo\\":$event,\\"function\\":\\"$AWS_LAMBDA_FUNCTION_NAME\\"}" "$api/invocation/$id/response" ;;
  esac
done
"""


def add_file(tar, path, data, mode=0o644):
    info = tarfile.TarInfo(path)
    info.size = len(data)
    info.mode = mode
    info.mtime = MTIME
    tar.addfile(info, io.BytesIO(data))


def add_dir(tar, path, mode=0o755):
    info = tarfile.TarInfo(path)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    info.mtime = MTIME
    tar.addfile(info)


def add_symlink(tar, path, target):
    info = tarfile.TarInfo(path)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    info.mode = 0o777
    info.mtime = MTIME
    tar.addfile(info)


def ldd_paths(binary):
    """The shared libraries and the loader `ldd` names for binary, as absolute paths."""
    # A static binary: ldd says "not a dynamic executable", exits 1, names nothing.
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False).stdout
    paths = []
    for line in out.splitlines():
        words = line.split()
        if "=>" in words:
            words = words[words.index("=>") + 1:]
        if words and words[0].startswith("/"):
            paths.append(words[0])
    return paths


def add_parents(tar, path, have):
    parts = path.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        d = "/".join(parts[:i])
        if d not in have:
            have.add(d)
            add_dir(tar, d)


def busybox_layer(demo, binary=None):
    if not os.path.exists(BUSYBOX):
        sys.exit(f"mkimage: {BUSYBOX} is missing: apt-get install busybox-static")
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ["bin", "dev", "etc", "proc", "sys", "tmp", "root", "home", "var", "usr", "usr/bin"]:
            add_dir(tar, d, 0o1777 if d == "tmp" else 0o755)
        with open(BUSYBOX, "rb") as f:
            add_file(tar, "bin/busybox", f.read(), 0o755)
        for a in sorted(set(applets)):
            if a != "busybox":
                add_symlink(tar, f"bin/{a}", "busybox")
        add_symlink(tar, "usr/bin/env", "../../bin/busybox")
        add_file(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1000:app:/home/app:/bin/sh\n")
        add_file(tar, "etc/group", b"root:x:0:\nnogroup:x:65534:\napp:x:1000:\nstaff:x:50:app\n")
        add_dir(tar, "home/app")
        if demo:
            add_dir(tar, "www")
            add_file(tar, "www/index.html", DEMO_PAGE)
            add_dir(tar, "www/cgi-bin")
            for name, script in DEMO_CGI.items():
                add_file(tar, f"www/cgi-bin/{name}", script, 0o755)
            add_file(tar, "bin/upgrade-echo", UPGRADE_ECHO, 0o755)
            add_file(tar, "bin/keepalive-count", KEEPALIVE_COUNT, 0o755)
            add_file(tar, "bin/lambda-echo", LAMBDA_ECHO, 0o755)
        if binary:
            with open(binary, "rb") as f:
                add_file(tar, "app", f.read(), 0o755)
            have = {"bin", "dev", "etc", "proc", "sys", "tmp", "root", "home", "var", "usr", "usr/bin"}
            for lib in sorted(set(ldd_paths(binary))):
                rel = lib.lstrip("/")
                add_parents(tar, rel, have)
                with open(lib, "rb") as f:  # the file a symlink names, as a plain file
                    add_file(tar, rel, f.read(), 0o755)
    return buf.getvalue()


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- --rootfs: a directory packed as one layer ------------------------------

# Their contents come from the runtime, never from an image.
ROOTFS_SKIP_CONTENTS = {"dev", "proc", "sys"}
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def add_rootfs_args(ap):
    g = ap.add_argument_group("directory images (--rootfs)")
    g.add_argument("--rootfs", metavar="DIR", help="pack DIR as the one layer (its dev/, proc/, sys/ stay empty)")
    g.add_argument("--entrypoint", help="image Entrypoint as a JSON array (--rootfs)")
    g.add_argument("--env", action="append", default=[], metavar="K=V", help="image Env entry, repeatable; PATH is set by default (--rootfs)")
    g.add_argument("--workdir", default="/", help="image WorkingDir (--rootfs)")


class HashingWriter:
    """A write-only file that hashes what passes through to `inner`."""

    def __init__(self, inner):
        self.inner = inner
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data):
        self.hash.update(data)
        self.size += len(data)
        return self.inner.write(data)

    def flush(self):
        pass

    def digest(self):
        return "sha256:" + self.hash.hexdigest()


def rootfs_entries(root):
    """(path, arcname) for everything under root, parents first, sorted."""
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel in ROOTFS_SKIP_CONTENTS:
            dirnames[:] = []
            filenames = []
        dirnames.sort()
        # os.walk lists symlinks to directories as directories; they are
        # packed as links here and not descended into (followlinks=False).
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            yield path, os.path.normpath(os.path.join(rel, name))


def write_rootfs_layer(root, out, compress):
    """Packs root into out (a file); returns (diff_id, blob digest, blob size)."""
    blob = HashingWriter(out)
    gz = gzip.GzipFile(fileobj=blob, mode="wb", compresslevel=6, mtime=0) if compress else None
    diff = HashingWriter(gz if gz else blob)
    with tarfile.open(fileobj=diff, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path, arcname in rootfs_entries(root):
            info = tar.gettarinfo(path, arcname)
            if info is None:  # a socket
                continue
            info.uname = info.gname = ""
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    if gz:
        gz.close()
    return diff.digest(), blob.digest(), blob.size


def add_path(tar, arcname, path):
    info = tarfile.TarInfo(arcname)
    info.size = os.path.getsize(path)
    info.mode = 0o644
    info.mtime = MTIME
    with open(path, "rb") as f:
        tar.addfile(info, f)


def write_archive(path, name, fmt, config_bytes, diff_id, blob_digest, blob_size, gzipped, add_blob):
    """A one-layer image as a `docker save` or OCI-layout archive at `path`;
    `add_blob(tar, arcname)` writes the layer blob (from memory or a file)."""
    with tarfile.open(path, "w") as out:
        if fmt == "docker":
            layer_path = f"{diff_id[7:]}/layer.tar"
            add_dir(out, diff_id[7:])
            add_blob(out, layer_path)
            add_file(out, f"{sha(config_bytes)[7:]}.json", config_bytes)
            manifest = [{"Config": f"{sha(config_bytes)[7:]}.json", "RepoTags": [name], "Layers": [layer_path]}]
            add_file(out, "manifest.json", json.dumps(manifest).encode())
            return
        media = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if gzipped else "")
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config_bytes), "size": len(config_bytes)},
            "layers": [{"mediaType": media, "digest": blob_digest, "size": blob_size}],
        }
        manifest_bytes = json.dumps(manifest, separators=(",", ":")).encode()
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": manifest["mediaType"],
                "digest": sha(manifest_bytes),
                "size": len(manifest_bytes),
                "annotations": {"org.opencontainers.image.ref.name": name},
            }],
        }
        add_file(out, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add_file(out, "index.json", json.dumps(index).encode())
        add_dir(out, "blobs")
        add_dir(out, "blobs/sha256")
        add_file(out, f"blobs/sha256/{sha(config_bytes)[7:]}", config_bytes)
        add_blob(out, f"blobs/sha256/{blob_digest[7:]}")
        add_file(out, f"blobs/sha256/{sha(manifest_bytes)[7:]}", manifest_bytes)


def rootfs_image(a):
    if not os.path.isdir(a.rootfs):
        sys.exit(f"mkimage: --rootfs {a.rootfs}: not a directory")
    machine = os.uname().machine
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
    env = [DEFAULT_PATH]
    for kv in a.env:
        if "=" not in kv:
            sys.exit(f"mkimage: --env {kv}: expected K=V")
        env = [e for e in env if e.split("=", 1)[0] != kv.split("=", 1)[0]] + [kv]
    config = {"Env": env}
    if a.entrypoint:
        config["Entrypoint"] = json.loads(a.entrypoint)
    if a.cmd:
        config["Cmd"] = json.loads(a.cmd)
    config["WorkingDir"] = a.workdir

    layer_tmp = a.out + ".layer.tmp"
    try:
        with open(layer_tmp, "wb") as f:
            diff_id, blob_digest, blob_size = write_rootfs_layer(a.rootfs, f, a.gzip)
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        image = {
            "created": created,
            "architecture": arch,
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": created, "created_by": f"skiff scripts/mkimage.py --rootfs {a.rootfs}"}],
        }
        config_bytes = json.dumps(image, separators=(",", ":")).encode()
        write_archive(a.out, a.name, a.format, config_bytes, diff_id, blob_digest, blob_size, a.gzip,
                      lambda tar, arcname: add_path(tar, arcname, layer_tmp))
    finally:
        if os.path.exists(layer_tmp):
            os.remove(layer_tmp)


def add_layer_args(ap):
    g = ap.add_argument_group("a layer on an image (--base)")
    g.add_argument("--base", metavar="ARCHIVE", help="a docker-save archive to add one layer to (output: docker format)")
    g.add_argument("--add", action="append", default=[], metavar="SRC:DEST",
                   help="copy the host file SRC to DEST in the new layer, repeatable (--base)")


def layered_image(a):
    """The base archive's layers as they are, plus one layer with the
    --add files; the config gets the new diff_id, and --cmd if given."""
    if a.format != "docker":
        sys.exit("mkimage: --base writes docker archives: use --format docker")
    with tarfile.open(a.base) as base:
        manifest = json.load(base.extractfile("manifest.json"))[0]
        config = json.load(base.extractfile(manifest["Config"]))
        layers = [(p, base.extractfile(p).read()) for p in manifest["Layers"]]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        made = set()
        for spec in a.add:
            src, _, dest = spec.partition(":")
            dest = dest.strip("/")
            if not dest:
                sys.exit(f"mkimage: --add {spec}: expected SRC:DEST")
            add_parents(tar, dest, made)
            with open(src, "rb") as f:
                add_file(tar, dest, f.read(), os.stat(src).st_mode & 0o777)
    layer = buf.getvalue()
    diff_id = sha(layer)
    config["rootfs"]["diff_ids"].append(diff_id)
    config.setdefault("history", []).append({"created": "2023-11-14T22:13:20Z", "created_by": "skiff scripts/mkimage.py --add"})
    if a.cmd:
        config["config"]["Cmd"] = json.loads(a.cmd)
    config_bytes = json.dumps(config, separators=(",", ":")).encode()
    with tarfile.open(a.out, "w") as out:
        paths = []
        for path, data in layers + [(f"{diff_id[7:]}/layer.tar", layer)]:
            add_file(out, path, data)
            paths.append(path)
        add_file(out, f"{sha(config_bytes)[7:]}.json", config_bytes)
        m = [{"Config": f"{sha(config_bytes)[7:]}.json", "RepoTags": [a.name], "Layers": paths}]
        add_file(out, "manifest.json", json.dumps(m).encode())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True, help="reference, e.g. localhost/busybox:latest")
    ap.add_argument("--format", choices=["docker", "oci"], required=True)
    ap.add_argument("--gzip", action="store_true", help="gzip the layer")
    ap.add_argument("--demo", action="store_true", help="add /www and serve it with httpd on $PORT (8080)")
    ap.add_argument("--cmd", help="image Cmd as a JSON array")
    add_rootfs_args(ap)
    add_layer_args(ap)
    ap.add_argument("--binary", metavar="PATH", help="add PATH as /app with its shared libraries (ldd); Cmd [\"/app\"]")
    ap.add_argument("out")
    a = ap.parse_args()
    if a.rootfs:
        return rootfs_image(a)
    if a.base:
        return layered_image(a)

    layer = busybox_layer(a.demo, a.binary)
    diff_id = sha(layer)
    blob = gzip.compress(layer, mtime=0) if a.gzip else layer
    if a.cmd:
        cmd = json.loads(a.cmd)
    elif a.binary:
        cmd = ["/app"]
    elif a.demo:
        cmd = ["sh", "-c", 'httpd -f -v -p "${PORT:-8080}" -h /www & trap "kill $!; exit 0" TERM INT; wait']
    else:
        cmd = ["sh"]
    config = {
        "created": "2023-11-14T22:13:20Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": cmd,
            "WorkingDir": "/",
            **({"ExposedPorts": {"8080/tcp": {}}} if a.demo else {}),
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "skiff scripts/mkimage.py"}],
    }
    config_bytes = json.dumps(config, separators=(",", ":")).encode()

    write_archive(a.out, a.name, a.format, config_bytes, diff_id, sha(blob), len(blob), a.gzip,
                  lambda tar, arcname: add_file(tar, arcname, blob))

if __name__ == "__main__":
    main()
