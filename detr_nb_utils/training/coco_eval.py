"""COCOeval, set up in one place: result arrays, COCOeval on them, in this process or in worker processes.

:mod:`.evaluation` scores the final layer with every COCO statistic and each auxiliary decoder layer
with AP and AP50. COCOeval is single-threaded Python: on 1,000 validation images one call takes seconds, once per
layer and evaluation, while the GPU waits. :func:`start_layer_aps` hands the auxiliary layers to a pool of
processes and lets the caller score the final layer meanwhile. This module imports no torch, so a worker starts in
well under a second.

Detections travel as flat arrays (the run folder's ``detections/epoch_N.npz``): ``image_id`` [N], ``category_id``
[N], ``score`` [N], ``bbox`` [N,4] (x, y, w, h in pixels). :func:`results_array` turns them into COCO's ``loadRes``
format, ``[N,7]`` rows ``(image_id, x, y, w, h, score, category_id)``. Used by the evaluation (notebooks 02-05) and
by the bootstrap of :mod:`detr_nb_utils.analysis.bootstrap` (06_analysis).
"""
from __future__ import annotations

import contextlib
import io
import math
import multiprocessing
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# below this many images a layer scores in about a second, less than starting a worker costs
POOL_MIN_IMAGES = 500


def results_array(detections: Mapping[str, np.ndarray], img_ids: Sequence[int] | None = None) -> np.ndarray:
    """``[N,7]`` rows ``(image_id, x, y, w, h, score, category_id)`` (COCO's result format, float64) of the flat
    detection arrays on ``img_ids`` (default: all)."""
    keep = np.ones(len(detections["score"]), bool) if img_ids is None else \
        np.isin(detections["image_id"], np.asarray(img_ids))
    return np.column_stack([detections["image_id"][keep], detections["bbox"][keep], detections["score"][keep],
                            detections["category_id"][keep]]).astype(np.float64)


def load_results(coco_gt: COCO, results: np.ndarray) -> COCO:
    """``coco_gt.loadRes(results)``, also for no results at all (which ``loadRes`` refuses)."""
    if len(results):
        return coco_gt.loadRes(results)
    coco_dt = COCO()
    coco_dt.dataset = {"images": list(coco_gt.dataset["images"]), "categories": list(coco_gt.dataset["categories"]),
                       "annotations": []}
    coco_dt.createIndex()
    return coco_dt


def scored_categories(coco_gt: COCO, results: np.ndarray, img_ids: Sequence[int]) -> list[int]:
    """The categories of ``coco_gt`` that have ground truth on ``img_ids`` or a detection in ``results``: the only
    ones COCOeval's statistics, its per-image matching and its per-category precision can differ from "none" (-1)
    on. A category with neither is skipped by every average, so leaving it out changes no number; it saves COCOeval
    a Python call per image and size range (the demo world: 5 of COCO's 80 categories, 16 times fewer)."""
    present = {int(a["category_id"]) for i in img_ids for a in coco_gt.imgToAnns.get(int(i), [])}
    present |= {int(c) for c in np.unique(results[:, 6])} if len(results) else set()
    return [c for c in sorted(coco_gt.getCatIds()) if c in present]


def run_cocoeval(coco_gt: COCO, results: np.ndarray, img_ids: list[int], all_areas: bool = True,
                 verbose: bool = False, accumulate: bool = True, area: str = "all") -> COCOeval:
    """A ``COCOeval`` (bbox) of ``results`` over ``img_ids``, evaluated (the per-image matching), then accumulated
    unless ``accumulate=False``. ``all_areas=False`` scores only the area range ``area`` ("all", enough for AP and
    AP50, and faster; or "small", "medium", "large"), without ``summarize``. Silent unless ``verbose``. Only the
    :func:`scored_categories` are visited (``params.catIds``): every statistic is the same as over all of them."""
    if not img_ids:
        raise ValueError("COCO evaluation: no images to evaluate (empty detections and img_ids)")
    with contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco_gt, load_results(coco_gt, results), iouType="bbox")
        ev.params.imgIds = img_ids
        ev.params.catIds = scored_categories(coco_gt, results, img_ids) or ev.params.catIds
        if not all_areas:
            if area not in ev.params.areaRngLbl:
                raise ValueError(f"area must be one of {ev.params.areaRngLbl}, got {area!r}")
            k = ev.params.areaRngLbl.index(area)
            ev.params.areaRng, ev.params.areaRngLbl = ev.params.areaRng[k:k + 1], [area]
        ev.evaluate()
        if accumulate:
            ev.accumulate()
            if all_areas:
                ev.summarize()
    return ev


def mean_precision(p: np.ndarray) -> float:
    """COCO's average of the precision values that exist (-1 marks none), NaN when none does."""
    return float(p[p > -1].mean()) if (p > -1).any() else math.nan


def ap_ap50(coco_gt: COCO, results: np.ndarray, img_ids: list[int]) -> tuple[float, float]:
    """``(AP, AP50)`` of ``results`` on ``img_ids`` (area "all", 100 detections)."""
    precision = run_cocoeval(coco_gt, results, sorted(img_ids), all_areas=False).eval["precision"][..., 0, -1]
    return mean_precision(precision), mean_precision(precision[0])  # iouThrs[0] is 0.5


def _ap_job(gt_dataset: dict, results: np.ndarray, img_ids: list[int]) -> tuple[float, float]:
    """One worker's job: rebuild the ground truth from its ``dataset`` dict, then :func:`ap_ap50`."""
    coco_gt = COCO()
    coco_gt.dataset = gt_dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
    return ap_ap50(coco_gt, results, img_ids)


def pool_workers(n_layers: int, n_images: int, cores: int | None = None) -> int:
    """Worker processes for ``n_layers`` auxiliary layers of ``n_images`` images: none under
    :data:`POOL_MIN_IMAGES` images, else one per layer up to the cores but one (the caller scores the final
    layer on that one)."""
    if n_layers == 0 or n_images < POOL_MIN_IMAGES:
        return 0
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return max(1, min(n_layers, cores - 1))


def start_layer_aps(coco_gt: COCO, layer_results: list[np.ndarray], img_ids: list[int],
                    workers: int | None = None) -> Callable[[], list[tuple[float, float]]]:
    """Start scoring each of ``layer_results`` (``(AP, AP50)`` per layer) and return the function that waits for
    the answers, in order. ``workers``: processes (``None``: :func:`pool_workers`; 0: in this process, when the
    returned function is called). The pool uses ``spawn``: a fork of a process running torch's threads is unsafe."""
    if workers is None:
        workers = pool_workers(len(layer_results), len(img_ids))
    if workers == 0:
        return lambda: [ap_ap50(coco_gt, r, img_ids) for r in layer_results]
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = [pool.submit(_ap_job, coco_gt.dataset, r, list(img_ids)) for r in layer_results]
    except BaseException:
        pool.shutdown(cancel_futures=True)
        raise

    def collect() -> list[tuple[float, float]]:
        try:
            return [f.result() for f in futures]
        finally:
            pool.shutdown(cancel_futures=True)
    return collect
