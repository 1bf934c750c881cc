#!/usr/bin/env python3
"""Make small OCI images without any container tool, for tests, the demo and
the benchmarks: a busybox rootfs from Debian's busybox-static, packed as a
`docker save` archive or an OCI image-layout archive, with plain or gzip
layers. Output is deterministic (fixed mtimes), so digests are stable.

    mkimage.py --name NAME:TAG --format docker|oci [--gzip] [--demo] [--cmd JSON] [--binary PATH] OUT.tar

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

BUSYBOX = "/bin/busybox"
MTIME = 1700000000
DEMO_PAGE = b"""<!doctype html>
<title>Skiff</title>
<h1>Hello from Skiff</h1>
<p>This page is served by busybox httpd in a container that Skiff started with crun.</p>
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True, help="reference, e.g. localhost/busybox:latest")
    ap.add_argument("--format", choices=["docker", "oci"], required=True)
    ap.add_argument("--gzip", action="store_true", help="gzip the layer")
    ap.add_argument("--demo", action="store_true", help="add /www and serve it with httpd on $PORT (8080)")
    ap.add_argument("--cmd", help="image Cmd as a JSON array")
    ap.add_argument("--binary", metavar="PATH", help="add PATH as /app with its shared libraries (ldd); Cmd [\"/app\"]")
    ap.add_argument("out")
    a = ap.parse_args()

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

    with tarfile.open(a.out, "w") as out:
        if a.format == "docker":
            layer_path = f"{diff_id[7:]}/layer.tar"
            add_dir(out, diff_id[7:])
            add_file(out, layer_path, blob)
            add_file(out, f"{sha(config_bytes)[7:]}.json", config_bytes)
            manifest = [{"Config": f"{sha(config_bytes)[7:]}.json", "RepoTags": [a.name], "Layers": [layer_path]}]
            add_file(out, "manifest.json", json.dumps(manifest).encode())
        else:
            media = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if a.gzip else "")
            manifest = {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config_bytes), "size": len(config_bytes)},
                "layers": [{"mediaType": media, "digest": sha(blob), "size": len(blob)}],
            }
            manifest_bytes = json.dumps(manifest, separators=(",", ":")).encode()
            index = {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [{
                    "mediaType": manifest["mediaType"],
                    "digest": sha(manifest_bytes),
                    "size": len(manifest_bytes),
                    "annotations": {"org.opencontainers.image.ref.name": a.name},
                }],
            }
            add_file(out, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
            add_file(out, "index.json", json.dumps(index).encode())
            add_dir(out, "blobs")
            add_dir(out, "blobs/sha256")
            for data in (config_bytes, blob, manifest_bytes):
                add_file(out, f"blobs/sha256/{sha(data)[7:]}", data)


if __name__ == "__main__":
    main()
