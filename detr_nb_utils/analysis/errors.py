"""What the detector gets wrong: every false positive and every miss put into one of the six kinds of error of
the TIDE analysis (Bolya et al., *TIDE: A General Toolbox for Identifying Object Detection Errors*, ECCV 2020),
and how many points of AP50 each kind costs.

The ``tidecv`` package that accompanies the paper is not used: its last release dates from 2020, it pulls OpenCV
and seaborn, and it re-implements COCO's matching and AP. Here the matching is COCOeval's own (``evaluate()`` at
IoU 0.5, area "all", 100 detections per image and class: a detection is a true positive exactly when COCO AP50
counts it as one), and the IoU of a detection with the ground truth of *other* classes is pycocotools' ``iou``, the
function COCOeval uses. A detection matched to a crowd region is ignored, as COCO ignores it.

Each false positive is checked in TIDE's order (``t_f`` = 0.5, ``t_b`` = 0.1, IoU with non-crowd ground truth):

1. **background** when the image holds no object;
2. **localisation**: its best IoU with an object of its own class is in [``t_b``, ``t_f``);
3. **classification**: IoU >= ``t_f`` with an object of another class;
4. **duplicate**: IoU >= ``t_f`` with an object of its class that a higher-scoring detection already took;
5. **background**: IoU < ``t_b`` with every object;
6. **both** (classification and localisation): anything else, i.e. IoU in [``t_b``, ``t_f``) with an object of
   another class only.

An object no detection matched is **missed** unless a classification or localisation error points at it (then
that error explains it). ``delta AP50`` is TIDE's measure: the AP50 gained when one kind is fixed by an oracle,
all else equal. A classification (localisation) error on an object nobody found becomes a true positive of that
object's class (box) when it is the highest-scoring of the classification and localisation errors on that object,
and is removed otherwise; duplicates, background and "both" errors are removed; a missed object is removed from
the ground truth. AP50 after a fix is COCO's interpolated AP (101 recall points) on the fixed true/false flags
(:func:`ap50_of`; with nothing fixed it equals COCOeval's AP50, tested).

Used by notebooks 03-05 and 07 (a run's errors, galleries) and 06_analysis (by variant, and by decoder layer:
which errors each extra layer removes; the paper's Fig. 4).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ..training.coco_eval import results_array, run_cocoeval

#: the kinds of error, in the order TIDE reports them
ERROR_KINDS = ("classification", "localisation", "both", "duplicate", "background", "missed")
FOREGROUND_IOU, BACKGROUND_IOU = 0.5, 0.1
_REMOVED_BY_FIX = ("both", "duplicate", "background")


@dataclass
class ErrorAnalysis:
    """The outcome of :func:`analyse_errors`.

    ``detections``: one row per detection COCOeval scored (100 per image and class at most): ``row`` (its index in
    the detection arrays), ``image_id``, ``category_id``, ``score``, ``x``, ``y``, ``w``, ``h`` (pixels), ``kind``
    ("true positive", "ignored" (matched to a crowd region) or an error kind), ``iou`` (with ``gt_id``, the object
    the verdict concerns: the one it matched or the one of the rule that classified it; -1 for none),
    ``gt_category`` and ``fixes`` (whether the oracle fix turns it into a true positive).
    ``objects``: one row per non-crowd ground-truth object: ``gt_id``, ``image_id``, ``category_id``, ``x``, ``y``,
    ``w``, ``h``, ``area``, ``kind`` ("found", "missed", or the error kind that explains why it was not found).
    ``min_score``: the detections scored at least this (0: all, as AP counts them)."""

    detections: pd.DataFrame
    objects: pd.DataFrame
    cat_ids: list[int]
    min_score: float = 0.0

    def counts(self) -> pd.Series:
        """Detections of each error kind and missed objects (integers, index :data:`ERROR_KINDS`)."""
        fp = self.detections["kind"].value_counts()
        out = pd.Series({k: int(fp.get(k, 0)) for k in ERROR_KINDS[:-1]}, dtype=int)
        out["missed"] = int((self.objects["kind"] == "missed").sum())
        return out

    def ap50(self) -> float:
        """AP50 (points) of the detections, from their true/false flags."""
        return 100 * _ap50_of_table(self.detections, self.objects, self.cat_ids)

    def delta_ap50(self) -> pd.Series:
        """AP50 points gained by fixing each kind of error alone (TIDE's dAP; index :data:`ERROR_KINDS`)."""
        base = _ap50_of_table(self.detections, self.objects, self.cat_ids)
        return pd.Series({k: 100 * (_ap50_of_table(*_fixed(self, k), self.cat_ids) - base) for k in ERROR_KINDS})


def ap50_of(category: np.ndarray, score: np.ndarray, tp: np.ndarray, objects: Mapping[int, int],
            cat_ids: Sequence[int], rec_thrs: np.ndarray | None = None) -> float:
    """COCO's AP at one IoU threshold (a fraction) from each detection's category, score and true-positive flag
    and the number of objects of each category: per category, precision made monotone from the right and read at
    the 101 recall thresholds (0 past the highest recall reached), then the mean over categories that have objects
    (NaN when none has). Detections are ranked by score, ties in the order given (COCOeval's stable sort)."""
    rec_thrs = np.linspace(0, 1, 101) if rec_thrs is None else rec_thrs
    category, score, tp = np.asarray(category), np.asarray(score, np.float64), np.asarray(tp, bool)
    aps = []
    for cat in cat_ids:
        n = objects.get(int(cat), 0)
        if n <= 0:
            continue
        mine = np.flatnonzero(category == cat)
        flags = tp[mine[np.argsort(-score[mine], kind="mergesort")]]
        tps, fps = np.cumsum(flags), np.cumsum(~flags)
        recall = tps / n
        precision = np.maximum.accumulate((tps / (tps + fps + np.spacing(1)))[::-1])[::-1] if len(flags) else flags
        at = np.searchsorted(recall, rec_thrs, side="left")
        q = np.zeros(len(rec_thrs))
        q[at < len(flags)] = precision[at[at < len(flags)]]
        aps.append(q.mean())
    return float(np.mean(aps)) if aps else float("nan")


def _ap50_of_table(detections: pd.DataFrame, objects: pd.DataFrame, cat_ids: Sequence[int]) -> float:
    scored = detections[detections["kind"] != "ignored"]
    n = objects["category_id"].value_counts()
    return ap50_of(scored["category_id"].to_numpy(), scored["score"].to_numpy(),
                   (scored["kind"] == "true positive").to_numpy(), {int(c): int(v) for c, v in n.items()}, cat_ids)


def _fixed(analysis: ErrorAnalysis, kind: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The detections and objects after the oracle fixes every error of ``kind`` (module docstring)."""
    d, objects = analysis.detections.copy(), analysis.objects
    if kind == "missed":
        return d, objects[objects["kind"] != "missed"]
    if kind in _REMOVED_BY_FIX:
        return d[d["kind"] != kind], objects
    mine = (d["kind"] == kind).to_numpy()
    fix = mine & d["fixes"].to_numpy()
    d.loc[fix, "category_id"] = d.loc[fix, "gt_category"]
    d.loc[fix, "kind"] = "true positive"
    return d[~(mine & ~fix)], objects


def _matches(coco_gt: COCO, detections: Mapping[str, np.ndarray], img_ids: list[int], min_score: float):
    """COCOeval's per-image matching at IoU 0.5: per detection (row, status, matched object) and per non-crowd
    object (id, image, category, used)."""
    keep = np.flatnonzero(np.isin(detections["image_id"], img_ids) & (detections["score"] >= min_score))
    ev = run_cocoeval(coco_gt, results_array({k: np.asarray(v)[keep] for k, v in detections.items()}), img_ids,
                      all_areas=False, accumulate=False)
    t = int(np.argmin(np.abs(ev.params.iouThrs - FOREGROUND_IOU)))
    dets, objs = [], []
    for e in ev.evalImgs:
        if e is None:
            continue
        for dt_id, gt_id, ignored in zip(e["dtIds"], e["dtMatches"][t], e["dtIgnore"][t]):
            dets.append((keep[dt_id - 1], e["image_id"], e["category_id"],
                         "ignored" if ignored else "true positive" if gt_id > 0 else "false", int(gt_id)))
        for gt_id, gt_match, ignored in zip(e["gtIds"], e["gtMatches"][t], e["gtIgnore"]):
            if not ignored:
                objs.append((gt_id, e["image_id"], e["category_id"], gt_match > 0))
    return ev, dets, objs


def _classify(iou: np.ndarray, same: np.ndarray, used: np.ndarray) -> tuple[list[str], np.ndarray]:
    """TIDE's verdict for each false positive of one image (rows of ``iou`` ``[detections, objects]``, at least
    one object; ``same``: same class; ``used``: objects already matched) and the object it concerns (-1: none)."""
    iou_same, iou_other, iou_used = np.where(same, iou, 0), np.where(~same, iou, 0), np.where(same & used, iou, 0)
    kinds, target = [], np.full(len(iou), -1)
    for i in range(len(iou)):
        if BACKGROUND_IOU <= iou_same[i].max() < FOREGROUND_IOU:
            kind, target[i] = "localisation", iou_same[i].argmax()
        elif iou_other[i].max() >= FOREGROUND_IOU:
            kind, target[i] = "classification", iou_other[i].argmax()
        elif iou_used[i].max() >= FOREGROUND_IOU:
            kind, target[i] = "duplicate", iou_used[i].argmax()
        elif iou[i].max() < BACKGROUND_IOU:
            kind = "background"
        else:
            kind, target[i] = "both", iou[i].argmax()
        kinds.append(kind)
    return kinds, target


def analyse_errors(coco_gt: COCO, detections: Mapping[str, np.ndarray], img_ids: Sequence[int] | None = None,
                   min_score: float = 0.0) -> ErrorAnalysis:
    """Every detection of ``detections`` (flat arrays: ``image_id``, ``category_id``, ``score``, ``bbox`` x, y, w, h
    pixels; a run folder's ``detections/epoch_N.npz``) scoring at least ``min_score`` on ``img_ids`` (default: the
    images they cover) a true positive, ignored or an error of one of :data:`ERROR_KINDS`, and every object found,
    missed or explained by an error (see the module docstring). ``min_score`` > 0 applies a score threshold before
    the matching: the counts then describe what a user of that threshold sees; delta AP50 is meant at 0."""
    img_ids = sorted(int(i) for i in (np.unique(detections["image_id"]) if img_ids is None else img_ids))
    ev, dets, objs = _matches(coco_gt, detections, img_ids, min_score)
    d = pd.DataFrame(dets, columns=["row", "image_id", "category_id", "kind", "gt_id"])
    bbox = np.asarray(detections["bbox"], np.float64)[d["row"].to_numpy(int)].reshape(-1, 4)
    d["score"] = np.asarray(detections["score"], np.float64)[d["row"].to_numpy(int)]
    d[["x", "y", "w", "h"]] = bbox
    o = pd.DataFrame(objs, columns=["gt_id", "image_id", "category_id", "used"])
    gt_box = np.array([coco_gt.anns[g]["bbox"] for g in o["gt_id"]], np.float64).reshape(-1, 4)
    o[["x", "y", "w", "h"]] = gt_box
    o["area"] = [coco_gt.anns[g]["area"] for g in o["gt_id"]]
    gt_cat = dict(zip(o["gt_id"], o["category_id"]))
    # the verdicts are gathered in arrays and written once (row by row assignment into the frame is slow); a match
    # keeps no IoU: COCOeval keeps none, the verdict is all that counts
    kind, gt_id, iou_of = d["kind"].to_numpy(object).copy(), d["gt_id"].to_numpy(np.int64).copy(), np.full(len(d),
                                                                                                      np.nan)
    by_image = {i: (g[["x", "y", "w", "h"]].to_numpy().tolist(), g["category_id"].to_numpy(), g["used"].to_numpy(),
                    g["gt_id"].to_numpy()) for i, g in o.groupby("image_id")}
    for image_id, fp in d[d["kind"] == "false"].groupby("image_id"):
        rows = fp.index.to_numpy()
        if image_id not in by_image:  # an image without objects: every false positive is background
            kind[rows], gt_id[rows], iou_of[rows] = "background", -1, 0.0
            continue
        boxes, cats, used, ids = by_image[image_id]
        iou = np.asarray(mask_utils.iou(bbox[rows].tolist(), boxes, [0] * len(boxes))).reshape(len(rows), len(boxes))
        same = fp["category_id"].to_numpy()[:, None] == cats[None, :]
        kinds, target = _classify(iou, same, used[None, :])
        on = np.where(target >= 0, target, iou.argmax(1))  # the object concerned, else the nearest
        kind[rows] = kinds
        gt_id[rows] = np.where(target >= 0, ids[on], -1)
        iou_of[rows] = iou[np.arange(len(rows)), on]
    d["kind"], d["gt_id"], d["iou"], d["fixes"] = kind, gt_id, iou_of, False
    d["gt_category"] = [gt_cat.get(g, -1) for g in d["gt_id"]]
    # the oracle's choice: per object nobody found, its highest-scoring classification or localisation error
    used = dict(zip(o["gt_id"], o["used"]))
    fixable = d[d["kind"].isin(["classification", "localisation"]) & ~d["gt_id"].map(lambda g: used.get(g, True))]
    best = fixable.sort_values("score", ascending=False, kind="mergesort").drop_duplicates("gt_id")
    d.loc[best.index, "fixes"] = True
    explained = dict(zip(best["gt_id"], best["kind"]))
    o["kind"] = [("found" if u else explained.get(g, "missed")) for g, u in zip(o["gt_id"], o["used"])]
    columns = ["row", "image_id", "category_id", "score", "x", "y", "w", "h", "kind", "iou", "gt_id", "gt_category",
               "fixes"]
    return ErrorAnalysis(d[columns].reset_index(drop=True), o.drop(columns="used"), list(ev.params.catIds),
                         min_score)


def error_table(analyses: Mapping[str, ErrorAnalysis], counts_at: Mapping[str, ErrorAnalysis] | None = None
                ) -> pd.DataFrame:
    """One row per analysis (a variant, a decoder layer): ``AP50`` and the delta AP50 of each kind
    (``dAP50 <kind>``, points), and, from ``counts_at`` (the same keys analysed at a score threshold), the count of
    each kind (``<kind>``), with the threshold in ``attrs["min_score"]``."""
    rows = {}
    for name, a in analyses.items():
        rows[name] = {"AP50": a.ap50(), **{f"dAP50 {k}": v for k, v in a.delta_ap50().items()}}
        if counts_at is not None and name in counts_at:
            rows[name] |= counts_at[name].counts().to_dict()
    table = pd.DataFrame.from_dict(rows, orient="index")
    if counts_at:
        table.attrs["min_score"] = next(iter(counts_at.values())).min_score
    return table


def layer_changes(table: pd.DataFrame) -> pd.DataFrame:
    """What the decoder layers after the first change, per kind of error (findings as data): from a per-layer
    :func:`error_table` (index: decoder layers, with counts), one row per kind with the ``count`` and ``dAP50`` of
    the first and of the last layer and their changes (last - first: negative when the later layers remove that
    kind), ordered by the AP50 they remove, most first. ``attrs``: ``layers`` (first, last), ``min_score``."""
    first, last = table.index[0], table.index[-1]
    rows = {k: {"count first": table.loc[first, k], "count last": table.loc[last, k],
                "dAP50 first": table.loc[first, f"dAP50 {k}"], "dAP50 last": table.loc[last, f"dAP50 {k}"]}
            for k in ERROR_KINDS}
    out = pd.DataFrame.from_dict(rows, orient="index").rename_axis("kind")
    out["count change"] = out["count last"] - out["count first"]
    out["dAP50 change"] = out["dAP50 last"] - out["dAP50 first"]
    out = out.sort_values("dAP50 change", kind="stable")
    out.attrs.update(layers=(first, last), min_score=table.attrs.get("min_score"))
    return out


def layer_change_sentence(changes: pd.DataFrame, top: int = 2) -> str:
    """The ``top`` kinds of error the later decoder layers remove most (every number from :func:`layer_changes`)."""
    first, last = changes.attrs["layers"]
    above = f" scoring {changes.attrs['min_score']:g} or more" if changes.attrs.get("min_score") else ""
    parts = [f"{kind} errors{above} go from {r['count first']:.0f} to {r['count last']:.0f} and cost "
             f"{r['dAP50 first']:.1f} then {r['dAP50 last']:.1f} AP50 points"
             for kind, r in changes.head(top).iterrows()]
    return f"From decoder layer {first} to layer {last}, " + "; ".join(parts) + "."
