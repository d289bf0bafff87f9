"""Files: atomic writes, checking a destination before a long job, and reading ``.npz`` archives
that may be damaged.

An atomic write goes to a temporary file in the same folder, is flushed, then renamed over the
target: a crash mid-write leaves the old file intact and no half-written file under the target's
name. The temporary file is removed on any error; one left by a killed process
(``NAME.<pid>-<random>.bngraph-tmp``, matched by ``.gitignore``) is removed by the next write of
the same target once its process is gone. The new file gets the mode an ordinary ``open`` would
give it (0o666 less the umask), not mkstemp's private 0o600.
"""
from __future__ import annotations

import errno
import os
import tempfile
import time
import zipfile
import zlib

import numpy as np
import numpy.lib.format as npformat

TMP_SUFFIX = ".bngraph-tmp"
STALE_AFTER_S = 24 * 3600  # where a process's liveness cannot be asked (not POSIX): the age of a stale file


class NpzError(ValueError):
    """A file that is not a readable ``.npz`` archive; the message says why (no file name: the
    caller adds it, with its own error class). ``key``: the array that could not be read, if one."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists (someone else's), or we cannot tell: keep its file
    return True


def _stale_temporaries(folder: str, base: str) -> list:
    """Temporary files of earlier writes of ``base`` whose process is gone."""
    prefix, out = base + ".", []
    try:
        names = os.listdir(folder)
    except OSError:
        return out
    for name in names:
        if not (name.startswith(prefix) and name.endswith(TMP_SUFFIX)):
            continue
        tag = name[len(prefix):-len(TMP_SUFFIX)]
        pid = tag.split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue  # not ours to judge (our own are removed by the write that made them)
        path = os.path.join(folder, name)
        if os.name == "posix":
            stale = not _pid_alive(int(pid))
        else:
            try:
                stale = time.time() - os.path.getmtime(path) > STALE_AFTER_S
            except OSError:
                continue
        if stale:
            out.append(path)
    return out


def _naming(e: OSError, path: str) -> OSError:
    """``e`` as the same kind of OSError whose message names ``path`` (not a temporary file)."""
    err = type(e)(f"cannot write {path}: {e.strerror or e}")
    err.errno = e.errno
    return err


def atomic_write(path, write, binary: bool = True, make_folder: bool = False) -> str:
    """Call ``write(f)`` on a temporary file, then rename it to ``path``. Returns the path.
    An OSError names ``path`` (not the temporary file). The folder must exist, unless
    ``make_folder`` (a writer whose destination is a folder: ``--out DIR``, ``save(folder)``)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    try:
        if make_folder:
            os.makedirs(folder, exist_ok=True)
        elif not os.path.isdir(folder):
            raise FileNotFoundError(errno.ENOENT, _no_folder(folder))
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, "it is a folder")
        fd, tmp = tempfile.mkstemp(prefix=f"{base}.{os.getpid()}-", suffix=TMP_SUFFIX, dir=folder)
    except OSError as e:  # name the target, not a temporary file
        raise _naming(e, path) from None
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):  # disk full, a quota...: one line naming the target
            raise _naming(e, path) from None
        raise
    for stale in _stale_temporaries(folder, base):
        try:
            os.unlink(stale)
        except OSError:
            pass  # gone already, or not ours to remove
    return path


def _no_folder(folder: str) -> str:
    return f"the folder {folder} does not exist (make it first)"


def check_writable(path, what: str = "", make_folder: bool = False) -> str:
    """Raise an OSError naming ``path`` (and ``what``, e.g. '--save') if it could not be written
    now: its folder must exist (``make_folder``: or the nearest existing ancestor, which
    :func:`atomic_write` will make it in) and be writable, and the path itself must not be a
    folder. Nothing is created."""
    path = os.fspath(path)
    label = f"{what} {path}" if what else path
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {label}: it is a folder")
    folder = os.path.dirname(os.path.abspath(path))
    if not make_folder and not os.path.exists(folder):
        raise FileNotFoundError(f"cannot write {label}: {_no_folder(folder)}")
    probe = folder
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise NotADirectoryError(f"cannot write {label}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {label}: no permission to write in {probe}")
    if os.path.exists(path) and not os.access(path, os.W_OK) and not os.access(folder, os.W_OK):
        raise PermissionError(f"cannot write {label}: permission denied")
    return path


# ---- reading .npz archives that may be damaged -----------------------------------------------

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members; an empty zip
NPY_MAGIC = b"\x93NUMPY"

#: The most bytes :func:`read_npz` inflates from one archive; None: the memory available when it
#: is read (a few MiB of compressed zeros can claim any size: a zip bomb is refused, not inflated).
NPZ_LIMIT: int | None = None

_CHUNK = 1 << 20  # members are inflated this much at a time, straight into their arrays


