"""Hungarian matching between DETR's predictions and the ground-truth boxes (paper Sec. 3.1, Eq. 1).

Used by :class:`~detr_nb_utils.models.loss.SetCriterion` (notebooks 03-05) and by the query-usage analysis.
"""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets at minimum cost.

    cost = cost_class · (−softmax probability of the target class) + cost_bbox · L1(cxcywh)
    − cost_giou · GIoU(xyxy). Each image is solved on its own with
    :func:`scipy.optimize.linear_sum_assignment`; with ``Q ≥ n`` every target is matched.
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0) -> None:
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: at least one of cost_class, cost_bbox, cost_giou must be non-zero")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou

    @torch.no_grad()
    def cost_matrices(self, outputs: dict, targets: list[dict]) -> list[torch.Tensor]:
        """Per image, the float32 cost matrix ``[Q, n_i]`` on the CPU.

        ``outputs``: ``pred_logits`` ``[B,Q,num_classes+1]``, ``pred_boxes`` ``[B,Q,4]`` (cxcywh, normalised).
        ``targets``: per image ``labels`` int64 ``[n_i]`` and ``boxes`` ``[n_i,4]`` (cxcywh, normalised).
        """
        bs, nq = outputs["pred_logits"].shape[:2]
        prob = outputs["pred_logits"].flatten(0, 1).float().softmax(-1)  # (B*Q, K+1)
        out_boxes = outputs["pred_boxes"].flatten(0, 1).float()  # (B*Q, 4)
        tgt_ids = torch.cat([t["labels"] for t in targets]).to(prob.device)
        tgt_boxes = torch.cat([t["boxes"] for t in targets]).to(out_boxes).reshape(-1, 4)
        # the batch is costed in one go; each image then keeps only its own columns
        cost = (self.cost_bbox * torch.cdist(out_boxes, tgt_boxes, p=1)
                - self.cost_class * prob[:, tgt_ids]
                - self.cost_giou * generalized_box_iou(box_convert(out_boxes, "cxcywh", "xyxy"),
                                                       box_convert(tgt_boxes, "cxcywh", "xyxy")))
        cost = cost.view(bs, nq, -1).cpu()
        sizes = [len(t["boxes"]) for t in targets]
        return [c[i] for i, c in enumerate(cost.split(sizes, -1))]

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Returns, per image, ``(pred_indices, target_indices)`` int64 tensors of length ``min(Q, n_i)``,
        ``pred_indices`` ascending; empty tensors for an image without targets."""
        pairs = []
        for c in self.cost_matrices(outputs, targets):
            rows, cols = linear_sum_assignment(c.numpy())
            pairs.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return pairs
