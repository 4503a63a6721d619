"""The one image reader (detr_nb_utils.data.images): every mode to 8-bit RGB, the pixel limit checked on the header
before any decoding, truncated files refused whatever PIL was told, EXIF ignored, file names kept inside their
folder, and on JPEGs the same pixels as torchvision's decoder, which training used before."""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torchvision.io import ImageReadMode, decode_image, read_file

from bad_images import NON_UTF8_NAME, bmp_named_jpg, huge_header_jpeg, jpeg, pixels, png16, tiff, truncated_png
from detr_nb_utils.data.images import ImageReadError, image_file, image_size, read_image, shown

ROOT = Path(__file__).resolve().parents[1]
COCO_SAMPLE = ROOT / "tests" / "data" / "coco_sample" / "images"


def test_every_mode_becomes_8_bit_rgb(tmp_path):
    rgb = pixels(40, 30)
    cases = {"rgb.png": Image.fromarray(rgb), "rgba.png": Image.fromarray(rgb).convert("RGBA"),
             "gray.png": Image.fromarray(rgb).convert("L"), "la.png": Image.fromarray(rgb).convert("LA"),
             "palette.png": Image.fromarray(rgb).convert("P"), "bilevel.png": Image.fromarray(rgb).convert("1"),
             "cmyk.jpg": Image.fromarray(rgb).convert("CMYK")}
    for name, im in cases.items():
        im.save(tmp_path / name)
    cases["palette_transparent.png"] = cases["palette.png"]  # a palette with a transparent colour
    cases["palette.png"].save(tmp_path / "palette_transparent.png", transparency=0)
    for name, im in cases.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # and quietly: no PIL warning about palettes with transparency
            got = read_image(tmp_path / name)
        assert got.dtype == torch.uint8 and got.shape == (3, 30, 40) and got.is_contiguous(), name
        want = torch.from_numpy(np.array(im.convert("RGBA").convert("RGB"))).permute(2, 0, 1)
        assert (got.int() - want.int()).abs().max() <= (3 if name.endswith(".jpg") else 0), name
    assert torch.equal(read_image(tmp_path / "rgba.png"), read_image(tmp_path / "rgb.png"))  # alpha dropped


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    got = read_image(png16(tmp_path / "deep.png", w=256, h=2))
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    assert got.shape == (3, 2, 256) and torch.equal(got[0], got[2])
    row = got[0, 0]
    assert row[0] == 0 and row[-1] == 255 and row[128] in (128, 129)  # 0..65535 -> 0..255, not clipped at 255
    assert (row[1:].int() - row[:-1].int()).min() >= 0


