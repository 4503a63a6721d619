"""DETR's training and validation transforms (the paper's augmentation), on ``torchvision.transforms.v2``.

Called as ``image, target = t(image, target)`` with a ``tv_tensors.Image`` and a target whose ``boxes`` are
``tv_tensors.BoundingBoxes`` (XYXY pixels) and ``labels`` one per box. Sizes are pixels. Used by
:mod:`detr_nb_utils.data.coco` (notebooks 03-05 through the engine).

Geometry follows the published ``datasets/transforms.py`` (facebookresearch/detr):

- output sizes: the published rule (``resized_size``): shorter side to S, unless the longer side would pass
  ``max_size``, then S = round(max_size * short / long); longer side int(S * long / short); an image whose shorter
  side already is S is left alone. torchvision's ``Resize(max_size=)`` rounds differently (the longer side becomes
  exactly ``max_size``), so it is not used;
- boxes are clamped to the image after every resize and crop: scaling in float can leave a coordinate a hair past
  the edge (479.00003 in a 479 px image); a flip keeps them inside;
- boxes are dropped in one place only, ``RandomSizeCrop``: those the crop leaves with zero width or height (the
  published ``crop``). A resize or a flip never drops a box, so an object is never trained as "no object" for
  a rounding error.

Where the pixels can differ from the published pipeline, and only there: the resampling (``F.resize`` on the uint8
tensor, bilinear with antialias, against PIL's bilinear ``Image.resize``). The decoded pixels are PIL's, as
published (:func:`.images.read_image`); the [0, 1] scaling and the ImageNet normalisation are the published ones,
and so are sizes and boxes (the published resize does not clamp: its boxes can end a float rounding past the edge
where these stop at it).
``benchmarks/bench_pixel_path.py`` measures the difference after normalisation on the real sample
``tests/data/coco_sample``; the figures, with the machine, are in ``benchmarks/RESULTS.md``, section "Pixel path
against the published DETR".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

try:  # public since torchvision 0.21; 0.19 and 0.20 keep the same function in a private module
    from torchvision.transforms.v2 import query_size
except ImportError:
    from torchvision.transforms.v2._utils import query_size

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TRAIN_SCALES = tuple(range(480, 801, 32))  # DETR's shorter-side sizes: 480, 512, ..., 800
VAL_SIZE, MAX_SIZE = 800, 1333  # the published validation size: shorter side 800, longer side at most 1333
# the published augmentation's crop sizes, for VAL_SIZE; other sizes scale them by val_size / VAL_SIZE
CROP_RESIZE, CROP_SIZE = (400, 500, 600), (384, 600)
SPLITS = ("train", "val")


def resized_size(height: int, width: int, size: int, max_size: int | None = None) -> tuple[int, int]:
    """Output (h, w) pixels of the published resize of an ``height`` x ``width`` image to shorter side ``size``.

    The published ``get_size_with_aspect_ratio``: if the longer side would pass ``max_size``, the shorter side
    becomes round(max_size * short / long) instead; the longer side is int(shorter * long / short), truncated;
    an image whose shorter side already has that length keeps its size.
    """
    short, long = min(height, width), max(height, width)
    if max_size is not None and long / short * size > max_size:
        size = round(max_size * short / long)
    if short == size:
        return height, width
    other = int(size * long / short)
    return (size, other) if height <= width else (other, size)


def clamp_boxes(inpt: Any) -> Any:
    """``inpt`` with every XYXY ``BoundingBoxes`` clamped to its canvas; anything else unchanged. (Plain tensor
    arithmetic: torchvision's ``clamp_bounding_boxes`` changed its signature after 0.19, and the package keeps to
    what torch 2.4 / torchvision 0.19 offer.)"""
    if not isinstance(inpt, tv_tensors.BoundingBoxes):
        return inpt
    if inpt.format != tv_tensors.BoundingBoxFormat.XYXY:
        raise ValueError(f"clamp_boxes expects XYXY boxes (the dataset's format), got {inpt.format}")
    h, w = inpt.canvas_size
    limits = torch.tensor([w, h, w, h], dtype=inpt.dtype, device=inpt.device)
    return tv_tensors.wrap(inpt.as_subclass(torch.Tensor).clamp(min=0).minimum(limits), like=inpt)


class _Transform(v2.Transform):
    """A custom v2 transform: subclasses define ``make_params`` and ``transform``, the hooks torchvision >= 0.21
    calls; torchvision 0.19 and 0.20 call them by their earlier names, ``_get_params`` and ``_transform``."""

    def _get_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return self.make_params(flat_inputs)

    def _transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self.transform(inpt, params)


class RandomResize(_Transform):
    """Resize to shorter side S drawn uniformly from ``sizes`` with the published size rule (``resized_size``).

    Boxes are scaled by (new w / old w, new h / old h) and clamped to the new image; none is ever dropped.
    Image: bilinear with antialias on the tensor.
    """

    def __init__(self, sizes: Sequence[int], max_size: int | None = None) -> None:
        super().__init__()
        self.sizes, self.max_size = list(sizes), max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = query_size(flat_inputs)
        size = self.sizes[int(torch.randint(len(self.sizes), ()))]
        return dict(size=list(resized_size(height, width, size, self.max_size)))

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return clamp_boxes(F.resize(inpt, params["size"], antialias=True))


class RandomSizeCrop(_Transform):
    """Crop a random h x w window, h and w uniform in [min_size, max_size] pixels (capped by the image), as DETR.

    Called as ``image, target = crop(image, target)``. Boxes are clamped to the window; the boxes this leaves with
    zero width or height are removed with their labels (the published ``crop``), and no other box is:
    ``CocoDetection`` counts them in ``num_dropped_by_transforms``.
    """

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        if not 0 < min_size <= max_size:
            raise ValueError(f"crop_size must be (min, max) with 0 < min <= max, got ({min_size}, {max_size}).")
        self.min_size, self.max_size = min_size, max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = query_size(flat_inputs)

        def draw(lo: int, hi: int) -> int:
            return int(torch.randint(lo, hi + 1, ()))

        w = draw(min(self.min_size, width), min(width, self.max_size))
        h = draw(min(self.min_size, height), min(height, self.max_size))
        return dict(top=draw(0, height - h), left=draw(0, width - w), height=h, width=w)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return clamp_boxes(F.crop(inpt, **params))

    def forward(self, *inputs: Any) -> Any:
        image, target = super().forward(*inputs)
        boxes = target["boxes"]
        xyxy = F.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.XYXY)
        keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        return image, {**target, "boxes": tv_tensors.wrap(boxes[keep], like=boxes), "labels": target["labels"][keep]}


def make_transforms(split: str, scales: Sequence[int] = TRAIN_SCALES, max_size: int = MAX_SIZE,
                    val_size: int = VAL_SIZE, crop_resize: Sequence[int] | None = None,
                    crop_size: tuple[int, int] | None = None, random_crop: bool = True) -> v2.Compose:
    """DETR's augmentation for ``split`` "train" or "val", called as ``image, target = t(image, target)``.

    train: horizontal flip (p=0.5), then either a resize of the shorter side to one of ``scales`` (longer side
    <= ``max_size``), or a resize to one of ``crop_resize``, a ``RandomSizeCrop(*crop_size)`` and the random resize.
    val: shorter side ``val_size``, longer <= ``max_size``. Output sizes follow the published rule (``resized_size``);
    boxes are clamped to the image after every step, and only the boxes the crop leaves with zero width or height
    are removed. ``random_crop=False``: train without the crop branch (flip, then the resize to one of ``scales``).
    Both end with float [0, 1] scaling and ImageNet mean/std normalisation. Sizes in pixels; small
    ``scales``/``max_size``/``val_size`` make CPU runs cheap; ``crop_resize`` and ``crop_size`` ``None``: the
    published sizes scaled by ``val_size / 800``. Used by notebooks 03-05 via ``build_dataset``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    f = val_size / VAL_SIZE
    if crop_resize is None:
        crop_resize = tuple(max(1, round(s * f)) for s in CROP_RESIZE)
    if crop_size is None:
        crop_size = tuple(max(1, round(s * f)) for s in CROP_SIZE)
    for name, values in (("scales", scales), ("crop_resize", crop_resize), ("crop_size", crop_size),
                         ("max_size", [max_size]), ("val_size", [val_size])):
        if len(values) == 0 or any(not isinstance(v, int) or v <= 0 for v in values):
            raise ValueError(f"{name} must hold positive integers (pixels), got {values!r}.")
    if len(crop_size) != 2:
        raise ValueError(f"crop_size must be (min, max) pixels, got {crop_size!r}.")
    finish = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if split == "val":
        return v2.Compose([RandomResize([val_size], max_size=max_size), *finish])
    resize = RandomResize(scales, max_size=max_size)
    if not random_crop:
        return v2.Compose([v2.RandomHorizontalFlip(), resize, *finish])
    return v2.Compose([
        v2.RandomHorizontalFlip(),  # a mirror keeps every box inside the image
        v2.RandomChoice([
            resize,
            v2.Compose([RandomResize(crop_resize), RandomSizeCrop(*crop_size), resize]),
        ]),
        *finish,
    ])
