"""DETR's set-prediction loss (paper Sec. 3.1, Eq. 2 and appendix A.2), and the depth-fair views of it.

Why totals of models with different decoder depths must not be compared
-----------------------------------------------------------------------
The training loss sums one ``ce + 5·L1 + 2·GIoU`` term per decoder layer (auxiliary decoding losses). A
6-layer model's total has six such terms, a 3-layer model's three, so the 3-layer total is about half the
6-layer total *by construction*, whatever the detections are worth. Compare models on COCO AP, on
:func:`final_layer_loss` (the predictions a user gets) or on :func:`per_layer_mean_loss` (total / L).

Used by notebooks 03-06 through the engine (:mod:`detr_nb_utils.training.engine`).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou_loss

from .matcher import HungarianMatcher

TERMS = ("loss_ce", "loss_bbox", "loss_giou")
DEFAULT_WEIGHTS = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}


class SetCriterion(nn.Module):
    """Match every decoder layer's predictions to the targets, then score the matched pairs.

    Args:
        num_classes: largest category id + 1 (91 for COCO); index ``num_classes`` is "no object".
        matcher: defaults to ``HungarianMatcher(1, 5, 2)``.
        eos_coef: class weight of "no object" in the cross-entropy (0.1).
        dec_layers: decoder layers of the model; with ``aux_loss`` the layers ``0 … L-2`` get suffixed terms.
        weights: weight of each term, the same for every layer (``loss_ce`` 1, ``loss_bbox`` 5, ``loss_giou`` 2).

    ``forward`` returns the unweighted terms: ``loss_ce``, ``loss_bbox``, ``loss_giou``, ``class_error`` (final
    layer, %), ``cardinality_error``, and for every auxiliary layer ``i`` the same with suffix ``_i`` (no
    ``class_error``). ``class_error`` and ``cardinality_error`` are logged only; they are not in ``weight_dict``.
    """

    def __init__(self, num_classes: int = 91, matcher: HungarianMatcher | None = None, eos_coef: float = 0.1,
                 dec_layers: int = 6, aux_loss: bool = True, weights: dict | None = None) -> None:
        super().__init__()
        if not 0 <= eos_coef <= 1:
            raise ValueError(f"SetCriterion: eos_coef must be in [0, 1], got {eos_coef}")
        self.num_classes = num_classes
        self.matcher = matcher if matcher is not None else HungarianMatcher()
        self.eos_coef = eos_coef
        self.num_layers = dec_layers if aux_loss else 1
        self.weight_dict = weight_dict(self.num_layers, weights)
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, torch.Tensor]:
        """``outputs``: ``pred_logits`` ``[B,Q,num_classes+1]``, ``pred_boxes`` ``[B,Q,4]``, ``aux_outputs``.
        ``targets``: per image ``labels`` int64 ``[n]`` (category ids) and ``boxes`` ``[n,4]`` (cxcywh in [0,1]).
        """
        num_boxes = self.num_boxes(targets, outputs["pred_logits"].device)
        layers = [outputs] + list(outputs.get("aux_outputs", []))[: self.num_layers - 1]
        losses = {}
        for suffix, out in zip(layer_suffixes(len(layers)), layers):
            out = {"pred_logits": out["pred_logits"].float(), "pred_boxes": out["pred_boxes"].float()}
            indices = self.matcher(out, targets)
            terms = {**self.loss_labels(out, targets, indices, log=suffix == ""),
                     **self.loss_cardinality(out, targets),
                     **self.loss_boxes(out, targets, indices, num_boxes)}
            losses.update({k + suffix: v for k, v in terms.items()})
        return losses

    @staticmethod
    def num_boxes(targets: list[dict], device: torch.device) -> float:
        """Target boxes in the batch, averaged over processes when distributed (as published), at least 1."""
        n = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        world = 1
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(n)
            world = dist.get_world_size()
        return torch.clamp(n / world, min=1).item()

    def loss_labels(self, outputs, targets, indices, log=True) -> dict:
        """Cross-entropy over all ``B·Q`` queries; unmatched queries are labelled "no object" (weight
        ``eos_coef``); PyTorch's weighted mean divides by the sum of the weights, not by ``num_boxes``."""
        logits = outputs["pred_logits"]  # (B, Q, K+1)
        idx = _batch_index(indices)
        matched = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(logits.device)
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        target_classes[idx] = matched
        out = {"loss_ce": F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)}
        if log:
            if matched.numel() == 0:
                out["class_error"] = torch.tensor(100.0, device=logits.device)
            else:
                acc = (logits[idx].argmax(-1) == matched).float().mean() * 100
                out["class_error"] = 100 - acc.detach()
        return out

    @torch.no_grad()
    def loss_cardinality(self, outputs, targets) -> dict:
        """Mean over images of |#queries not predicting "no object" − #targets| (logged only)."""
        logits = outputs["pred_logits"]
        n_pred = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1).float()
        n_tgt = torch.as_tensor([len(t["labels"]) for t in targets], dtype=torch.float32, device=logits.device)
        return {"cardinality_error": F.l1_loss(n_pred, n_tgt)}

    def loss_boxes(self, outputs, targets, indices, num_boxes: float) -> dict:
        """L1 on (cx, cy, w, h) and 1 − GIoU, summed over matched pairs and divided by ``num_boxes``."""
        src = outputs["pred_boxes"][_batch_index(indices)]  # (N, 4)
        tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(src).reshape(-1, 4)
        loss_bbox = F.l1_loss(src, tgt, reduction="sum") / num_boxes
        loss_giou = generalized_box_iou_loss(box_convert(src, "cxcywh", "xyxy"), box_convert(tgt, "cxcywh", "xyxy"),
                                             reduction="sum") / num_boxes
        return {"loss_bbox": loss_bbox, "loss_giou": loss_giou}