def test_a_float_image_is_refused_by_name(tmp_path):
    Image.fromarray(np.ones((4, 5), dtype=np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ImageReadError, match=r"float\.tif: 32-bit float pixels \(mode F\)"):
        read_image(tmp_path / "float.tif")


def test_tiff_and_bmp_named_jpg_are_read(tmp_path):
    a, b = read_image(tiff(tmp_path / "a.tif")), read_image(bmp_named_jpg(tmp_path / "b.jpg"))
    assert torch.equal(a, torch.from_numpy(pixels(40, 30)).permute(2, 0, 1)) and torch.equal(a, b)


@pytest.mark.parametrize("load_truncated", [False, True])
def test_a_truncated_file_is_refused_whatever_pil_was_told(tmp_path, monkeypatch, load_truncated):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated)  # as a notebook may set it
    png = truncated_png(tmp_path / "cut.png")
    cut_jpeg = jpeg(tmp_path / "cut.jpg", 200, 150)
    cut_jpeg.write_bytes(cut_jpeg.read_bytes()[:cut_jpeg.stat().st_size // 2])
    for path in (png, cut_jpeg):
        with pytest.raises(ImageReadError, match=rf"{path.name}: does not decode \(OSError: image file is truncated"):
            read_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is load_truncated  # restored


def test_a_header_claiming_too_many_pixels_is_refused_before_decoding(tmp_path, monkeypatch):
    path = huge_header_jpeg(tmp_path / "huge.jpg")

    def no_decoding(self):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageReadError, match=r"huge\.jpg: its header claims too many pixels"):
        read_image(path)  # PIL's own decompression-bomb check, at its default
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # a notebook switched PIL's check off: ours still holds
    with pytest.raises(ImageReadError, match=r"huge\.jpg: its header says 30000 x 30000 pixels \(900 megapixels\), "
                                             r"more than the limit of 67 \(max_pixels\)"):
        read_image(path)
    with pytest.raises(ImageReadError, match=r"says 40 x 30 pixels"):
        read_image(jpeg(tmp_path / "small.jpg"), max_pixels=1000)
    assert image_size(path) == (30000, 30000)  # the header alone, for a quick look


def test_exif_orientation_is_ignored(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees": COCO's annotations are in the stored orientation
    Image.fromarray(pixels(40, 30)).save(tmp_path / "turned.jpg", exif=exif.tobytes(), quality=95)
    assert read_image(tmp_path / "turned.jpg").shape == (3, 30, 40)


def test_a_non_utf8_file_name_is_read_and_shown(tmp_path):
    path = jpeg(tmp_path / NON_UTF8_NAME)
    assert os.fsencode(path).endswith(b"caf\xe9.jpg")
    assert read_image(path).shape == (3, 30, 40)
    path.write_bytes(b"not a picture")
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert "caf\\xe9.jpg: not an image file" in str(err.value) and shown(path).endswith("caf\\xe9.jpg")
    str(err.value).encode("utf-8")  # printable: no lone surrogate left in the message


@pytest.mark.parametrize("make,reason", [(lambda p: None, "no such file"), (lambda p: p.mkdir(), "not a file"),
                                         (lambda p: p.touch(), "empty file"),
                                         (lambda p: p.write_bytes(b"<html>"), "not an image file PIL can read")])
def test_unreadable_files_are_named_with_the_reason(tmp_path, make, reason):
    path = tmp_path / "x.jpg"
    make(path)
    with pytest.raises(ImageReadError, match=rf"image {path}: {reason}") as err:
        read_image(path)
    assert err.value.path == path and err.value.reason.startswith(reason) and isinstance(err.value, ValueError)


def test_an_encoded_image_in_memory_is_read_as_a_file(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(pixels(40, 30)).save(buffer, format="JPEG", quality=90)
    (tmp_path / "same.jpg").write_bytes(buffer.getvalue())
    buffer.seek(0)
    assert torch.equal(read_image(buffer), read_image(tmp_path / "same.jpg"))
    with pytest.raises(ImageReadError, match="<in-memory image>: not an image file"):
        read_image(io.BytesIO(b"nothing"))


def test_file_names_may_not_lead_outside_the_image_folder(tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    outside = jpeg(tmp_path / "secret.jpg")
    jpeg(folder / "sub" / "inside.jpg")
    (folder / "link_out.jpg").symlink_to(outside)
    (folder / "link_in.jpg").symlink_to(folder / "sub" / "inside.jpg")
    assert image_file(folder, "sub/inside.jpg") == folder / "sub" / "inside.jpg"
    assert image_file(folder, "link_in.jpg") == folder / "link_in.jpg"
    for name in ("../secret.jpg", str(outside), "link_out.jpg", "sub/../../secret.jpg"):
        with pytest.raises(ImageReadError, match="leads outside the image folder"):
            image_file(folder, name)


def _torchvision(path: Path) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)  # bytes: torchvision 0.19 takes no path


def test_jpeg_pixels_equal_torchvisions(tmp_path):
    """The reader training used before (torchvision's decoder) and this one give the same pixels on the committed
    COCO sample and on the demo's synthetic JPEGs, so no number the demo computes moves."""
    from detr_nb_utils.data.synthetic import make_synthetic_coco

    synthetic = make_synthetic_coco(tmp_path / "syn", n_images=8, seed=0)
    files = sorted(COCO_SAMPLE.glob("*.jpg")) + sorted(synthetic.images.glob("*.jpg"))
    assert len(files) == 32
    for path in files:
        assert torch.equal(read_image(path), _torchvision(path)), path.name
