"""COCO evaluation of DETR: the published post-processing, COCOeval, AP per decoder layer, validation losses.

``evaluate`` makes one pass over the validation loader and returns COCO AP of the final layer (and of every
auxiliary decoder layer, the paper's Fig. 4) together with the validation losses on three scales (see
:mod:`detr_nb_utils.loss` for why totals of different depths must not be compared). Used by notebooks 02-05
through :mod:`detr_nb_utils.engine`, and by 06_analysis through the metrics the engine writes.

Batch size matters at evaluation: images of a batch are padded (bottom/right) to the largest one, and the
padding changes the backbone's feature-map grid and the masks the transformer sees, so AP moves a little with
the batch composition. The published numbers use 2 images per batch.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from torchvision.ops import box_convert
from tqdm.auto import tqdm

from .backbone import cached_folded_weights
from .coco_metrics import ap_ap50, mean_precision, run_cocoeval, start_layer_aps
from .loss import final_layer_loss, per_layer_mean_loss, weighted_total
from .precision import model_forward

# COCOeval.stats in order: AP at IoU .50:.95, .50, .75, small/medium/large, then AR at 1/10/100 detections
# and AR small/medium/large (maxDets 100). Values are fractions in [0, 1]; the paper prints them x100.
STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@torch.no_grad()
def postprocess(outputs: dict, orig_sizes: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """DETR's published ``PostProcess``: one detection per query, no threshold, no NMS.

    Args:
        outputs: ``pred_logits`` ``[B,Q,num_classes+1]``, ``pred_boxes`` ``[B,Q,4]`` (cx, cy, w, h in [0, 1]).
        orig_sizes: ``[B,2]`` original image ``(height, width)`` in pixels.

    Returns:
        Per image ``scores`` ``[Q]`` (softmax over all classes, best real class; never "no object"),
        ``labels`` ``[Q]`` (category ids) and ``boxes`` ``[Q,4]`` (x0, y0, x1, y1) in original-image pixels.
    """
    prob = F.softmax(outputs["pred_logits"].float(), -1)
    scores, labels = prob[..., :-1].max(-1)
    boxes = box_convert(outputs["pred_boxes"].float(), "cxcywh", "xyxy")
    h, w = orig_sizes.to(boxes).unbind(1)
    boxes = boxes * torch.stack([w, h, w, h], dim=1)[:, None, :]
    return [{"scores": s, "labels": l, "boxes": b} for s, l, b in zip(scores, labels, boxes)]


def _results_array(detections: dict[int, dict]) -> np.ndarray:
    """``[N,7]`` rows ``(image_id, x, y, w, h, score, category_id)``, COCO's result format."""
    rows = []
    for image_id, det in detections.items():
        xywh = box_convert(det["boxes"].float().cpu(), "xyxy", "xywh")
        ids = torch.full_like(det["scores"], float(image_id)).cpu()
        rows.append(torch.cat([ids[:, None], xywh, det["scores"].cpu()[:, None],
                               det["labels"].cpu().to(xywh)[:, None]], 1).double().numpy())
    return np.concatenate(rows) if rows else np.zeros((0, 7))


def detection_arrays(detections: dict[int, dict]) -> dict[str, np.ndarray]:
    """Detections (image id -> :func:`postprocess` output) as flat arrays, the run folder's compact form:
    ``image_id`` int64 [N], ``category_id`` int64 [N], ``score`` float32 [N], ``bbox`` float32 [N,4] (x, y, w, h in
    pixels). :mod:`detr_nb_utils.stats` bootstraps AP from them."""
    r = _results_array(detections)
    return {"image_id": r[:, 0].astype(np.int64), "category_id": r[:, 6].astype(np.int64),
            "score": r[:, 5].astype(np.float32), "bbox": r[:, 1:5].astype(np.float32)}


