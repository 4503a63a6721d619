"""COCO evaluation of DETR: COCO AP of the final and of every decoder layer, and the validation losses.

``evaluate`` makes one pass over the validation loader and returns COCO AP of the final layer (and of every
auxiliary decoder layer, the paper's Fig. 4) together with the validation losses on three scales (see
:mod:`detr_nb_utils.models.loss` for why totals of different depths must not be compared). Used by notebooks 02-05
through :mod:`.engine`, and by 06_analysis through the metrics the engine writes.

Batch size matters at evaluation: images of a batch are padded (bottom/right) to the largest one, and the
padding changes the backbone's feature-map grid and the masks the transformer sees, so AP moves a little with
the batch composition. The published numbers use 2 images per batch.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist
from pycocotools.coco import COCO
from torch import nn
from torchvision.ops import box_convert
from tqdm.auto import tqdm

from ..data.label_map import LabelMap
from ..models.fast import cached_folded_weights, model_forward
from ..models.loss import loss_views
from ..models.postprocess import postprocess
from .coco_eval import mean_precision, results_array, run_cocoeval, start_layer_aps
from .non_finite import EVALUATION_ADVICE, finite_flags, raise_if_outputs_non_finite
from .runtime import is_distributed, rank_world

# COCOeval.stats in order: AP at IoU .50:.95, .50, .75, small/medium/large, then AR at 1/10/100 detections
# and AR small/medium/large (maxDets 100). Values are fractions in [0, 1]; the paper prints them x100.
STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def detection_arrays(detections: dict[int, dict]) -> dict[str, np.ndarray]:
    """Detections (image id -> :func:`~detr_nb_utils.models.postprocess.postprocess` output) as flat arrays, the
    run folder's compact form: ``image_id`` int64 [N], ``category_id`` int64 [N], ``score`` float32 [N], ``bbox``
    float32 [N,4] (x, y, w, h in pixels). :mod:`detr_nb_utils.analysis.bootstrap` bootstraps AP from them."""
    parts = [(np.full(len(d["scores"]), image_id, np.int64), d["labels"].cpu().numpy().astype(np.int64),
              d["scores"].float().cpu().numpy(), box_convert(d["boxes"].float().cpu(), "xyxy", "xywh").numpy())
             for image_id, d in detections.items()]
    if not parts:
        return {"image_id": np.zeros(0, np.int64), "category_id": np.zeros(0, np.int64),
                "score": np.zeros(0, np.float32), "bbox": np.zeros((0, 4), np.float32)}
    image_id, category_id, score, bbox = (np.concatenate(p) for p in zip(*parts))
    return {"image_id": image_id, "category_id": category_id, "score": score, "bbox": bbox}


def _results(detections: dict[int, dict]) -> np.ndarray:
    return results_array(detection_arrays(detections))


def coco_evaluate(coco_gt: COCO, detections: dict[int, dict], img_ids: list[int] | None = None,
                  per_category: bool = True, verbose: bool = False) -> dict:
    """COCO bbox metrics of ``detections`` (image id -> :func:`postprocess` output) against ``coco_gt``.

    Only ``img_ids`` are scored (default: the images in ``detections``; an image listed without detections
    counts its ground truth as missed). Returns the :data:`STATS` as floats in [0, 1] (NaN where the images hold
    no ground truth of that size) and, when ``per_category``, ``per_category_AP``: category name -> AP (NaN for
    categories absent from those images), ready for ``pandas.Series``. COCOeval's printing is silenced unless
    ``verbose``.
    """
    ev = run_cocoeval(coco_gt, _results(detections), sorted(detections) if img_ids is None else sorted(img_ids),
                      verbose=verbose)
    out = {k: (float(v) if v >= 0 else math.nan) for k, v in zip(STATS, ev.stats)}
    if per_category:
        precision = ev.eval["precision"][:, :, :, 0, -1]  # (iou, recall, category) at area all, 100 detections
        scored = {c: mean_precision(precision[:, :, k]) for k, c in enumerate(ev.params.catIds)}
        out["per_category_AP"] = {coco_gt.cats[c]["name"]: scored.get(c, math.nan) for c in sorted(coco_gt.getCatIds())}
    return out


def _gather(sums: dict, batches: int, dets: list[dict]) -> tuple[dict, int, list[dict]]:
    """Merge every process's loss sums and detections (images duplicated by a distributed sampler's padding
    count once in AP, but twice in the loss averages)."""
    if not is_distributed():
        return sums, batches, dets
    parts = [None] * rank_world()[1]
    dist.all_gather_object(parts, (sums, batches, dets))
    sums = {k: sum(p[0][k] for p in parts) for k in parts[0][0]}
    merged = [{} for _ in dets]
    for _, _, part in parts:
        for layer, d in zip(merged, part):
            layer.update(d)
    return sums, sum(p[1] for p in parts), merged


def _start_layer_metrics(coco_gt: COCO, dets: list[dict], img_ids: list[int], workers: int | None):
    """Start AP and AP50 of decoder layers ``0 … L-2`` (the last is the final AP) in worker processes when there
    are enough images (:func:`.coco_eval.start_layer_aps`); returns the function that waits for
    them as ``AP_layer_l``, ``AP50_layer_l``."""
    wait = start_layer_aps(coco_gt, [_results(d) for d in dets[:-1]], img_ids, workers)

    def collect() -> dict:
        out = {}
        for layer, (ap, ap50) in enumerate(wait()):
            out[f"AP_layer_{layer}"], out[f"AP50_layer_{layer}"] = ap, ap50
        return out
    return collect


def _evaluate_batch(model, criterion, images, mask, targets, device, amp_dtype, channels_last, per_layer_ap,
                    sums: dict, dets: list, labels: LabelMap | None, batch: int) -> None:
    """One batch (number ``batch``) of :func:`evaluate`: forward, the outputs checked to be finite
    (:class:`~.non_finite.NonFiniteOutputError`), losses added to ``sums``, detections of each layer into ``dets``
    (their labels the category ids of ``labels``, the ground truth's)."""
    images, mask = images.to(device, non_blocking=True), mask.to(device, non_blocking=True)
    outputs = model_forward(model, images, mask, amp_dtype, channels_last)
    finite = finite_flags(outputs)
    where = f"evaluation batch {batch} (image ids {[int(t['image_id']) for t in targets]})"
    try:
        loss_dict = criterion(outputs, [{k: t[k].to(device) for k in ("labels", "boxes")} for t in targets])
    except (ValueError, RuntimeError):  # the matcher refuses NaN costs: name the outputs they came from
        raise_if_outputs_non_finite(finite, outputs, where, EVALUATION_ADVICE)
        raise
    # the loss terms and the flags in one transfer (one synchronisation instead of one per term)
    values = torch.cat([torch.stack([v.detach().float() for v in loss_dict.values()]), finite.float()]).tolist()
    raise_if_outputs_non_finite(values[len(loss_dict):], outputs, where, EVALUATION_ADVICE)
    for k, v in zip(loss_dict, values):
        sums[k] = sums.get(k, 0.0) + v
    orig_sizes = torch.stack([torch.as_tensor(t["orig_size"]) for t in targets])
    layers = [*outputs.get("aux_outputs", []), outputs] if per_layer_ap else [outputs]
    for store, out in zip(dets, layers):
        for t, det in zip(targets, postprocess(out, orig_sizes)):
            det = {k: v.cpu() for k, v in det.items()}
            if labels is not None and labels.label_space != "coco":
                det["labels"] = torch.from_numpy(labels.to_id(det["labels"].numpy()))
            store[int(t["image_id"])] = det


@torch.no_grad()
def evaluate(model: nn.Module, criterion: nn.Module, loader, coco_gt: COCO, device: torch.device | str,
             amp_dtype: torch.dtype | None = None, channels_last: bool = False, per_layer_ap: bool = True,
             progress: bool = False, verbose: bool = False, keep_detections: bool = False,
             cocoeval_workers: int | None = None, labels: LabelMap | None = None,
             keep_layer_detections: bool = False) -> dict:
    """One pass over ``loader``: COCO metrics of the final layer and of every decoder layer, and the losses.

    ``loader`` yields :func:`detr_nb_utils.data.coco.collate_fn` batches (``images``, ``mask``, ``targets`` with
    ``image_id`` and ``orig_size`` (h, w)); batch 2 as published (see the module docstring). ``criterion`` is a
    :class:`~detr_nb_utils.models.loss.SetCriterion` matching the model's depth. Under ``torch.distributed`` every
    process evaluates its shard; the detections are gathered and only rank 0 gets the COCO metrics.

    Returns floats: :data:`STATS` and ``per_category_AP`` (final layer), ``AP_layer_l``/``AP50_layer_l`` for
    ``l = 0 … L-1`` (``L-1`` is the final layer), ``loss_total`` (Σ weight·term over all layers, the original
    study's "validation loss"), ``loss_final`` (last layer only), ``loss_layer_mean`` (total / L), every unweighted term
    of the criterion averaged over batches, and ``num_images``; with ``keep_detections``, also ``detections``:
    the final layer's :func:`detection_arrays` (rank 0), for the bootstrap of 06_analysis; with
    ``keep_layer_detections`` (and ``per_layer_ap``), ``layer_detections``: the auxiliary layers' (first layer
    first), for the error breakdown per decoder layer. ``cocoeval_workers``:
    processes scoring the auxiliary layers while this one scores the final layer (``None``: one per layer up to
    the cores but one, from 500 images; 0: all in this process). ``labels``: the run's label map, which turns the
    model's class indices into the ground truth's category ids (None: COCO's label space, where they are the same),
    so that AP and the saved detections are in the dataset's own ids. Raises
    :class:`~.non_finite.NonFiniteOutputError` naming the batch, its images and the outputs when the model's outputs
    are NaN or infinite (checked before the matcher, read with the batch's loss terms).
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
                            sums, dets, labels, batches)
            batches += 1
    sums, batches, dets = _gather(sums, batches, dets)
    metrics = {k: v / batches for k, v in sums.items()}
    metrics |= {k: float(v) for k, v in loss_views(metrics, criterion.weight_dict, num_layers).items()}
    metrics["num_images"] = len(dets[-1])
    if rank_world()[0] != 0:
        return metrics
    img_ids = sorted(dets[-1])
    layer_metrics = _start_layer_metrics(coco_gt, dets, img_ids, cocoeval_workers) if per_layer_ap else dict
    try:  # the final layer is scored here while worker processes score the others
        metrics.update(coco_evaluate(coco_gt, dets[-1], img_ids, verbose=verbose))
    finally:
        metrics.update(layer_metrics())
    if keep_detections:
        metrics["detections"] = detection_arrays(dets[-1])
    if keep_layer_detections and per_layer_ap:
        metrics["layer_detections"] = [detection_arrays(d) for d in dets[:-1]]
    if per_layer_ap:
        metrics[f"AP_layer_{num_layers - 1}"], metrics[f"AP50_layer_{num_layers - 1}"] = metrics["AP"], metrics["AP50"]
    return metrics
