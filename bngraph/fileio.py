"""Atomic file writes: a temporary file in the same folder, flushed, then renamed over the target.

A crash mid-write leaves the old file intact and no half-written file under the target's name;
the temporary file is removed on any error. The new file gets the mode an ordinary ``open`` would
give it (0o666 less the umask), not mkstemp's private 0o600.
"""
from __future__ import annotations

import os
import tempfile


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def atomic_write(path, write, binary: bool = True) -> str:
    """Call ``write(f)`` on a temporary file, then rename it to ``path``. Returns the path."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
