"""How sure are the AP numbers? A bootstrap over validation images, paired between detectors, and seed spread.

With 1,000 validation images, AP differences of a fraction of a point can be noise. :func:`ap_interval` resamples
the images (with replacement) and re-scores each resample; :func:`ap_difference` does the same for two detection
sets on the *same* resampled images (paired), which is what a comparison of two variants needs. Each detection set
is matched to the ground truth once (:class:`MatchedDetections`). The
95% interval is the 2.5th-97.5th percentile of the resampled values; a difference whose interval excludes 0 is
larger than the image sampling explains. :func:`seed_summary` gives the mean and spread over training seeds;
:func:`bootstrap_p` and :func:`holm` turn a family of resampled differences into Holm-adjusted p-values.

:mod:`.run_bootstrap` does this for run folders (03-06: :class:`~.run_bootstrap.ApBootstrap`).

The 50-query cap: COCO AP keeps up to 100 detections per image, a 50-query model outputs only 50.
``MatchedDetections(..., max_det=50)`` keeps each image's 50 highest-scoring detections (:func:`top_per_image`)
before matching: AP at 50 detections per image, on which 100 and 50 queries compare fairly. (pycocotools'
``maxDets`` caps detections per image *and category*, so ``maxDets=50`` alone would not cap a 100-query model.)

Speed: ``COCOeval.evaluate()`` (the IoU matching) runs once per detection set. A resample only changes how often
each image counts, so each resample re-accumulates the per-image matches with those counts as weights
(:func:`_Accumulator`), as ``COCOeval.accumulate`` does for area "all" and 100 detections: with every count 1 it
reproduces COCOeval's AP exactly (tested). Duplicated images become weights rather than copies: only ties
between equal scores of different images could order differently, which COCOeval leaves arbitrary too.

Detections are the run folder's ``detections/epoch_N.npz`` arrays (:func:`detr_nb_utils.training.runs.load_detections`):
``image_id`` [N], ``category_id`` [N], ``score`` [N], ``bbox`` [N,4] (x, y, w, h in pixels). Used by 06_analysis.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy import sparse

from ..training.coco_eval import results_array, run_cocoeval

LEVEL = 0.95


def evaluate_images(coco_gt: COCO, detections: Mapping[str, np.ndarray], img_ids: Sequence[int],
                    area: str = "all") -> COCOeval:
    """``COCOeval.evaluate()`` (per-image matching) of ``detections`` on ``img_ids``, in one area range: "all", or
    "small", "medium", "large" (COCO's: ground truth of other sizes ignored, as are unmatched detections of
    other sizes)."""
    img_ids = sorted(int(i) for i in img_ids)
    return run_cocoeval(coco_gt, results_array(detections, img_ids), img_ids, all_areas=False, accumulate=False,
                        area=area)


class _Accumulator:
    """``COCOeval.accumulate`` for area "all", 100 detections, with a weight (count) per image.

    Only the true positives matter for AP: COCO's interpolated precision at recall r is the best precision at or
    after the first true positive reaching recall r, and every false positive lowers the precision of what
    follows it. So for each (category, IoU threshold) the rows are its true positives in score order; the false
    positives between two true positives are summed per image into a sparse ``[rows, images]`` matrix, so a batch
    of count vectors ``C [images, B]`` gives every cumulative sum with one sparse product.
    """

    def __init__(self, ev: COCOeval) -> None:
        p = ev.params
        self.rec_thrs, n_img, max_det = p.recThrs, len(p.imgIds), p.maxDets[-1]
        self.n_cat, self.n_iou = len(p.catIds), len(p.iouThrs)
        # each category's place among all of the annotation file's (COCOeval may visit only some of them,
        # :func:`~detr_nb_utils.training.coco_eval.scored_categories`): rows are grouped by it, so that the sums
        # below come out the same to the last bit whichever categories were visited
        every = sorted(ev.cocoGt.getCatIds())
        self.slot = np.array([every.index(c) for c in p.catIds], dtype=np.int64)
        self.n_slots = len(every)
        gt_counts = np.zeros((self.n_cat, n_img))
        fp_rows, fp_cols, tp_img, group = [], [], [], []
        row = 0
        for k in range(self.n_cat):
            per_img = [(i, e) for i, e in enumerate(ev.evalImgs[k * n_img:(k + 1) * n_img]) if e is not None]
            if not per_img:
                continue
            for i, e in per_img:
                gt_counts[k, i] = np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
            scores = np.concatenate([e["dtScores"][:max_det] for _, e in per_img])
            order = np.argsort(-scores, kind="mergesort")  # as COCOeval.accumulate sorts
            img = np.concatenate([np.full(len(e["dtScores"][:max_det]), i) for i, e in per_img])[order]
            dtm = np.concatenate([e["dtMatches"][:, :max_det] for _, e in per_img], axis=1)[:, order]
            dt_ig = np.concatenate([e["dtIgnore"][:, :max_det] for _, e in per_img], axis=1)[:, order]
            for t in range(self.n_iou):
                tp = np.flatnonzero(np.logical_and(dtm[t], ~dt_ig[t]))
                if not len(tp):
                    continue
                fp = np.flatnonzero(np.logical_and(np.logical_not(dtm[t]), ~dt_ig[t]))
                seg = np.searchsorted(tp, fp)  # the true positive each false positive precedes
                fp, seg = fp[seg < len(tp)], seg[seg < len(tp)]
                fp_rows.append(row + seg)
                fp_cols.append(img[fp])
                tp_img.append(img[tp])
                group.append(np.full(len(tp), self.slot[k] * self.n_iou + t))
                row += len(tp)
        cat = (lambda parts, dtype=np.int64: np.concatenate(parts) if parts else np.zeros(0, dtype))
        self.n_rows, self.gt_counts = row, gt_counts
        self.fp = sparse.csr_matrix((np.ones(len(cat(fp_rows))), (cat(fp_rows), cat(fp_cols))), shape=(row, n_img))
        self.tp_img, self.group = cat(tp_img), cat(group)
        self.starts = np.flatnonzero(np.r_[True, self.group[1:] != self.group[:-1]]) if row else np.zeros(0, int)

    def _group_cumsum(self, x: np.ndarray) -> np.ndarray:
        c = np.cumsum(x, axis=0)
        before = np.zeros((len(self.starts), x.shape[1]))
        before[1:] = c[self.starts[1:] - 1]
        return c - np.repeat(before, np.diff(np.r_[self.starts, len(x)]), axis=0)

    def _per_category(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """COCO's precision averaged over the recall thresholds ``[categories, IoU thresholds, B]`` and the
        ground-truth count ``[categories, B]`` for image counts ``[images, B]``."""
        counts = np.asarray(counts, np.float64)
        npig = self.gt_counts @ counts  # [categories, B]
        sums = np.zeros((self.n_slots * self.n_iou, counts.shape[1]))
        if self.n_rows:
            tp = self._group_cumsum(counts[self.tp_img])
            fp = self._group_cumsum(np.asarray(self.fp @ counts))
            precision = tp / (fp + tp + np.spacing(1))
            # COCO's envelope: best precision at or after each row, within each group (offsets keep groups apart)
            offset = 2.0 * (self.group.max() - self.group)[:, None]
            envelope = np.maximum.accumulate((precision + offset)[::-1], axis=0)[::-1] - offset
            with np.errstate(divide="ignore", invalid="ignore"):
                recall = tp / npig[np.searchsorted(self.slot, self.group // self.n_iou)]
            reached = np.searchsorted(self.rec_thrs, recall, side="right").astype(np.float64)
            new = reached.copy()
            new[1:] -= reached[:-1]
            new[self.starts] = reached[self.starts]  # recall thresholds first reached at each row
            sums[np.unique(self.group)] = np.add.reduceat(envelope * new, self.starts, axis=0)
        return sums.reshape(self.n_slots, self.n_iou, -1)[self.slot] / len(self.rec_thrs), npig

    def category_ap(self, counts: np.ndarray) -> np.ndarray:
        """AP of each category (fractions, IoU .50:.95) ``[categories, B]``, NaN where a resample holds none of its
        ground truth; the categories are COCOeval's ``params.catIds``, in order."""
        per_cat, npig = self._per_category(counts)
        return np.where(npig > 0, per_cat.mean(1), np.nan)

    def ap(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """AP and AP50 (fractions; NaN when no image holds ground truth) for image counts ``[images, B]``."""
        per_cat, npig = self._per_category(counts)
        valid = npig > 0
        n_valid = valid.sum(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ap = np.where(n_valid > 0, np.where(valid, per_cat.mean(1), 0).sum(0) / n_valid, np.nan)
            ap50 = np.where(n_valid > 0, np.where(valid, per_cat[:, 0], 0).sum(0) / n_valid, np.nan)
        return ap, ap50


def resample_counts(n_images: int, n_resamples: int, seed: int) -> np.ndarray:
    """``[images, n_resamples]``: how often each image is drawn in each resample (n draws with replacement)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_images, size=(n_resamples, n_images))
    counts = np.zeros((n_resamples, n_images))
    np.add.at(counts, (np.repeat(np.arange(n_resamples), n_images), draws.ravel()), 1)
    return counts.T


def _resampled(accumulators: Sequence[_Accumulator], n_images: int, n_resamples: int, seed: int,
               batch: int = 100) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per accumulator, (AP, AP50) of every resample; the same resamples for all (paired)."""
    counts = resample_counts(n_images, n_resamples, seed)
    out = [([], []) for _ in accumulators]
    for start in range(0, n_resamples, batch):
        for acc, (ap, ap50) in zip(accumulators, out):
            a, a50 = acc.ap(counts[:, start:start + batch])
            ap.append(a)
            ap50.append(a50)
    return [(np.concatenate(a), np.concatenate(a50)) for a, a50 in out]


def percentile_interval(point: float, samples: np.ndarray, level: float = LEVEL) -> dict:
    """``point`` with the ``level`` percentile interval of ``samples`` (``low``, ``high``) and their ``std``."""
    lo, hi = np.nanpercentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return {"point": float(point), "low": float(lo), "high": float(hi), "std": float(np.nanstd(samples))}


def top_per_image(detections: Mapping[str, np.ndarray], max_det: int) -> dict[str, np.ndarray]:
    """The ``max_det`` highest-scoring detections of each image (all of an image that has fewer), in their order."""
    order = np.lexsort((-np.asarray(detections["score"], np.float64), detections["image_id"]))
    image = np.asarray(detections["image_id"])[order]
    rank = np.arange(len(order)) - np.searchsorted(image, image, side="left")  # position within its image
    keep = np.sort(order[rank < max_det])
    return {k: np.asarray(v)[keep] for k, v in detections.items()}


def per_image_max(detections: Mapping[str, np.ndarray]) -> int:
    """The most detections any image has (0 for none)."""
    return int(np.unique(detections["image_id"], return_counts=True)[1].max()) if len(detections["image_id"]) else 0


class MatchedDetections:
    """One detection set matched once (``COCOeval.evaluate``) on ``img_ids``: re-score it on any resample with
    :func:`ap_interval`, :func:`ap_difference` and :func:`resampled_ap` without matching again (06_analysis keeps
    one per run and epoch). ``max_det``: keep only each image's ``max_det`` highest-scoring detections
    (:func:`top_per_image`; None: all, i.e. one per query). ``area``: score only objects of one COCO size range
    (:func:`evaluate_images`)."""

    def __init__(self, coco_gt: COCO, detections: Mapping[str, np.ndarray], img_ids: Sequence[int],
                 max_det: int | None = None, area: str = "all") -> None:
        self.img_ids = sorted(int(i) for i in img_ids)
        self.max_det, self.area = max_det, area
        if max_det is not None:
            detections = top_per_image(detections, max_det)
        ev = evaluate_images(coco_gt, detections, self.img_ids, area)
        self.cat_ids = list(ev.params.catIds)
        self.accumulator = _Accumulator(ev)
        self.point = tuple(float(v[0]) for v in self.accumulator.ap(np.ones((len(self.img_ids), 1))))


def resampled_ap(matched: MatchedDetections, counts: np.ndarray, batch: int = 100) -> np.ndarray:
    """AP (fractions) of ``matched`` on each resample of ``counts`` ``[images, B]`` (:func:`resample_counts`):
    ``[B]``. Scoring several detection sets on the same ``counts`` pairs them."""
    return np.concatenate([matched.accumulator.ap(counts[:, i:i + batch])[0] for i in range(0, counts.shape[1], batch)])


def ap_interval(matched: MatchedDetections, n_resamples: int = 1000, seed: int = 0) -> dict:
    """AP and AP50 of a matched detection set with 95% percentile intervals over ``n_resamples`` resamples of its
    images (``seed``: the resampling's random seed). Returns ``{"AP": {"point", "low", "high", "std"}, "AP50":
    {...}, "n_images", "n_resamples"}`` (fractions in [0, 1]; ``point`` is COCOeval's AP on those images)."""
    (ap, ap50), = _resampled([matched.accumulator], len(matched.img_ids), n_resamples, seed)
    return {"AP": percentile_interval(matched.point[0], ap), "AP50": percentile_interval(matched.point[1], ap50),
            "n_images": len(matched.img_ids), "n_resamples": n_resamples}


def ap_difference(a: MatchedDetections, b: MatchedDetections, n_resamples: int = 1000, seed: int = 0) -> dict:
    """AP(a) - AP(b) and AP50(a) - AP50(b) of two detection sets matched on the same images, with 95% intervals
    from *paired* resamples (both scored on the same resampled images). Each entry also says ``excludes_zero``: the
    interval lies wholly above or below 0, i.e. the difference is larger than image sampling explains."""
    if a.img_ids != b.img_ids:
        raise ValueError(f"difference: the detection sets were scored on different images ({len(a.img_ids)} and "
                         f"{len(b.img_ids)}); score both on common_images(...)")
    (ap_a, ap50_a), (ap_b, ap50_b) = _resampled([a.accumulator, b.accumulator], len(a.img_ids), n_resamples, seed)
    out = {"n_images": len(a.img_ids), "n_resamples": n_resamples}
    for name, i, diff in (("AP", 0, ap_a - ap_b), ("AP50", 1, ap50_a - ap50_b)):
        d = percentile_interval(a.point[i] - b.point[i], diff)
        out[name] = d | {"excludes_zero": bool(d["low"] > 0 or d["high"] < 0)}
    return out


def common_images(*detections: Mapping[str, np.ndarray]) -> list[int]:
    """The image ids every detection set was evaluated on (each evaluated image has one detection per query)."""
    ids = [set(np.unique(d["image_id"]).astype(int).tolist()) for d in detections]
    return sorted(set.intersection(*ids)) if ids else []


def seed_summary(values: Mapping[str, Sequence[float]]) -> pd.DataFrame:
    """Mean and spread over seeds: ``values`` maps a variant to one value per training seed (e.g. final AP).
    One row per variant: ``seeds``, ``mean``, ``std`` (sample, NaN for one seed), ``min``, ``max``."""
    rows = {v: pd.Series(list(x), dtype=float) for v, x in values.items()}
    return pd.DataFrame({v: {"seeds": len(x), "mean": x.mean(), "std": x.std(ddof=1), "min": x.min(),
                             "max": x.max()} for v, x in rows.items()},
                        index=["seeds", "mean", "std", "min", "max"]).T.astype({"seeds": int}).rename_axis("variant")


def bootstrap_p(samples: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "the difference is 0" from resampled differences ``samples``: twice the
    smaller share of resamples at or below 0 and at or above 0, counted as (k + 1) / (B + 1) so it is never 0."""
    s = np.asarray(samples, np.float64)
    s = s[~np.isnan(s)]
    if not len(s):
        return float("nan")
    tail = min(np.count_nonzero(s <= 0), np.count_nonzero(s >= 0))
    return float(min(1.0, 2 * (tail + 1) / (len(s) + 1)))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaN left out of the family and returned as NaN): the
    k-th smallest of m is multiplied by m - k + 1, then made non-decreasing, capped at 1."""
    p = np.asarray(p_values, np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    out[order] = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    return out
