"""The one image reader: validation (:mod:`.validate`), training and evaluation (:class:`.coco.CocoDetection`),
predict (:mod:`detr_nb_utils.training.inference`) and the notebooks' figures read every image file through
:func:`read_image`, so what validates is exactly what trains.

It never takes the process down for one bad file, and says which file and why:

- the file is opened with PIL, which reads only the header; a header claiming more than ``max_pixels`` pixels
  (:data:`MAX_PIXELS`) is refused before any pixel is decoded (a 30000 x 30000 JPEG costs milliseconds, not GBs);
- then the whole image is decoded, and a file whose data ends early is refused, whatever
  ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` a notebook set;
- every mode becomes 8-bit RGB: 16-bit grayscale (``I;16``, ``I``: 0..65535 scaled to 0..255), palette (``P``,
  ``PA``), grayscale, CMYK, and alpha dropped (``RGBA``, ``LA``) as torchvision's RGB decoding drops it;
- EXIF orientation is ignored, as COCO's annotations ignore it (the width and height are the stored ones);
- file names that are not UTF-8 are read (Python keeps their bytes) and shown with ``\\xNN`` escapes.

On JPEGs the pixels equal torchvision's ``decode_image`` (libjpeg-turbo in both; ``benchmarks/RESULTS.md``,
"Pixel path"). :func:`image_file` joins an image folder and a ``file_name`` and refuses names that lead outside the
folder (``..``, absolute paths, symlinks pointing out).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageFile

#: the most pixels (width x height) an image may have: 64 megapixels, e.g. 8192 x 8192 (192 MiB as RGB). DETR
#: resizes every image to a shorter side of 800 at most, so bigger files only cost memory; PIL's own bomb check
#: warns from 89 megapixels.
MAX_PIXELS = 64 * 2**20
#: the file suffixes taken for images when a folder is expanded (``python -m detr_nb_utils.predict photos/``)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageReadError(ValueError):
    """An image file that cannot be read: ``path``, ``reason`` (what is wrong, without the path); the message
    names both."""

    def __init__(self, path: str | os.PathLike | BinaryIO, reason: str) -> None:
        if not isinstance(path, (str, os.PathLike)):  # an open file: its name, if it has one
            path = getattr(path, "name", None) or "<in-memory image>"
        super().__init__(f"image {shown(path)}: {reason}")
        self.path, self.reason = Path(path), reason


def shown(path: str | os.PathLike) -> str:
    """``path`` as text that prints anywhere: bytes of a non-UTF-8 file name as ``\\xNN`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def image_file(image_dir: str | os.PathLike, file_name: str) -> Path:
    """``image_dir / file_name``; :class:`ImageReadError` when it resolves outside ``image_dir`` (a ``..``, an
    absolute path, or a symlink pointing out of the folder), so a dataset reads only the files of its folder."""
    folder = Path(image_dir)
    path = folder / file_name
    if not path.resolve().is_relative_to(folder.resolve()):
        raise ImageReadError(path, f"its file_name {shown(file_name)!r} leads outside the image folder "
                                   f"{shown(folder)}; copy the file into the folder or fix the file_name")
    return path


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header alone (no pixel decoded); :class:`ImageReadError`
    as :func:`read_image` for a file that is missing or not an image."""
    path = _existing(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.size
    except Image.DecompressionBombError as e:
        raise ImageReadError(path, f"its header claims too many pixels to decode ({e})") from None
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ... for a broken header
        raise ImageReadError(path, f"not an image file PIL can read ({type(e).__name__}: {e})") from None


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "no such file")
    if not path.is_file():
        raise ImageReadError(path, "not a file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "empty file")
    return path


def read_image(path: str | os.PathLike | BinaryIO, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """The pixels of an image file (or of an open binary file, e.g. an encoded image in ``io.BytesIO``) as 8-bit
    RGB, uint8 ``[3, H, W]`` (H, W: the stored size, EXIF ignored).

    Raises :class:`ImageReadError` naming the file and the reason: missing, not a file, empty, not an image,
    more than ``max_pixels`` pixels by its header (refused before decoding), truncated or corrupt data, a mode
    with no 8-bit RGB meaning (32-bit float).
    """
    if isinstance(path, (str, os.PathLike)):
        path = _existing(path)
    truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a file whose data ends early is refused, not padded with grey
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below decides
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageReadError(path, f"its header says {w} x {h} pixels ({w * h / 1e6:.0f} megapixels), "
                                               f"more than the limit of {max_pixels / 1e6:.0f} (max_pixels); "
                                               f"downscale it")
                im.load()
                return _rgb(im, path)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageReadError(path, f"its header claims too many pixels to decode ({e})") from None
    except Image.UnidentifiedImageError:
        raise ImageReadError(path, "not an image file PIL can read") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ... for a broken file
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ImageReadError(path, f"does not decode ({type(e).__name__}: {reason})") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated


def _rgb(im: Image.Image, path: Path | BinaryIO) -> torch.Tensor:
    """uint8 [3, H, W] of a loaded PIL image of any mode."""
    if im.mode in _SIXTEEN_BIT:
        levels = np.clip(np.asarray(im, dtype=np.int64), 0, 65535)
        gray = ((levels * 255 + 32767) // 65535).astype(np.uint8)
        return torch.from_numpy(gray).unsqueeze(0).expand(3, -1, -1).contiguous()
    if im.mode == "F":
        raise ImageReadError(path, "32-bit float pixels (mode F) have no standard 8-bit meaning; save it as 8-bit")
    if im.mode in ("P", "PA"):  # palette colours (and their transparency) first, then alpha is dropped
        im = im.convert("RGBA")
    if im.mode != "RGB":
        im = im.convert("RGB")
    return torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).contiguous()
