"""The published DETR-R50 checkpoint file, ``detr-r50-e632da11.pth``: where it lives, its size and hashes, and the
check that a file by its name is that file.

Where the numbers come from: the hex in the file name, ``e632da11``, is the start of its SHA-256 (torch hub's naming
convention); the authors publish no full hash. The size (166,618,694 bytes) and the SHA-384 are Intel's Open Model
Zoo's record of the same URL (``openvinotoolkit/open_model_zoo``, ``models/public/detr-resnet50/model.yml``), an
independent public download manifest. The download (:mod:`detr_nb_utils.data.download`) checks all three, and so does
every load of a file by this name (:func:`check_official`, through :func:`.checkpoint.read_checkpoint`), so a file
damaged or replaced after its download is named before its weights are used.

Imports nothing but the standard library: the download command needs no torch.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

#: the command that fetches the official file (resumable, checked)
GET_IT = "python -m detr_nb_utils.data.download checkpoint --dest data/checkpoints"


@dataclass(frozen=True)
class OfficialFile:
    """A published file: its name, URL, size in bytes, SHA-384 (hex) and the SHA-256 prefix of its name."""

    name: str
    url: str
    size: int
    sha384: str
    sha256_prefix: str


OFFICIAL = OfficialFile(
    name="detr-r50-e632da11.pth", url="https://dl.fbaipublicfiles.com/detr/detr-r50-e632da11.pth",
    size=166_618_694,
    sha384="cba2c4acb7c6ec60e0d56dbd7bfb0dab73aef5ac86bf9819bc4e176fd943114fb1e5567e5046dc6d6a18b7e490dce680",
    sha256_prefix="e632da11")

# files already found to be the official one in this process: (path, size, mtime_ns, inode)
_VERIFIED: set[tuple[str, int, int, int]] = set()


def file_problem(path: str | os.PathLike, official: OfficialFile | None = None) -> str | None:
    """What is wrong with ``path`` as a copy of ``official`` (default :data:`OFFICIAL`: size, SHA-384, SHA-256
    prefix), or None when it is that file. One read of the file feeds both hashes (about 0.3-0.5 s for the 166 MB
    checkpoint)."""
    official = official or OFFICIAL
    size = os.stat(path).st_size
    if size != official.size:
        return f"it has {size:,} bytes, the published file {official.size:,}"
    sha384, sha256 = hashlib.sha384(), hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            sha384.update(chunk)
            sha256.update(chunk)
    if sha384.hexdigest() != official.sha384:
        return f"its SHA-384 is {sha384.hexdigest()[:16]}…, the published file's {official.sha384[:16]}…"
    if not sha256.hexdigest().startswith(official.sha256_prefix):
        return f"its SHA-256 is {sha256.hexdigest()[:16]}…, the published file's starts {official.sha256_prefix}"
    return None


def check_official(path: str | os.PathLike, official: OfficialFile | None = None) -> str | None:
    """:func:`file_problem` of a file named ``official.name`` (default :data:`OFFICIAL`), hashed once per process
    per file (a file whose size, modification time or inode changed is hashed again); None for any other name."""
    official, path = official or OFFICIAL, Path(path)
    if path.name != official.name:
        return None
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key in _VERIFIED:
        return None
    problem = file_problem(path, official)
    if problem is None:
        _VERIFIED.add(key)
    return problem
