"""Damage made to order for the tests of the readers: bytes flipped inside a checkpoint's tensor data (where
``torch.load`` alone would not notice), a file cut short. Imported as ``from damaged_files import ...`` (``tests/``
is not a package: pytest puts it on the path)."""
from __future__ import annotations

import struct
import zipfile
from pathlib import Path


def flip_entry_bytes(path: Path, n: int = 16) -> None:
    """Invert ``n`` bytes in the middle of the largest entry's data of a PyTorch zip file (a tensor's bytes, not
    the zip's structure), as a bad disk or a bad copy would."""
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    data[start:start + n] = bytes(255 - b for b in data[start:start + n])
    path.write_bytes(bytes(data))


def truncate(path: Path, keep: float = 0.5) -> None:
    """Keep only the first ``keep`` fraction of ``path``'s bytes, as an interrupted copy or download leaves it."""
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])
