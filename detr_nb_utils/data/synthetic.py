"""The offline demo's stand-ins: a small synthetic COCO-format detection dataset, and the shape world the demo's tiny
DETR is pre-trained on (:class:`ShapeStream`, :func:`world_sample`).

JPEGs of a few filled shapes on noisy, textured backgrounds; each shape's box is labelled with a REAL COCO category
id (non-contiguous: 1, 3, 18, 44, 62, so an id-shift bug shows), the file lists all 80 COCO categories, a few
``iscrowd=1`` regions (RLE) and a couple of images with no annotations. Used by every notebook's demo profile
(notebooks 01-06 when COCO is not on disk) and by the tests.

The shape world draws the same kind of image, one seed space per part (:data:`WORLD_PARTS`): image ``index`` of part
``part`` comes from ``SeedSequence(seed, spawn_key=(WORLD_PARTS[part], index))``, while the demo's dataset draws all
its images in turn from ``SeedSequence(seed)`` (``default_rng(seed)``, no spawn key). Different seed sequences give
different generator states, so the pre-training stream and the held-out set never draw an image of the demo's
dataset, whatever the seeds (``tests/test_tiny_detr.py`` checks it), nor one of each other.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from torch.utils.data import IterableDataset, get_worker_info
from torchvision import tv_tensors

from ..models.box_ops import normalise_boxes
from .categories import COCO_CATEGORIES
from .coco import coco_boxes_to_xyxy
from .images import read_image
from .transforms import make_transforms

#: category id -> (shape, fill colour RGB). Each category looks distinct, so a model can learn them.
SHAPES: dict[int, tuple[str, tuple[int, int, int]]] = {
    1: ("rectangle", (220, 40, 40)),     # person
    3: ("ellipse", (40, 80, 220)),       # car
    18: ("rectangle", (40, 190, 60)),    # dog
    44: ("ellipse", (235, 200, 30)),     # bottle
    62: ("rectangle", (190, 50, 200)),   # chair
}
_META = "synthetic.json"
#: the shape world's parts and their spawn keys (see the module docstring): the pre-training stream, the held-out set
WORLD_PARTS: dict[str, int] = {"pretrain": 1, "heldout": 2}


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


def free_place(rng: np.random.Generator, h: int, w: int, anns: Sequence[dict],
               size_divisors: tuple[int, int] = (8, 2)) -> tuple[int, int, int, int] | None:
    """``(x, y, width, height)`` of a new shape in an ``h`` x ``w`` image that overlaps none of ``anns``' boxes by
    15% or more of the smaller one (shapes stay mostly unoccluded, so every box shows its object); width drawn in
    ``[w // a, w // b)`` and height likewise for ``size_divisors`` ``(a, b)``; None after 20 tries."""
    for _ in range(20):
        bw, bh = (int(rng.integers(n // size_divisors[0], n // size_divisors[1])) for n in (w, h))
        x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        if all(_overlap(a["bbox"], [x, y, bw, bh]) < 0.15 for a in anns):
            return x, y, bw, bh
    return None


def _draw_image(rng: np.random.Generator, h: int, w: int, n_shapes: int, crowd: bool,
                size_divisors: tuple[int, int] = (8, 2)) -> tuple[Image.Image, list]:
    """One image and its annotation dicts (without ids): shapes, plus optionally a crowd of tiny dots. A shape's
    width is drawn in ``[w // a, w // b)`` and its height likewise, for ``size_divisors`` ``(a, b)``."""
    img = Image.fromarray(_background(rng, h, w))
    draw = ImageDraw.Draw(img)
    anns = []
    for _ in range(n_shapes):
        cat = int(rng.choice(list(SHAPES)))
        shape, colour = SHAPES[cat]
        place = free_place(rng, h, w, anns, size_divisors)
        if place is None:
            continue
        x, y, bw, bh = place
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


#: shapes per image in the demo's crowded images (every 10th from the 6th), smaller than the others
CROWDED_SHAPES = (8, 13)
_CROWDED_SIZES = (12, 4)


def demo_samples(n_images: int, seed: int, image_size: tuple[int, int]) -> Iterator[tuple[Image.Image, list]]:
    """The demo dataset's images and annotation dicts (without ids), in order, all drawn from one generator
    ``default_rng(seed)``. 1-4 shapes each, as in the pre-training world, except: the images at 0-based positions
    ``n_images // 2``, ``n_images - 1`` (when ``n_images >= 4``) and ``50, 150, 250, …`` are empty (COCO val2017
    has 1% of images without annotations); every 10th from position 5 holds 8-12 smaller shapes (fewer when no free
    place is left), a kind of image the pre-training never shows, so fine-tuning has something to learn; every 7th
    from position 1 has a crowd region."""
    h, w = image_size
    rng = np.random.default_rng(seed)
    empty = ({n_images - 1, n_images // 2} if n_images >= 4 else set()) | set(range(50, n_images, 100))
    crowd = {i for i in range(1, n_images, 7)} - empty
    crowded = set(range(5, n_images, 10)) - empty
    for i in range(n_images):
        if i in crowded:
            yield _draw_image(rng, h, w, int(rng.integers(*CROWDED_SHAPES)), crowd=i in crowd,
                              size_divisors=_CROWDED_SIZES)
        else:
            yield _draw_image(rng, h, w, 0 if i in empty else int(rng.integers(1, 5)), crowd=i in crowd)


def world_rng(part: str, index: int, seed: int = 0) -> np.random.Generator:
    """The generator of image ``index`` of the shape world's ``part``: ``SeedSequence(seed, spawn_key=(key, index))``,
    a seed space the demo's dataset (``default_rng(seed)``, no spawn key) never uses."""
    if part not in WORLD_PARTS:
        raise ValueError(f"part must be one of {sorted(WORLD_PARTS)}, got {part!r}")
    if not (isinstance(index, int) and index >= 0):
        raise ValueError(f"index must be an integer >= 0, got {index!r}")
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(WORLD_PARTS[part], index)))


def world_sample(part: str, index: int, seed: int = 0, image_size: tuple[int, int] = (160, 224),
                 max_objects: int = 4, crowd_share: float = 1 / 7) -> tuple[Image.Image, list, np.random.Generator]:
    """Image ``index`` of the shape world's ``part`` (:data:`WORLD_PARTS`), its annotation dicts (without ids) and
    the generator that drew it (:func:`world_rng`, for any further draw about this image).

    1..``max_objects`` shapes (fewer when one finds no free place), a crowd region with probability ``crowd_share``;
    the demo's kind of image at ``image_size`` (height, width) pixels, from its own seed space (module docstring).
    """
    rng = world_rng(part, index, seed)
    n_shapes = int(rng.integers(1, max_objects + 1))
    img, anns = _draw_image(rng, *image_size, n_shapes, crowd=bool(rng.random() < crowd_share))
    return img, anns, rng


def _build(tmp: Path, samples: Iterator[tuple[Image.Image, list]], image_size: tuple[int, int],
           description: str) -> None:
    h, w = image_size
    (tmp / "images").mkdir(parents=True)
    (tmp / "annotations").mkdir()
    images, annotations = [], []
    for i, (img, anns) in enumerate(samples):
        image_id = i + 1
        name = f"{image_id:012d}.jpg"
        img.save(tmp / "images" / name, format="JPEG", quality=90)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w, "license": 1})
        for a in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **a})
    coco = {"info": {"description": description, "version": "1.0",
                     "year": 2017, "contributor": "detr_nb_utils.synthetic", "date_created": "n/a"},
            "licenses": [{"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}],
            "images": images, "annotations": annotations, "categories": COCO_CATEGORIES}
    (tmp / "annotations" / "instances.json").write_text(json.dumps(coco, indent=1))


def make_synthetic_coco(out_dir: Path | str, n_images: int = 24, seed: int = 0,
                        image_size: tuple[int, int] = (160, 224), world_part: str | None = None) -> SyntheticCoco:
    """Write (or reuse) ``out_dir/images/*.jpg`` and ``out_dir/annotations/instances.json``; return the paths.

    ``image_size`` is (height, width) in pixels. Deterministic for a seed; built in a temporary folder and renamed
    into place; a second call with the same arguments reuses the folder, one with different arguments is an
    error (delete ``out_dir`` or pick another). Images ``n_images // 2 + 1`` and ``n_images`` have no
    annotations (when ``n_images >= 4``); every 7th image from the 2nd holds one crowd region.
    Used by the demo profile of notebooks 01-06 and by the tests. ``world_part`` (e.g. ``"heldout"``): instead,
    images ``0 … n_images-1`` of that part of the shape world (:func:`world_sample`), the pre-training's held-out
    set (:mod:`detr_nb_utils.training.pretrain`).
    """
    out_dir = Path(out_dir)
    h, w = image_size
    if n_images < 1 or h < 64 or w < 64:
        raise ValueError(f"need n_images >= 1 and image_size >= (64, 64), got {n_images} and {image_size}.")
    if world_part is not None and world_part not in WORLD_PARTS:
        raise ValueError(f"world_part must be None (the demo's dataset) or one of {sorted(WORLD_PARTS)}, "
                         f"got {world_part!r}")
    params = {"n_images": n_images, "seed": seed, "image_size": [h, w], "version": 1}
    description = f"detr-mini-coco synthetic shapes (seed {seed})"
    samples = demo_samples(n_images, seed, (h, w))
    if world_part is not None:
        params["world_part"] = world_part
        description += f", {world_part} part of the shape world"
        samples = (world_sample(world_part, i, seed, (h, w))[:2] for i in range(n_images))
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
        _build(tmp, samples, (h, w), description)
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


class ShapeStream(IterableDataset):
    """An endless stream of the shape world's ``part`` (the pre-training images by default), as ``(image, target)``
    pairs in :class:`~detr_nb_utils.data.coco.CocoDetection`'s contract, for a DataLoader with
    :func:`~detr_nb_utils.data.coco.collate_fn`.

    Item ``i`` is :func:`world_sample` ``(part, start + i, seed, image_size)``, made exactly as the demo's files are
    read: saved as JPEG (quality 90) and decoded again, then resized so the shorter side is one of ``scales`` (drawn
    by the image's own generator; longer side at most ``max_size``), scaled to [0, 1] and ImageNet-normalised (the
    validation transform of :func:`~detr_nb_utils.data.transforms.make_transforms`). Targets: ``boxes`` float32
    ``[n,4]`` normalised (cx, cy, w, h), ``labels`` int64 ``[n]`` COCO category ids (crowd regions are drawn but not
    targets, as in training), ``image_id`` (= ``start + i``), ``orig_size`` and ``size`` (h, w). Deterministic for
    ``seed``, in any process: the stream uses no global random state. Under DataLoader workers, worker ``k`` of
    ``n`` yields items ``k, k+n, …``, so the batches hold the same images as in one process.
    """

    def __init__(self, seed: int = 0, image_size: tuple[int, int] = (160, 224), scales: Sequence[int] = (128,),
                 max_size: int = 192, start: int = 0, part: str = "pretrain", max_objects: int = 4,
                 augment: bool = False) -> None:
        super().__init__()
        if part not in WORLD_PARTS:
            raise ValueError(f"part must be one of {sorted(WORLD_PARTS)}, got {part!r}")
        self.seed, self.image_size, self.part, self.max_objects = seed, tuple(image_size), part, max_objects
        self.start, self.scales, self.augment = start, tuple(scales), augment
        self.transforms = {s: make_transforms("val", val_size=s, max_size=max_size) for s in self.scales}
        # the fine-tuning's augmentation, crop sizes scaled by the largest scale as the demo's by its min_size
        self.train_transform = make_transforms("train", self.scales, max_size, val_size=max(self.scales))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        info = get_worker_info()
        first, step = (0, 1) if info is None else (info.id, info.num_workers)
        return (self[self.start + i] for i in itertools.count(first, step))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        img, anns, rng = world_sample(self.part, index, self.seed, self.image_size, self.max_objects)
        scale = self.scales[int(rng.integers(len(self.scales)))]
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=90)
        buffer.seek(0)
        image = read_image(buffer)  # as the demo's fine-tuning reads its JPEG files
        h, w = image.shape[-2:]
        objects = [a for a in anns if not a["iscrowd"]]
        xyxy, keep = coco_boxes_to_xyxy(np.array([a["bbox"] for a in objects], dtype=np.float32), h, w)
        labels = torch.as_tensor([a["category_id"] for a in objects], dtype=torch.int64)[torch.from_numpy(keep)]
        if self.augment:  # drawn from a generator seeded by this image's own: the same crops in any process
            boxes = tv_tensors.BoundingBoxes(torch.from_numpy(xyxy[keep]), format="XYXY", canvas_size=(h, w))
            target = {"boxes": boxes, "labels": labels}
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(rng.integers(2**63)))
                image, target = self.train_transform(tv_tensors.Image(image), target)
            image, labels = image.as_subclass(torch.Tensor), target["labels"]
            boxes = normalise_boxes(target["boxes"].as_subclass(torch.Tensor), image.shape[-2:])
        else:
            boxes = normalise_boxes(torch.from_numpy(xyxy[keep]), (h, w))  # resizing keeps normalised boxes
            image = self.transforms[scale](tv_tensors.Image(image)).as_subclass(torch.Tensor)
        return image, {"boxes": boxes, "labels": labels, "image_id": torch.tensor(index, dtype=torch.int64),
                       "orig_size": torch.tensor([h, w], dtype=torch.int64),
                       "size": torch.tensor(list(image.shape[-2:]), dtype=torch.int64)}
