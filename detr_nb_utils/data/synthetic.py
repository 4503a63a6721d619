"""The offline demo's stand-ins: a small synthetic COCO-format detection dataset, and an official-layout DETR
checkpoint with random weights (:func:`make_random_checkpoint`).

JPEGs of a few filled shapes on noisy, textured backgrounds; each shape's box is labelled with a REAL COCO category
id (non-contiguous: 1, 3, 18, 44, 62, so an id-shift bug shows), the file lists all 80 COCO categories, a few
``iscrowd=1`` regions (RLE) and a couple of images with no annotations. Used by every notebook's demo profile
(notebooks 01-06 when COCO is not on disk) and by the tests.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from ..models.detr import build_detr
from . import atomic
from .categories import COCO_CATEGORIES

#: category id -> (shape, fill colour RGB). Each category looks distinct, so a model can learn them.
SHAPES: dict[int, tuple[str, tuple[int, int, int]]] = {
    1: ("rectangle", (220, 40, 40)),     # person
    3: ("ellipse", (40, 80, 220)),       # car
    18: ("rectangle", (40, 190, 60)),    # dog
    44: ("ellipse", (235, 200, 30)),     # bottle
    62: ("rectangle", (190, 50, 200)),   # chair
}
_META = "synthetic.json"


@dataclass(frozen=True)
class SyntheticCoco:
    """Where a synthetic dataset lives: ``root``, ``images`` (folder of JPEGs), ``annotations`` (instances json)."""

    root: Path
    images: Path
    annotations: Path


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Uint8 [h, w, 3]: a random colour gradient plus stripes and pixel noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(60, 200, size=(2, 3))
    t = (xx / w)[..., None]
    img = c0 * (1 - t) + c1 * t
    period, angle = rng.uniform(6, 20), rng.uniform(0, np.pi)
    img += 12 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)[..., None]
    img += rng.normal(0, 10, size=(h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _polygon(shape: str, x: float, y: float, bw: float, bh: float) -> list[float]:
    if shape == "rectangle":
        pts = [(x, y), (x + bw, y), (x + bw, y + bh), (x, y + bh)]
    else:
        a = np.linspace(0, 2 * np.pi, 16, endpoint=False)
        pts = list(zip(x + bw / 2 * (1 + np.cos(a)), y + bh / 2 * (1 + np.sin(a))))
    return [round(float(v), 2) for p in pts for v in p]


def _overlap(a: list[float], b: list[float]) -> float:
    """Intersection of two xywh boxes over the smaller one's area."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(iw, 0) * max(ih, 0) / min(a[2] * a[3], b[2] * b[3])


