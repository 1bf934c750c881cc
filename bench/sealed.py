"""The OCI runtime as Skiff runs it: from a sealed in-memory copy of its
binary (see `sealed` in crates/skiff-runtime/src/oci.rs), which crun takes
as already safe and so skips the self-copy and re-exec it otherwise makes at
every start. bench/start and bench/serving time a floor run this way too."""

import fcntl
import os

F_ADD_SEALS = 1033
SEALS = 0x1 | 0x2 | 0x4 | 0x8  # seal, shrink, grow, write: exactly what crun checks


def sealed_copy(binary):
    """A descriptor of `binary`'s sealed copy; exec it as /proc/self/fd/N
    (pass it to the child with pass_fds)."""
    fd = os.memfd_create(os.path.basename(binary), os.MFD_ALLOW_SEALING)
    with open(binary, "rb") as f:
        data = memoryview(f.read())
    while data:
        data = data[os.write(fd, data):]
    fcntl.fcntl(fd, F_ADD_SEALS, SEALS)
    return fd
