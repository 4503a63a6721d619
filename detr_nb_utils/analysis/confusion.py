"""The confusion matrix of a detector: which class each object was detected as, at IoU >= 0.5 and a stated score
threshold, with a background row (detections of no object) and a background column (objects nobody detected).

Unlike AP, a confusion matrix needs a score threshold: a detection counts when it scores at least
``score_threshold``. In each image, detections above the threshold and objects (crowd regions left out) are paired
across classes in decreasing IoU, each at most once, down to ``iou_threshold``; a pair adds one to
(object's class, detection's class). An object left over adds to its class's background column, a detection left
over to the background row, unless it lies on a crowd region (half its area or more), which COCO ignores: those are
counted in ``attrs["ignored"]``. IoU is pycocotools' (COCOeval's). Used by notebooks 03-05 and 07 (figure in
:mod:`detr_nb_utils.notebook.figures_diagnostics`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

BACKGROUND = "background"


def _pairs(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """(detection, object) pairs in decreasing IoU, each index at most once, IoU >= ``threshold``."""
    det, obj = np.nonzero(iou >= threshold)
    order = np.argsort(-iou[det, obj], kind="stable")
    used_d, used_o, out = set(), set(), []
    for d, o in zip(det[order], obj[order]):
        if d not in used_d and o not in used_o:
            used_d.add(d), used_o.add(o)
            out.append((int(d), int(o)))
    return out


def confusion_matrix(coco_gt: COCO, detections: Mapping[str, np.ndarray], img_ids: Sequence[int] | None = None,
                     score_threshold: float = 0.5, iou_threshold: float = 0.5) -> pd.DataFrame:
    """Counts, rows the true class (then ``background``: detections of no object), columns the detected class
    (then ``background``: objects not detected). Classes: those with objects in the images or detections above the
    threshold, in category-id order. ``detections``: flat arrays (``image_id``, ``category_id``, ``score``,
    ``bbox`` x, y, w, h pixels); ``img_ids``: default the images they cover. ``attrs``: ``score_threshold``,
    ``iou_threshold``, ``n_images``, ``ignored`` (detections on crowd regions)."""
    img_ids = sorted(int(i) for i in (np.unique(detections["image_id"]) if img_ids is None else img_ids))
    keep = np.isin(detections["image_id"], img_ids) & (np.asarray(detections["score"]) >= score_threshold)
    image, cat = np.asarray(detections["image_id"])[keep], np.asarray(detections["category_id"])[keep]
    bbox = np.asarray(detections["bbox"], np.float64)[keep].reshape(-1, 4)
    counts: dict[tuple[int, int], int] = {}  # (true, detected), -1 for background
    ignored = 0
    for img_id in img_ids:
        anns = coco_gt.imgToAnns.get(img_id, [])
        objects = [a for a in anns if not a.get("iscrowd", 0)]
        crowd = [a["bbox"] for a in anns if a.get("iscrowd", 0)]
        mine = np.flatnonzero(image == img_id)
        iou = np.asarray(mask_utils.iou(bbox[mine].tolist(), [a["bbox"] for a in objects], [0] * len(objects))) \
            .reshape(len(mine), len(objects))
        pairs = _pairs(iou, iou_threshold)
        for d, o in pairs:
            key = (objects[o]["category_id"], int(cat[mine[d]]))
            counts[key] = counts.get(key, 0) + 1
        found = {o for _, o in pairs}
        for o, a in enumerate(objects):
            if o not in found:
                counts[(a["category_id"], -1)] = counts.get((a["category_id"], -1), 0) + 1
        left = [d for d in range(len(mine)) if d not in {d for d, _ in pairs}]
        on_crowd = np.zeros(len(left), bool)
        if crowd and left:
            on_crowd = (np.asarray(mask_utils.iou(bbox[mine[left]].tolist(), crowd, [1] * len(crowd)))
                        .reshape(len(left), len(crowd)) >= iou_threshold).any(1)
        ignored += int(on_crowd.sum())
        for d in np.asarray(left)[~on_crowd]:
            counts[(-1, int(cat[mine[d]]))] = counts.get((-1, int(cat[mine[d]])), 0) + 1
    classes = sorted({c for pair in counts for c in pair if c != -1})
    names = [coco_gt.cats[c]["name"] if c in coco_gt.cats else str(c) for c in classes] + [BACKGROUND]
    position = {c: k for k, c in enumerate([*classes, -1])}
    matrix = np.zeros((len(names), len(names)), np.int64)
    for (t, p), n in counts.items():
        matrix[position[t], position[p]] = n
    table = pd.DataFrame(matrix, index=pd.Index(names, name="true"), columns=pd.Index(names, name="detected"))
    table.attrs.update(score_threshold=score_threshold, iou_threshold=iou_threshold, n_images=len(img_ids),
                       ignored=ignored)
    return table
