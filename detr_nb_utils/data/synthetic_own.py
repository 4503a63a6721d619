"""The demo's stand-in for a user's own dataset: the shape world under a label space unlike COCO's.

Six categories with ids a COCO model has never seen (7, 12, 40, 101, 102, 103) and names of three kinds
(:data:`OWN_CLASSES`): three COCO names spelt the user's way ("Person", "car", "Bottle"), drawn exactly as the shape
world draws those COCO classes, so the demo's tiny DETR already knows them under their COCO rows; two looks the tiny
DETR knows under another COCO name, renamed ("tile" is its "dog", "gift box" its "chair"), so only a fresh class-head
row can learn the new name; and one shape it has never seen ("traffic cone", an orange triangle). The class-head
surgery (:mod:`detr_nb_utils.models.class_head`) starts the first three from their COCO rows and the others fresh,
which is what notebook 07_your_dataset measures.

The folder is laid out like COCO (``annotations/instances_{train,val}.json``, ``train/``, ``val/``), for
``RunConfig(dataset_dir=...)``. Image ``i`` of a split is drawn from ``SeedSequence(seed, spawn_key=(10, split, i))``,
a seed space no other synthetic data uses. Made on first use by notebook 07 in the demo profile, and by the tests.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .synthetic import SHAPES, _background, free_place

#: (id, name, shape, fill colour): the demo's own label space (module docstring)
OWN_CLASSES: tuple[tuple[int, str, str, tuple[int, int, int]], ...] = (
    (7, "Person", *SHAPES[1]),
    (12, "car", *SHAPES[3]),
    (40, "Bottle", *SHAPES[44]),
    (101, "tile", *SHAPES[18]),
    (102, "gift box", *SHAPES[62]),
    (103, "traffic cone", "triangle", (245, 130, 20)),
)
_SPLITS = {"train": 0, "val": 1}
_META = "synthetic_own.json"


@dataclass(frozen=True)
class OwnDataset:
    """Where the demo's own dataset lives: ``root`` (a ``dataset_dir``) and each split's instances file and images."""

    root: Path

    def files(self, split: str) -> tuple[Path, Path]:
        """``(instances file, image folder)`` of ``split`` ("train" or "val")."""
        return self.root / "annotations" / f"instances_{split}.json", self.root / split


def _draw(rng: np.random.Generator, h: int, w: int) -> tuple[Image.Image, list[dict]]:
    """One image with 1-4 shapes of the own label space, mostly unoccluded, and their annotation dicts."""
    img = Image.fromarray(_background(rng, h, w))
    draw = ImageDraw.Draw(img)
    anns: list[dict] = []
    for _ in range(int(rng.integers(1, 5))):
        cat, _, shape, colour = OWN_CLASSES[int(rng.integers(len(OWN_CLASSES)))]
        place = free_place(rng, h, w, anns)
        if place is None:
            continue
        x, y, bw, bh = place
        box = [x, y, x + bw - 1, y + bh - 1]
        if shape == "triangle":
            draw.polygon([(x + bw / 2, y), (x + bw - 1, y + bh - 1), (x, y + bh - 1)], fill=colour, outline=(0, 0, 0))
        else:
            (draw.rectangle if shape == "rectangle" else draw.ellipse)(box, fill=colour, outline=(0, 0, 0))
        area = {"rectangle": bw * bh, "ellipse": np.pi * bw * bh / 4, "triangle": bw * bh / 2}[shape]
        anns.append({"category_id": cat, "bbox": [float(x), float(y), float(bw), float(bh)],
                     "area": round(float(area), 2), "iscrowd": 0})
    return img, anns


def _write_split(root: Path, split: str, n_images: int, seed: int, image_size: tuple[int, int]) -> None:
    h, w = image_size
    (root / split).mkdir(parents=True)
    images, annotations = [], []
    for i in range(n_images):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(10, _SPLITS[split], i)))
        img, anns = _draw(rng, h, w)
        image_id = 1000 * (_SPLITS[split] + 1) + i  # ids of the user's own, not 1..n
        name = f"{split}_{i:05d}.jpg"
        img.save(root / split / name, format="JPEG", quality=90)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        for a in anns:
            annotations.append({"id": 100_000 * (_SPLITS[split] + 1) + len(annotations), "image_id": image_id, **a})
    categories = [{"id": c, "name": n, "supercategory": "shape"} for c, n, _, _ in OWN_CLASSES]
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories}, indent=1))


def make_own_dataset(out_dir: Path | str, n_train: int = 300, n_val: int = 100, seed: int = 0,
                     image_size: tuple[int, int] = (160, 224)) -> OwnDataset:
    """Write (or reuse) the demo's own dataset under ``out_dir``; deterministic for its arguments, built in a
    temporary folder and renamed into place. A folder made with other arguments is an error naming them."""
    out_dir = Path(out_dir)
    if n_train < 1 or n_val < 1 or min(image_size) < 64:
        raise ValueError(f"need n_train, n_val >= 1 and image_size >= (64, 64), got {n_train}, {n_val}, "
                         f"{image_size}")
    params = {"n_train": n_train, "n_val": n_val, "seed": seed, "image_size": list(image_size), "version": 1}
    if out_dir.exists():
        meta = out_dir / _META
        if meta.is_file() and json.loads(meta.read_text()) == params:
            return OwnDataset(out_dir)
        raise FileExistsError(f"{out_dir} exists but is not the demo's own dataset made with {params}; delete it or "
                              f"choose another folder.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        for split, n in (("train", n_train), ("val", n_val)):
            _write_split(tmp, split, n, seed, image_size)
        (tmp / _META).write_text(json.dumps(params))
        tmp.chmod(0o755)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return OwnDataset(out_dir)
