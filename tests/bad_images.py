"""Image files a user may hand the project, made small by the tests: cut short, a header claiming 30000 x 30000
pixels, 16-bit, palette, TIFF, a BMP named .jpg, a name that is not UTF-8. Imported as ``from bad_images import
...`` (``tests/`` is not a package: pytest puts it on the path)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

#: a file name whose bytes are not UTF-8 (Latin-1 "café"), as Python spells it on a POSIX file system
NON_UTF8_NAME = os.fsdecode(b"caf\xe9.jpg")


def pixels(w: int, h: int, seed: int = 0) -> np.ndarray:
    """Smooth random RGB pixels, uint8 [h, w, 3] (smooth, so JPEG keeps them close)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 216, size=(3,))
    ramp = np.linspace(-30, 30, w)[None, :, None] + np.linspace(-20, 20, h)[:, None, None]
    return np.clip(base + ramp, 0, 255).astype(np.uint8)


def jpeg(path: Path, w: int = 40, h: int = 30, seed: int = 0) -> Path:
    Image.fromarray(pixels(w, h, seed)).save(path, quality=95)
    return path


def truncated_png(path: Path, w: int = 64, h: int = 48) -> Path:
    """A PNG whose image data ends early (the first 60% of its bytes): its header is whole, its pixels are not."""
    Image.fromarray(np.random.default_rng(1).integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    return path


def huge_header_jpeg(path: Path, side: int = 30000) -> Path:
    """A 1 kB JPEG whose header (SOF0) claims ``side`` x ``side`` pixels: a reader that trusts it allocates
    3 * side**2 bytes before finding out that the data is not there."""
    jpeg(path, 16, 16)
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = side.to_bytes(2, "big") * 2  # height, then width
    path.write_bytes(bytes(data))
    return path


def png16(path: Path, w: int = 40, h: int = 30) -> Path:
    """A 16-bit grayscale PNG, a left-to-right ramp over the whole 0..65535 range."""
    ramp = np.tile(np.linspace(0, 65535, w).round().astype(np.uint16), (h, 1))
    Image.fromarray(ramp).save(path)  # uint16 arrays become mode I;16
    return path


def tiff(path: Path, w: int = 40, h: int = 30, seed: int = 0) -> Path:
    Image.fromarray(pixels(w, h, seed)).save(path, format="TIFF")
    return path


def bmp_named_jpg(path: Path, w: int = 40, h: int = 30, seed: int = 0) -> Path:
    """A BMP file whose name ends in .jpg, as a renamed download gives."""
    Image.fromarray(pixels(w, h, seed)).save(path, format="BMP")
    return path