def _draw_image(rng: np.random.Generator, h: int, w: int, n_shapes: int, crowd: bool) -> tuple[Image.Image, list]:
    """One image and its annotation dicts (without ids): shapes, plus optionally a crowd of tiny dots."""
    img = Image.fromarray(_background(rng, h, w))
    draw = ImageDraw.Draw(img)
    anns = []
    for _ in range(n_shapes):
        cat = int(rng.choice(list(SHAPES)))
        shape, colour = SHAPES[cat]
        for _ in range(20):  # keep shapes mostly unoccluded, so every box shows its object
            bw, bh = int(rng.integers(w // 8, w // 2)), int(rng.integers(h // 8, h // 2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            if all(_overlap(a["bbox"], [x, y, bw, bh]) < 0.15 for a in anns):
                break
        else:
            continue
        xy = [x, y, x + bw - 1, y + bh - 1]
        (draw.rectangle if shape == "rectangle" else draw.ellipse)(xy, fill=colour, outline=(0, 0, 0))
        area = bw * bh if shape == "rectangle" else np.pi * bw * bh / 4
        anns.append({"category_id": cat, "bbox": [float(x), float(y), float(bw), float(bh)],
                     "area": round(float(area), 2), "iscrowd": 0,
                     "segmentation": [_polygon(shape, x, y, bw, bh)]})
    if crowd:  # a cluster of small same-category dots, annotated once as a crowd region (RLE mask)
        cat = int(rng.choice(list(SHAPES)))
        cx, cy = int(rng.integers(w // 4, 3 * w // 4)), int(rng.integers(h // 4, 3 * h // 4))
        mask = np.zeros((h, w), dtype=np.uint8)
        for _ in range(8):
            px, py = cx + int(rng.integers(-20, 20)), cy + int(rng.integers(-15, 15))
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=SHAPES[cat][1])
            mask[max(py - 3, 0):py + 4, max(px - 3, 0):px + 4] = 1
        rle = mask_utils.encode(np.asfortranarray(mask))
        bbox = [float(v) for v in mask_utils.toBbox(rle)]
        anns.append({"category_id": cat, "bbox": bbox, "area": float(mask_utils.area(rle)), "iscrowd": 1,
                     "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")}})
    return img, anns


def _build(tmp: Path, n_images: int, seed: int, image_size: tuple[int, int]) -> None:
    h, w = image_size
    rng = np.random.default_rng(seed)
    (tmp / "images").mkdir(parents=True)
    (tmp / "annotations").mkdir()
    empty = {n_images - 1, n_images // 2} if n_images >= 4 else set()
    crowd = {i for i in range(1, n_images, 7)} - empty
    images, annotations = [], []
    for i in range(n_images):
        image_id = i + 1
        n_shapes = 0 if i in empty else int(rng.integers(1, 5))
        img, anns = _draw_image(rng, h, w, n_shapes, crowd=i in crowd)
        name = f"{image_id:012d}.jpg"
        img.save(tmp / "images" / name, format="JPEG", quality=90)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w, "license": 1})
        for a in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **a})
    coco = {"info": {"description": f"detr-mini-coco synthetic shapes (seed {seed})", "version": "1.0",
                     "year": 2017, "contributor": "detr_nb_utils.synthetic", "date_created": "n/a"},
            "licenses": [{"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}],
            "images": images, "annotations": annotations, "categories": COCO_CATEGORIES}
    (tmp / "annotations" / "instances.json").write_text(json.dumps(coco, indent=1))


def make_synthetic_coco(out_dir: Path | str, n_images: int = 24, seed: int = 0,
                        image_size: tuple[int, int] = (160, 224)) -> SyntheticCoco:
    """Write (or reuse) ``out_dir/images/*.jpg`` and ``out_dir/annotations/instances.json``; return the paths.

    ``image_size`` is (height, width) in pixels. Deterministic for a seed; built in a temporary folder and renamed
    into place; a second call with the same arguments reuses the folder, one with different arguments is an
    error (delete ``out_dir`` or pick another). Images ``n_images // 2 + 1`` and ``n_images`` have no
    annotations (when ``n_images >= 4``); every 7th image from the 2nd holds one crowd region.
    Used by the demo profile of notebooks 01-06 and by the tests.
    """
    out_dir = Path(out_dir)
    h, w = image_size
    if n_images < 1 or h < 64 or w < 64:
        raise ValueError(f"need n_images >= 1 and image_size >= (64, 64), got {n_images} and {image_size}.")
    params = {"n_images": n_images, "seed": seed, "image_size": [h, w], "version": 1}
    result = SyntheticCoco(out_dir, out_dir / "images", out_dir / "annotations" / "instances.json")
    if out_dir.exists():
        meta = out_dir / _META
        if meta.is_file() and json.loads(meta.read_text()) == params and result.annotations.is_file():
            return result
        raise FileExistsError(f"{out_dir} exists but is not a synthetic dataset made with {params}; "
                              f"delete it or choose another out_dir.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        _build(tmp, n_images, seed, (h, w))
        (tmp / _META).write_text(json.dumps(params))
        tmp.chmod(0o755)  # mkdtemp makes it private
        try:
            os.replace(tmp, out_dir)
        except OSError:  # another process finished first: reuse its folder if it matches
            if not (out_dir / _META).is_file() or json.loads((out_dir / _META).read_text()) != params:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


@torch.no_grad()
def make_random_checkpoint(path: str | os.PathLike, seed: int = 0) -> Path:
    """An official-layout checkpoint with RANDOM weights, marked ``random_weights=True``: the offline demo's
    stand-in for ``detr-r50-e632da11.pth``. Reused when it already exists.

    The frozen BatchNorm statistics are calibrated on noise images so activations keep a unit scale through
    the 50 layers (an un-normalised random ResNet would blow them up by orders of magnitude).
    """
    path = Path(path)
    if path.is_file():
        return path
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(seed)
        model = build_detr().eval()
        _calibrate_frozen_bn(model.backbone[0].body, torch.randn(2, 3, 224, 224))
    return atomic.torch_save({"model": model.state_dict(), "random_weights": True,
                              "note": f"random weights (seed {seed}), not the official DETR checkpoint"}, path)


def _calibrate_frozen_bn(body: nn.Module, images: torch.Tensor) -> None:
    def set_stats(module, inputs):
        x = inputs[0]
        module.running_mean.copy_(x.mean((0, 2, 3)))
        module.running_var.copy_(x.var((0, 2, 3)))

    hooks = [m.register_forward_pre_hook(set_stats) for m in body.modules() if isinstance(m, FrozenBatchNorm2d)]
    try:
        body(images)
    finally:
        for h in hooks:
            h.remove()