def _cocoeval(coco_gt: COCO, detections: dict[int, dict], img_ids: list[int], all_areas: bool = True,
              verbose: bool = False) -> COCOeval:
    """:func:`detr_nb_utils.coco_metrics.run_cocoeval` on :func:`postprocess` detections."""
    return run_cocoeval(coco_gt, _results_array(detections), img_ids, all_areas=all_areas, verbose=verbose)


def coco_evaluate(coco_gt: COCO, detections: dict[int, dict], img_ids: list[int] | None = None,
                  per_category: bool = True, verbose: bool = False) -> dict:
    """COCO bbox metrics of ``detections`` (image id -> :func:`postprocess` output) against ``coco_gt``.

    Only ``img_ids`` are scored (default: the images in ``detections``; an image listed without detections
    counts its ground truth as missed). Returns the :data:`STATS` as floats in [0, 1] (NaN where the images hold
    no ground truth of that size) and, when ``per_category``, ``per_category_AP``: category name -> AP (NaN for
    categories absent from those images), ready for ``pandas.Series``. COCOeval's printing is silenced unless
    ``verbose``.
    """
    ev = _cocoeval(coco_gt, detections, sorted(detections) if img_ids is None else sorted(img_ids), verbose=verbose)
    out = {k: (float(v) if v >= 0 else math.nan) for k, v in zip(STATS, ev.stats)}
    if per_category:
        precision = ev.eval["precision"][:, :, :, 0, -1]  # (iou, recall, category) at area all, 100 detections
        out["per_category_AP"] = {coco_gt.cats[c]["name"]: mean_precision(precision[:, :, k])
                                  for k, c in enumerate(ev.params.catIds)}
    return out


def coco_ap(coco_gt: COCO, detections: dict[int, dict], img_ids: list[int]) -> tuple[float, float]:
    """``(AP, AP50)`` of ``detections`` only, as :func:`coco_evaluate` computes them but faster (for every
    decoder layer)."""
    return ap_ap50(coco_gt, _results_array(detections), img_ids)


def _is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather(sums: dict, batches: int, dets: list[dict]) -> tuple[dict, int, list[dict]]:
    """Merge every process's loss sums and detections (images duplicated by a distributed sampler's padding
    count once in AP, but twice in the loss averages)."""
    if not _is_dist():
        return sums, batches, dets
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (sums, batches, dets))
    sums = {k: sum(p[0][k] for p in parts) for k in parts[0][0]}
    merged = [{} for _ in dets]
    for _, _, part in parts:
        for layer, d in zip(merged, part):
            layer.update(d)
    return sums, sum(p[1] for p in parts), merged


def _start_layer_metrics(coco_gt: COCO, dets: list[dict], img_ids: list[int], workers: int | None):
    """Start AP and AP50 of decoder layers ``0 … L-2`` (the last is the final AP) in worker processes when there
    are enough images (:func:`detr_nb_utils.coco_metrics.start_layer_aps`); returns the function that waits for
    them as ``AP_layer_l``, ``AP50_layer_l``."""
    wait = start_layer_aps(coco_gt, [_results_array(d) for d in dets[:-1]], img_ids, workers)

    def collect() -> dict:
        out = {}
        for layer, (ap, ap50) in enumerate(wait()):
            out[f"AP_layer_{layer}"], out[f"AP50_layer_{layer}"] = ap, ap50
        return out
    return collect


def _evaluate_batch(model, criterion, images, mask, targets, device, amp_dtype, channels_last, per_layer_ap,
                    sums: dict, dets: list) -> None:
    """One batch of :func:`evaluate`: forward, losses added to ``sums``, detections of each layer into ``dets``."""
    images, mask = images.to(device, non_blocking=True), mask.to(device, non_blocking=True)
    outputs = model_forward(model, images, mask, amp_dtype, channels_last)
    loss_dict = criterion(outputs, [{k: t[k].to(device) for k in ("labels", "boxes")} for t in targets])
    for k, v in loss_dict.items():
        sums[k] = sums.get(k, 0.0) + float(v)
    orig_sizes = torch.stack([torch.as_tensor(t["orig_size"]) for t in targets])
    layers = [*outputs.get("aux_outputs", []), outputs] if per_layer_ap else [outputs]
    for store, out in zip(dets, layers):
        for t, det in zip(targets, postprocess(out, orig_sizes)):
            store[int(t["image_id"])] = {k: v.cpu() for k, v in det.items()}