def _available_memory() -> int | None:
    """The memory the OS could give this process now (Linux: MemAvailable), else the physical
    memory, else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def npz_limit() -> int | None:
    """The bytes one archive may inflate to: :data:`NPZ_LIMIT`, or the memory available now."""
    return NPZ_LIMIT if NPZ_LIMIT is not None else _available_memory()


def _size(n: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} bytes"


class NpzTooLarge(NpzError):
    """An archive (or one member) that would inflate beyond :func:`npz_limit`: refused before."""


def _too_large(what: str, n: int, limit: int, key=None) -> NpzTooLarge:
    why = "bngraph.fileio.NPZ_LIMIT" if NPZ_LIMIT is not None else \
        "the memory available now; bngraph.fileio.NPZ_LIMIT sets another limit"
    return NpzTooLarge(f"{what} would inflate to {_size(n)}, more than the {_size(limit)} allowed ({why}); "
                       f"nothing was inflated", key)


def read_npz(path, limit: int | None = None) -> dict:
    """``{key: array}`` of the ``.npz`` archive at ``path``, every member read and checked, or an
    NpzError saying what is wrong: empty, not a zip archive, a single ``.npy``, truncated,
    corrupt (a CRC mismatch), an array that needs pickle (object arrays are never loaded), or a
    header that promises more data than the member holds (never allocated).

    Sizes are checked before anything is inflated (a zip bomb is refused, :class:`NpzTooLarge`):
    the sizes the archive declares, then each member's ``.npy`` header, against ``limit`` bytes in
    all (None: :func:`npz_limit`). A member is inflated straight into its array, never beyond what
    its header declares (one holding more is refused), so the memory used is that of the arrays."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except IsADirectoryError:
        raise NpzError("is a folder, not a .npz file") from None
    except OSError as e:
        raise NpzError(f"cannot read it ({e.strerror or e})") from None
    if not head:
        raise NpzError("the file is empty (0 bytes)")
    if head.startswith(NPY_MAGIC):
        raise NpzError("is a single .npy array, expected a .npz archive (np.savez)")
    if not head.startswith(ZIP_MAGIC):
        raise NpzError("not a .npz archive (a .npz is a zip file of .npy arrays, as np.savez writes)")
    limit = npz_limit() if limit is None else limit
    arrays = {}
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            declared = sum(i.file_size for i in infos)
            if limit is not None and declared > limit:
                biggest = max(infos, key=lambda i: i.file_size)
                key = _key(biggest)
                raise _too_large(f"cannot read key {key!r}: it" if biggest.file_size > limit else
                                 f"its {len(infos)} arrays", biggest.file_size if biggest.file_size > limit
                                 else declared, limit, key if biggest.file_size > limit else None)
            left = limit
            for info in infos:
                arrays[_key(info)] = a = _read_member(z, info, left)
                if left is not None:
                    left -= a.nbytes
    except NpzError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError,
            RuntimeError, KeyError, IndexError, OverflowError, MemoryError) as e:
        raise NpzError(f"truncated or corrupt .npz archive ({type(e).__name__}: {e})") from None
    return arrays


def _key(info: zipfile.ZipInfo) -> str:
    return info.filename[:-4] if info.filename.endswith(".npy") else info.filename


def _read_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int | None) -> np.ndarray:
    key = _key(info)
    with z.open(info) as f:  # inflates as it is read; the CRC is checked at the member's end
        try:
            version = npformat.read_magic(f)
            read_header = {(1, 0): npformat.read_array_header_1_0}.get(version, npformat.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
        except ValueError as e:
            raise NpzError(f"cannot read key {key!r}: not a .npy array ({e})", key) from None
        if dtype.hasobject:
            raise NpzError(f"cannot read key {key!r}: it holds Python objects (dtype {dtype}), which need pickle; "
                           f"they are never loaded", key)
        count = int(np.prod(shape, dtype=object))
        nbytes = count * dtype.itemsize
        holds = info.file_size - f.tell()
        if nbytes > holds:
            raise NpzError(f"cannot read key {key!r}: truncated (its header says shape {shape} {dtype}, more than "
                           f"the {holds} bytes it holds)", key)
        if limit is not None and nbytes > limit:
            raise _too_large(f"cannot read key {key!r}: it", nbytes, limit, key)
        flat = np.empty(count, dtype)
        view = memoryview(flat.view(np.uint8) if count else b"").cast("B")
        done = 0
        while done < nbytes:
            n = f.readinto(view[done:done + _CHUNK])
            if not n:
                raise NpzError(f"cannot read key {key!r}: truncated (its header says shape {shape} {dtype}, "
                               f"{nbytes} bytes; it holds {done})", key)
            done += n
        if f.read(1):  # never more than one chunk past what the header declares
            raise NpzError(f"cannot read key {key!r}: it holds more data than its header declares (shape {shape} "
                           f"{dtype}, {nbytes} bytes)", key)
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
