"""One batch through DETR's set loss, step by step, computed rather than told: the matcher's cost matrix of one image
split into its three weighted terms (:func:`cost_terms`), the assignment it picks (:func:`assignment_table`), and
every loss term of every decoder layer with the total as their sum (:func:`layer_loss_table`), which is where the
original study's total grows with decoder depth. Used by 03_baseline's lesson section; the computation itself is
:class:`~detr_nb_utils.models.matcher.HungarianMatcher` and :class:`~detr_nb_utils.models.loss.SetCriterion`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, generalized_box_iou

from ..models.loss import TERMS, layer_suffixes
from ..models.matcher import HungarianMatcher

#: the matcher's cost terms, in the order they are drawn
COST_TERMS = ("class", "L1", "GIoU", "total")


@torch.no_grad()
def cost_terms(outputs: Mapping, target: Mapping, matcher: HungarianMatcher, image: int = 0) -> dict[str, np.ndarray]:
    """The final layer's cost matrix of image ``image`` of a batch, term by term, each ``[Q, n]`` float (queries x
    targets), weighted as the matcher weighs it: ``class`` = −cost_class · p(target class), ``L1`` = cost_bbox ·
    L1 distance of the (cx, cy, w, h) boxes, ``GIoU`` = −cost_giou · generalised IoU, and ``total``, their sum, which
    is :meth:`HungarianMatcher.cost_matrices`'s matrix (a test checks it). ``outputs``: the model's
    ``pred_logits`` ``[B, Q, K+1]`` and ``pred_boxes`` ``[B, Q, 4]``; ``target``: that image's ``labels`` ``[n]``
    and normalised ``boxes`` ``[n, 4]``."""
    prob = outputs["pred_logits"][image].float().softmax(-1).cpu()
    boxes = outputs["pred_boxes"][image].float().cpu()
    labels, tgt = target["labels"].cpu(), target["boxes"].float().cpu().reshape(-1, 4)
    terms = {"class": -matcher.cost_class * prob[:, labels],
             "L1": matcher.cost_bbox * torch.cdist(boxes, tgt, p=1),
             "GIoU": -matcher.cost_giou * generalized_box_iou(box_convert(boxes, "cxcywh", "xyxy"),
                                                               box_convert(tgt, "cxcywh", "xyxy"))}
    terms["total"] = terms["class"] + terms["L1"] + terms["GIoU"]
    return {k: v.numpy() for k, v in terms.items()}


def assignment_table(terms: Mapping[str, np.ndarray], labels: Sequence[int], names: Mapping[int, str]) -> pd.DataFrame:
    """The assignment the Hungarian algorithm picks on ``terms["total"]`` (:func:`cost_terms`): one row per target
    with its ``class`` name, the ``query`` it gets, the matched pair's cost term by term, and ``cheapest query``, the
    query with the lowest total cost for this target alone (a greedy choice; it differs from ``query`` where two
    targets want the same query). The assigned pairs' total cost is the minimum over all one-to-one assignments."""
    rows, cols = linear_sum_assignment(terms["total"])
    order = np.argsort(cols)
    table = pd.DataFrame({"class": [names.get(int(labels[c]), str(int(labels[c]))) for c in cols[order]],
                          "query": rows[order]}, index=pd.Index(cols[order], name="target"))
    for k in COST_TERMS:
        table[f"cost {k}"] = terms[k][rows[order], cols[order]]
    table["cheapest query"] = terms["total"].argmin(0)[cols[order]]
    return table


def layer_loss_table(loss_dict: Mapping, weights: Mapping[str, float], num_layers: int) -> pd.DataFrame:
    """Every loss term of every decoder layer (rows ``layer 1 … layer L``, the last being the output a user gets):
    the unweighted ``loss_ce`` (cross-entropy over all queries, "no object" weighted ``eos_coef``), ``loss_bbox``
    and ``loss_giou``, and ``weighted`` (Σ weight · term, the layer's loss). A last row ``total`` sums the layers:
    its ``weighted`` is the training loss and the original study's validation loss, so it grows with the number of
    layers. ``loss_dict``: :class:`~detr_nb_utils.models.loss.SetCriterion`'s output (tensors or floats);
    ``weights``: its ``weight_dict``. ``attrs["weights"]``: each term's weight."""
    suffixes = layer_suffixes(num_layers)  # final layer first, then auxiliary layers 0 … L-2
    ordered = suffixes[1:] + suffixes[:1]  # in depth order
    rows = {}
    for depth, suffix in enumerate(ordered, start=1):
        row = {t: float(loss_dict[t + suffix]) for t in TERMS}
        row["weighted"] = sum(weights[t + suffix] * row[t] for t in TERMS)
        rows[f"layer {depth}"] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.loc["total"] = table.sum()
    table = table.rename_axis("decoder layer")
    table.attrs["weights"] = {t: float(weights[t]) for t in TERMS}  # the same for every layer
    return table


def layer_loss_sentence(table: pd.DataFrame, eos_coef: float, shallow_layers: int = 3) -> str:
    """What :func:`layer_loss_table` shows, in words with its numbers: the total as the sum of the layers, the final
    layer's share, and what a model cut to its first ``shallow_layers`` layers would total on the same batch."""
    layers = table.drop(index="total")["weighted"]
    total, final = table.loc["total", "weighted"], layers.iloc[-1]
    cut = layers.iloc[:shallow_layers].sum()
    return (f"On this batch the training loss is {total:.3f}: the sum of the {len(layers)} decoder layers' losses "
            f"(each weighs its cross-entropy, where the queries matched to nothing count with weight {eos_coef:g}, "
            f"its L1 and its GIoU term). The final layer, the output a user gets, accounts for {final:.3f} "
            f"({100 * final / total:.0f}%). A decoder cut to its first {shallow_layers} layers computes exactly "
            f"layers 1-{shallow_layers} here, so its total would be {cut:.3f}, {100 * cut / total:.0f}% of this one, "
            f"before any training: the original study's total loss shrinks with depth by construction.")
