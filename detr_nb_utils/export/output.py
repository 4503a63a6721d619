"""Where an export is written: into a temporary sibling first, renamed into place only once it is complete and
checked, so an interrupted or failed export never leaves a half-written model where a user (or the Hub) would pick
it up; and the error every export step raises.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


class ExportError(RuntimeError):
    """An export that cannot be made or did not check out; the message names the input or output and the fix."""


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """A temporary folder beside ``out`` to write into; on success it replaces ``out`` (a folder that exists is
    refused unless empty or ``overwrite``), on an exception it is deleted and ``out`` is left as it was."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file; the Hugging Face export writes a folder: choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} already exists; choose another --out, or pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staged_file(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """A temporary file name beside ``out`` to write to; renamed to ``out`` on success, deleted on an exception."""
    out = Path(out)
    if out.is_dir():
        raise ExportError(f"{out} is a folder; the ONNX export writes one file: pass a file name like model.onnx")
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; choose another --out, or pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
