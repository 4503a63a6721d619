"""DETR's two box formats and the conversions between them, with ``torchvision.ops.box_convert`` doing the
arithmetic: targets and predictions are normalised ``(cx, cy, w, h)`` fractions of the unpadded image; pictures
and COCO results use pixels. The only place the project converts between the two.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.ops import box_convert


def _scale(size: Sequence[int] | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` factors ``(w, h, w, h)`` from ``size`` = ``(h, w)`` (``[2]``, or ``[B, 2]`` for a batch)."""
    hw = torch.as_tensor(size, dtype=like.dtype, device=like.device)
    h, w = hw[..., 0], hw[..., 1]
    return torch.stack([w, h, w, h], dim=-1)


def normalise_boxes(boxes_xyxy: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Absolute ``(x1, y1, x2, y2)`` pixels ``[n, 4]`` -> ``(cx, cy, w, h)`` as fractions of ``size`` = ``(h, w)``;
    float32 ``[n, 4]``."""
    boxes = boxes_xyxy.as_subclass(torch.Tensor).float()
    return box_convert(boxes, "xyxy", "cxcywh") / _scale(size, boxes)


def boxes_to_pixels(boxes_cxcywh: torch.Tensor, size: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Normalised ``(cx, cy, w, h)`` ``[..., n, 4]`` -> ``(x1, y1, x2, y2)`` pixels of an image of ``size`` =
    ``(h, w)`` (``[B, 2]`` with ``[B, n, 4]`` boxes: one size per image)."""
    boxes = box_convert(boxes_cxcywh.float(), "cxcywh", "xyxy")
    scale = _scale(size, boxes)
    return boxes * (scale[:, None, :] if scale.dim() == 2 else scale)