@torch.no_grad()
def evaluate(model: nn.Module, criterion: nn.Module, loader, coco_gt: COCO, device: torch.device | str,
             amp_dtype: torch.dtype | None = None, channels_last: bool = False, per_layer_ap: bool = True,
             progress: bool = False, verbose: bool = False, keep_detections: bool = False,
             cocoeval_workers: int | None = None) -> dict:
    """One pass over ``loader``: COCO metrics of the final layer and of every decoder layer, and the losses.

    ``loader`` yields :func:`detr_nb_utils.data.collate_fn` batches (``images``, ``mask``, ``targets`` with
    ``image_id`` and ``orig_size`` (h, w)); batch 2 as published (see the module docstring). ``criterion`` is a
    :class:`~detr_nb_utils.loss.SetCriterion` matching the model's depth. Under ``torch.distributed`` every
    process evaluates its shard; the detections are gathered and only rank 0 gets the COCO metrics.

    Returns floats: :data:`STATS` and ``per_category_AP`` (final layer), ``AP_layer_l``/``AP50_layer_l`` for
    ``l = 0 … L-1`` (``L-1`` is the final layer), ``loss_total`` (Σ weight·term over all layers, the seed's
    "validation loss"), ``loss_final`` (last layer only), ``loss_layer_mean`` (total / L), every unweighted term
    of the criterion averaged over batches, and ``num_images``; with ``keep_detections``, also ``detections``:
    the final layer's :func:`detection_arrays` (rank 0), for the bootstrap of 06_analysis. ``cocoeval_workers``:
    processes scoring the auxiliary layers while this one scores the final layer (``None``: one per layer up to
    the cores but one, from 500 images; 0: all in this process).
    """
    if len(loader.dataset) == 0:
        raise ValueError("evaluate: the validation set is empty; check n_val / max_val_images and the split")
    model.eval()
    criterion.eval()
    num_layers = criterion.num_layers
    dets: list[dict] = [{} for _ in range(num_layers if per_layer_ap else 1)]
    sums: dict[str, float] = {}
    batches = 0
    with cached_folded_weights(model):  # fast mode: the folded bf16 conv weights made once for the pass
        for images, mask, targets in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
            _evaluate_batch(model, criterion, images, mask, targets, device, amp_dtype, channels_last, per_layer_ap,
                            sums, dets)
            batches += 1
    sums, batches, dets = _gather(sums, batches, dets)
    metrics = {k: v / batches for k, v in sums.items()}
    for name, fn in (("loss_total", weighted_total), ("loss_final", final_layer_loss)):
        metrics[name] = float(fn(metrics, criterion.weight_dict))
    metrics["loss_layer_mean"] = float(per_layer_mean_loss(metrics, criterion.weight_dict, num_layers))
    metrics["num_images"] = len(dets[-1])
    if _is_dist() and dist.get_rank() != 0:
        return metrics
    img_ids = sorted(dets[-1])
    layer_metrics = _start_layer_metrics(coco_gt, dets, img_ids, cocoeval_workers) if per_layer_ap else dict
    try:  # the final layer is scored here while worker processes score the others
        metrics.update(coco_evaluate(coco_gt, dets[-1], img_ids, verbose=verbose))
    finally:
        metrics.update(layer_metrics())
    if keep_detections:
        metrics["detections"] = detection_arrays(dets[-1])
    if per_layer_ap:
        metrics[f"AP_layer_{num_layers - 1}"], metrics[f"AP50_layer_{num_layers - 1}"] = metrics["AP"], metrics["AP50"]
    return metrics
