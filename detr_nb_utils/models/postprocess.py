"""DETR's published post-processing: one detection per query, its best real class, no threshold, no NMS.

Used by the evaluation (COCO AP, notebooks 02-05), the query analysis and the figures of predictions.
"""
from __future__ import annotations

import torch

from .box_ops import boxes_to_pixels


def best_real_class(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits`` ``[..., num_classes + 1]`` -> ``(score, label)`` ``[...]``: the softmax over all classes
    ("no object", the last, included), then the most probable real class and its probability."""
    return logits.float().softmax(-1)[..., :-1].max(-1)


@torch.no_grad()
def postprocess(outputs: dict, orig_sizes: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """The published ``PostProcess``.

    Args:
        outputs: ``pred_logits`` ``[B,Q,num_classes+1]``, ``pred_boxes`` ``[B,Q,4]`` (cx, cy, w, h in [0, 1]).
        orig_sizes: ``[B,2]`` original image ``(height, width)`` in pixels.

    Returns:
        Per image ``scores`` ``[Q]`` (best real class; never "no object"), ``labels`` ``[Q]`` (category ids) and
        ``boxes`` ``[Q,4]`` (x0, y0, x1, y1) in original-image pixels.
    """
    scores, labels = best_real_class(outputs["pred_logits"])
    boxes = boxes_to_pixels(outputs["pred_boxes"], orig_sizes)
    return [{"scores": s, "labels": l, "boxes": b} for s, l, b in zip(scores, labels, boxes)]
