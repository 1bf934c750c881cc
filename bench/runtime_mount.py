"""The OCI runtime as Skiff runs it: from a read-only bind mount of its
binary, with _LIBCONTAINER_CLONED_BINARY=1 (see `read_only_mount` in
crates/skiff-runtime/src/oci.rs), which crun takes as already safe and so
skips the self-copy and re-exec it otherwise makes at every start.
bench/start and bench/serving time a floor run this way too."""

import atexit
import os
import shutil
import subprocess
import tempfile

ENV = {**os.environ, "_LIBCONTAINER_CLONED_BINARY": "1"}


def read_only_mount(binary):
    """A path to exec `binary` from, as Skiff does (run it with env=ENV);
    unmounted when the bench exits."""
    work = tempfile.mkdtemp(prefix="skiff-bench-runtime.")
    path = os.path.join(work, os.path.basename(binary))
    open(path, "w").close()
    subprocess.run(["mount", "--bind", binary, path], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", path], check=True)

    def cleanup():
        subprocess.run(["umount", "-l", path], check=False)
        shutil.rmtree(work, ignore_errors=True)

    atexit.register(cleanup)
    return path
