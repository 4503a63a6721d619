"""One run folder, one process: the lock a run holds on its folder from its start to its end.

``<run folder>/run.lock`` names the process that trains in the folder (process id, host, start time), and that
process holds an exclusive ``flock`` on it, which the operating system drops when the process ends, however it
ends. A second process starting the same folder is refused with :class:`RunFolderLocked`, naming the holder; a lock
file whose lock nobody holds was left by a process that died (killed, or its machine stopped) and is taken over
with a :class:`StaleRunLock` warning. The file is removed when the run ends or fails. Taken by
:func:`.engine.run_experiment` (rank 0 under torchrun, which alone writes the folder).

Locks reach across machines where the file system passes ``flock`` on (local disks; NFS v4); on one that cannot lock
at all the run goes on with a warning, unguarded.
"""
from __future__ import annotations

import json
import os
import socket
import warnings
from datetime import datetime, timezone
from pathlib import Path

from ..data import atomic

try:
    import fcntl
except ImportError:  # not on Windows
    fcntl = None

#: the lock file inside the run folder
LOCK = "run.lock"


class RunFolderLocked(RuntimeError):
    """Another process is running in the run folder."""


class StaleRunLock(UserWarning):
    """The run folder's lock file was left by a process that is no longer running; it has been taken over."""


def _describe(holder: dict) -> str:
    if not holder:
        return "another process (it has not written its name yet)"
    return f"process {holder.get('pid')} on host {holder.get('host')!r} (since {holder.get('started')})"


def _read(fd: int) -> dict:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
    except (ValueError, UnicodeDecodeError):
        return {"pid": "?", "host": "?", "started": "? (an unreadable lock file)"}
    return holder if isinstance(holder, dict) else {}


class RunLock:
    """The exclusive lock on ``run_dir`` (created when missing, and removed again at release, with the folders made
    for it, when the run left it empty). Use as a context manager, or :meth:`acquire` and :meth:`release`."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self._fd: int | None = None
        self._made: list[Path] = []  # the folders acquire created, deepest first

    def acquire(self) -> RunLock:
        """Take the lock; raises :class:`RunFolderLocked` naming the holder when another process has it."""
        self._made = [p for p in (self.run_dir, *self.run_dir.parents) if not p.exists()]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            warnings.warn(f"file locks are not available on this platform: nothing stops a second process from "
                          f"running in {self.run_dir} at the same time", RuntimeWarning, stacklevel=2)
            return self
        fd = self._locked_fd()
        if fd is None:
            return self
        left = _read(fd)
        if left:
            warnings.warn(f"{self.path}: taking over the lock of {_describe(left)}, which is no longer running (it "
                          f"ended without releasing it: killed, or its machine stopped). What it finished is kept: "
                          f"this run resumes from the folder's last finished epoch, if any.", StaleRunLock,
                          stacklevel=2)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode("utf-8"), 0)
        except OSError as e:  # a full disk: name the file and the space left
            self.release()
            raise atomic.write_failure(self.path, e) from e
        return self

    def _locked_fd(self) -> int | None:
        """An open descriptor of the lock file, locked; None where the file system cannot lock (warned)."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                os.close(fd)
                raise RunFolderLocked(f"{self.run_dir} is in use by {_describe(holder)}: one run folder trains in "
                                      f"one process at a time. Wait for it to finish (or stop it), or choose "
                                      f"another run_name.") from None
            except OSError as e:
                os.close(fd)
                os.unlink(self.path)
                warnings.warn(f"cannot lock {self.path} ({e.strerror}: the file system does not support locks): "
                              f"nothing stops a second process from running in {self.run_dir} at the same time",
                              RuntimeWarning, stacklevel=3)
                return None
            try:  # the holder may have released (removed the file) between this open and this lock: start again
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)

    def release(self) -> None:
        """Remove the lock file and drop the lock (the file first: a process waiting on this file then retries)."""
        if self._fd is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None
        for folder in self._made:  # only those the run left empty (it failed before starting)
            try:
                folder.rmdir()
            except OSError:
                break
        self._made = []

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
