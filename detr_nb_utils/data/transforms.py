"""DETR's training and validation transforms (the paper's augmentation), on ``torchvision.transforms.v2``.

Called as ``image, target = t(image, target)`` with a ``tv_tensors.Image`` and a target whose ``boxes`` are
``tv_tensors.BoundingBoxes`` (XYXY pixels). Sizes are pixels. Used by :mod:`detr_nb_utils.data.coco` (notebooks
03-05 through the engine).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TRAIN_SCALES = tuple(range(480, 801, 32))  # DETR's shorter-side sizes: 480, 512, ..., 800
VAL_SIZE, MAX_SIZE = 800, 1333  # the published validation size: shorter side 800, longer side at most 1333
# the published augmentation's crop sizes, for VAL_SIZE; other sizes scale them by val_size / VAL_SIZE
CROP_RESIZE, CROP_SIZE = (400, 500, 600), (384, 600)
SPLITS = ("train", "val")


class RandomSizeCrop(v2.Transform):
    """Crop a random h x w window, h and w uniform in [min_size, max_size] pixels (capped by the image), as DETR.

    Boxes are clamped to the window by ``F.crop``; boxes left with no area must be removed afterwards
    (``SanitizeBoundingBoxes``), which ``CocoDetection`` counts.
    """

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        if not 0 < min_size <= max_size:
            raise ValueError(f"crop_size must be (min, max) with 0 < min <= max, got ({min_size}, {max_size}).")
        self.min_size, self.max_size = min_size, max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)

        def draw(lo: int, hi: int) -> int:
            return int(torch.randint(lo, hi + 1, ()))

        w = draw(min(self.min_size, width), min(width, self.max_size))
        h = draw(min(self.min_size, height), min(height, self.max_size))
        return dict(top=draw(0, height - h), left=draw(0, width - w), height=h, width=w)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return F.crop(inpt, **params)


def make_transforms(split: str, scales: Sequence[int] = TRAIN_SCALES, max_size: int = MAX_SIZE,
                    val_size: int = VAL_SIZE, crop_resize: Sequence[int] | None = None,
                    crop_size: tuple[int, int] | None = None) -> v2.Compose:
    """DETR's augmentation for ``split`` "train" or "val", called as ``image, target = t(image, target)``.

    train: horizontal flip (p=0.5), then either a resize of the shorter side to one of ``scales`` (longer side
    <= ``max_size``), or a resize to one of ``crop_resize``, a ``RandomSizeCrop(*crop_size)`` and the random resize;
    boxes with less than 1 px width/height or 1 px^2 area are then removed. val: shorter side ``val_size``, longer
    <= ``max_size``. Both end with float [0, 1] scaling and ImageNet mean/std normalisation. Sizes in pixels; small
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
        return v2.Compose([v2.Resize(val_size, max_size=max_size), *finish])
    resize = v2.RandomShortestSize(list(scales), max_size=max_size)
    return v2.Compose([
        v2.RandomHorizontalFlip(),
        v2.RandomChoice([
            resize,
            v2.Compose([v2.RandomShortestSize(list(crop_resize)), RandomSizeCrop(*crop_size), resize]),
        ]),
        v2.SanitizeBoundingBoxes(),
        *finish,
    ])
