"""AP broken down: by class with its 95% interval over the validation images, by object size (AP and AR at 1, 10
and 100 detections, with the number of objects of each size), and COCOeval's own precision-recall curves.

Everything is read from one ``COCOeval`` of a detection set (:func:`evaluate_detections`), or, for the intervals,
from the bootstrap's matched detections (:class:`~.bootstrap.MatchedDetections`, the same per-image matching
re-scored on resampled images): nothing re-implements COCO's matching or its interpolated precision.

Sizes are COCO's: an object is small below 32² pixels of area, medium up to 96², large above (the annotation's
``area``: in COCO the mask's pixel area, in the demo the shape's); crowd regions are no objects. A size with no
object in the images has no AP: its row says so (``note``) instead of a blank ``APl``. AP and AR are fractions in
COCOeval; the tables give points (x100, as the paper prints them). Used by notebooks 03-05, 07 and 06_analysis
(through :mod:`.diagnostics`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..training.coco_eval import mean_precision, results_array, run_cocoeval
from .bootstrap import LEVEL, MatchedDetections, resample_counts

#: COCO's size ranges, in COCOeval's order, with what each means
SIZES = {"all": "every object", "small": "area below 32² px", "medium": "area 32² to 96² px",
         "large": "area above 96² px"}
#: the IoU thresholds the precision-recall curves are drawn at (COCO's AP50 and AP75)
PR_IOUS = (0.5, 0.75)


def evaluate_detections(coco_gt: COCO, detections: Mapping[str, np.ndarray],
                        img_ids: Sequence[int] | None = None) -> COCOeval:
    """COCOeval (bbox) of flat detection arrays (a run folder's ``detections/epoch_N.npz``) on ``img_ids``
    (default: the images the detections cover), evaluated, accumulated and summarized, every size range."""
    img_ids = sorted(int(i) for i in (np.unique(detections["image_id"]) if img_ids is None else img_ids))
    return run_cocoeval(coco_gt, results_array(detections, img_ids), img_ids)


def size_objects(ev: COCOeval) -> dict[str, int]:
    """The ground-truth objects of each size range in the evaluated images (crowd regions left out), counted as
    COCOeval counts them (its ``gtIgnore``)."""
    p = ev.params
    n_area, n_img = len(p.areaRng), len(p.imgIds)
    counts = dict.fromkeys(p.areaRngLbl, 0)
    for index, e in enumerate(ev.evalImgs):
        if e is not None:
            counts[p.areaRngLbl[(index // n_img) % n_area]] += int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
    return counts


def _mean_recall(r: np.ndarray) -> float:
    return float(r[r > -1].mean()) if (r > -1).any() else math.nan


def size_table(ev: COCOeval) -> pd.DataFrame:
    """One row per size range (all, small, medium, large): ``objects`` (ground truth of that size), ``AP``,
    ``AP50``, ``AP75`` (100 detections per image) and ``AR1``, ``AR10``, ``AR100`` (recall at that many detections
    per image), points; ``note`` says why a row has no AP ("no large objects in these images")."""
    p, precision, recall = ev.params, ev.eval["precision"], ev.eval["recall"]  # [T,R,K,A,M], [T,K,A,M]
    objects = size_objects(ev)
    t50, t75 = (int(np.argmin(np.abs(p.iouThrs - t))) for t in (0.5, 0.75))
    rows = {}
    for a, size in enumerate(p.areaRngLbl):
        row = {"objects": objects[size], "AP": 100 * mean_precision(precision[:, :, :, a, -1]),
               "AP50": 100 * mean_precision(precision[t50, :, :, a, -1]),
               "AP75": 100 * mean_precision(precision[t75, :, :, a, -1])}
        row |= {f"AR{m}": 100 * _mean_recall(recall[:, :, a, k]) for k, m in enumerate(p.maxDets)}
        row["note"] = f"no {size} objects in these images" if objects[size] == 0 else ""
        rows[size] = row
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("size")
    table.attrs.update(n_images=len(p.imgIds), ranges=dict(SIZES))
    return table


def class_ap_table(matched: MatchedDetections, coco_gt: COCO, n_resamples: int = 1000, seed: int = 0,
                   level: float = LEVEL) -> pd.DataFrame:
    """AP (IoU .50:.95, percent) of every class with ground truth in the images, with its ``level`` percentile
    interval over ``n_resamples`` resamples of the images (``seed``: the resampling's). One row per class (index:
    its name): ``category_id``, ``objects`` (its ground truth in the images), ``images`` (images holding it),
    ``AP``, ``low``, ``high``. A class seen in few images has a wide interval: that is the answer, not noise to
    hide. ``attrs``: ``n_images``, ``n_resamples``, ``classes_without_objects`` (categories of the annotation file
    absent from these images, left out)."""
    acc = matched.accumulator
    n = len(matched.img_ids)
    point = acc.category_ap(np.ones((n, 1)))[:, 0]
    samples = np.concatenate([acc.category_ap(c) for c in np.array_split(resample_counts(n, n_resamples, seed),
                                                                         max(1, n_resamples // 100), axis=1)], 1)
    rows = {}
    for k, cat in enumerate(matched.cat_ids):
        if acc.gt_counts[k].sum() == 0:
            continue
        lo, hi = np.nanpercentile(samples[k], [50 * (1 - level), 50 * (1 + level)])
        rows[coco_gt.cats[cat]["name"]] = {"category_id": cat, "objects": int(acc.gt_counts[k].sum()),
                                           "images": int(np.count_nonzero(acc.gt_counts[k])),
                                           "AP": 100 * point[k], "low": 100 * lo, "high": 100 * hi}
    columns = ["category_id", "objects", "images", "AP", "low", "high"]
    table = pd.DataFrame.from_dict(rows, orient="index", columns=columns).rename_axis("class")
    table.attrs.update(n_images=n, n_resamples=n_resamples,
                       classes_without_objects=len(coco_gt.getCatIds()) - len(rows))
    return table


def pr_curves(ev: COCOeval, ious: Sequence[float] = PR_IOUS) -> pd.DataFrame:
    """COCOeval's interpolated precision at its 101 recall thresholds (area all, 100 detections), per class with
    ground truth and ``"all classes"`` (their mean at each recall, as COCO averages AP), at each IoU of ``ious``.
    Long table: ``iou``, ``class``, ``recall``, ``precision`` (fractions); ``attrs["ap"]``: ``(iou, class)`` -> AP
    (points), the mean of that curve. Precision is 0 past the highest recall a class reaches."""
    p, precision = ev.params, ev.eval["precision"]
    parts, ap = [], {}
    for iou in ious:
        t = int(np.argmin(np.abs(p.iouThrs - iou)))
        if not math.isclose(p.iouThrs[t], iou):
            raise ValueError(f"pr_curves: COCOeval has no IoU threshold {iou} (its thresholds: {list(p.iouThrs)})")
        curves = precision[t, :, :, 0, -1]  # [R, K]
        have = (curves > -1).all(axis=0)
        named = {ev.cocoGt.cats[c]["name"]: curves[:, k] for k, c in enumerate(p.catIds) if have[k]}
        if named:
            named = {"all classes": curves[:, have].mean(axis=1), **named}
        for name, curve in named.items():
            parts.append(pd.DataFrame({"iou": iou, "class": name, "recall": p.recThrs, "precision": curve}))
            ap[(iou, name)] = 100 * float(curve.mean())
    table = pd.concat(parts, ignore_index=True) if parts else \
        pd.DataFrame(columns=["iou", "class", "recall", "precision"])
    table.attrs["ap"] = ap
    return table