def _batch_index(indices):
    batch = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    return batch, torch.cat([src for src, _ in indices])


def layer_suffixes(num_layers: int) -> list[str]:
    """Key suffixes in layer order: the final layer ``""``, then ``_0 … _{L-2}`` for the auxiliary layers."""
    return [""] + [f"_{i}" for i in range(num_layers - 1)]


def weight_dict(num_layers: int, weights: dict | None = None) -> dict[str, float]:
    """The weight of every term of every decoder layer (``loss_ce``, ``loss_bbox``, ``loss_giou``, then the same with
    ``_0 … _{L-2}``): :data:`DEFAULT_WEIGHTS` updated with ``weights``, the same for every layer."""
    weights = dict(DEFAULT_WEIGHTS, **(weights or {}))
    return {k + s: weights[k] for s in layer_suffixes(num_layers) for k in TERMS}


def weighted_total(loss_dict: dict, weight_dict: dict) -> torch.Tensor:
    """Σ weight · term over ``weight_dict``: the training loss, and the original study's "validation loss"."""
    return sum(loss_dict[k] * w for k, w in weight_dict.items() if k in loss_dict)


def final_layer_loss(loss_dict: dict, weight_dict: dict) -> torch.Tensor:
    """Weighted loss of the last decoder layer only: the predictions a user actually gets."""
    return sum(loss_dict[k] * weight_dict[k] for k in TERMS)


def per_layer_mean_loss(loss_dict: dict, weight_dict: dict, num_layers: int) -> torch.Tensor:
    """``weighted_total / num_layers``: the total on a scale that does not grow with decoder depth."""
    return weighted_total(loss_dict, weight_dict) / num_layers


#: the three views of a loss, by name: the total (the original study's metric), the final layer's, the per-layer mean
LOSS_VIEWS = ("loss_total", "loss_final", "loss_layer_mean")


def loss_views(loss_dict: dict, weight_dict: dict, num_layers: int) -> dict:
    """The loss in its three views, keyed by :data:`LOSS_VIEWS` (``loss_dict``'s values may be floats, tensors or
    pandas columns)."""
    return {"loss_total": weighted_total(loss_dict, weight_dict),
            "loss_final": final_layer_loss(loss_dict, weight_dict),
            "loss_layer_mean": per_layer_mean_loss(loss_dict, weight_dict, num_layers)}
