"""Writing files so that a crash never leaves half of one: write a temporary file beside it, then rename.

A write that fails (a full disk, a quota, a file-size limit) raises :class:`WriteError`, naming the file and the
space left on its file system; the temporary file is removed and nothing is renamed into place, so the file keeps
what it held before (the last good checkpoint stays intact).

Used for split files (01_data_split), run folders and checkpoints (03-05); downloads have their own resumable
``.part`` files (:mod:`.download`).
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

#: what PyTorch's zip writer says when the bytes it writes do not reach the file (no errno is kept): "unexpected pos
#: N vs M" (it checks its position after each write), or the C++ stream's own error
_TORCH_WRITE_FAILURES = ("unexpected pos", "iostream error", "file write failed", "failed writing")


class WriteError(OSError):
    """A file could not be written (the disk is full, or a quota or size limit was reached); nothing was replaced.

    ``path``: the file; ``free_bytes``: the space left on its file system after the temporary file was removed
    (None where it cannot be read)."""

    def __init__(self, path: Path, reason: str, free_bytes: int | None, code: int | None) -> None:
        free = "unknown" if free_bytes is None else format_bytes(free_bytes)
        super().__init__(code, f"cannot write {path}: {reason}; {free} free on its file system. Nothing was "
                               f"replaced: {path.name} keeps what it held before (if anything). Free some space, or "
                               f"write to a disk with room, and run again")
        self.path, self.free_bytes = path, free_bytes

    def __str__(self) -> str:
        return self.strerror


def format_bytes(n: int) -> str:
    """``n`` bytes as a short size, e.g. ``"812 kB"``, ``"1.5 GB"`` (powers of 1000, as ``df -H``)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free space on the file system that holds (or would hold) ``path``, or None where unknown."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def write_failure(path: str | os.PathLike, error: BaseException) -> WriteError | None:
    """The :class:`WriteError` for ``error``, raised while writing ``path``, when it is a failed write (an
    ``OSError``, or PyTorch's writer reporting one); None for any other error (a bug, which should stay itself)."""
    path = Path(path)
    if isinstance(error, OSError):
        code = error.errno
        reason = {errno.ENOSPC: "no space left on the device", getattr(errno, "EDQUOT", -1): "the disk quota is "
                  "exceeded", errno.EFBIG: "the file is larger than the file system or this process may write"}.get(
            code, error.strerror or str(error))
    elif isinstance(error, RuntimeError) and any(s in str(error) for s in _TORCH_WRITE_FAILURES):
        code = None
        first = str(error).strip().splitlines()[0]
        reason = f"PyTorch's writer could not write all of it ({first!r}), which is what a full disk gives"
    else:
        return None
    return WriteError(path, reason, free_bytes(path.parent), code)


def _replace_via_temp(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)  # before measuring the space left: the user gets what is free now
        failure = write_failure(path, e)
        if failure is None:
            raise
        raise failure from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically replace ``path`` with ``data``."""
    return _replace_via_temp(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    return write_bytes(path, text.encode("utf-8"))


def torch_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path``, atomically."""
    return _replace_via_temp(path, lambda tmp: torch.save(obj, tmp))
