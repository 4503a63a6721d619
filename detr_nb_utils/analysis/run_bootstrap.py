"""The bootstrap of run folders: every (run, epoch) scored on one shared set of validation-image resamples, so that
any two are paired (:class:`ApBootstrap`, used by 03-06).

A variant's value is the mean over its training seeds; with :data:`MIN_SEEDS_RESAMPLED` seeds or more each resample
also redraws them with replacement (the interval then covers images and seeds, :func:`covers` says which); the best
fine-tuned epoch is re-picked inside every resample, so the selection is inside its interval. The matching and
scoring of one set of detections (:mod:`.bootstrap`) is done once per content and kept in
``<out_dir>/.bootstrap/`` for the next notebook.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import math
import warnings
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from ..data import atomic
from ..training.runs import RunRecord, detection_epochs, load_detections
from .bootstrap import (MatchedDetections, bootstrap_p, common_images, per_image_max, percentile_interval,
                        resample_counts, resampled_ap)


#: (detections' digest, max_det, ground truth, images, seed, resamples) -> (AP, AP of each resample): what a process
#: has scored, whichever run folder held those detections
_SCORED: dict[tuple, tuple[float, np.ndarray]] = {}


#: where the scores of a run folder's detections are kept between processes: ``<out_dir>/.bootstrap/<key>.npz``
SCORES = ".bootstrap"
#: raised when the scoring changes, so that no stored score of an older one is read
SCORES_VERSION = 1


def _stored(out_dir: Path, content: tuple, score) -> tuple[float, np.ndarray]:
    """``score()``'s (AP, resamples) for ``content``, kept in ``<out_dir>/.bootstrap/`` so that 04, 05 and 06 read
    what 03 scored (the same detections, images, resamples) instead of matching them again."""
    path = Path(out_dir) / SCORES / (hashlib.sha1(repr(content).encode()).hexdigest()[:20] + ".npz")
    if path.is_file():
        with np.load(path, allow_pickle=False) as f:
            return float(f["point"]), f["samples"]
    point, samples = score()
    buffer = io.BytesIO()
    np.savez(buffer, point=np.float64(point), samples=samples)
    atomic.write_bytes(path, buffer.getvalue())
    return point, samples


def _digest(detections: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha1()
    for k in sorted(detections):
        h.update(k.encode())
        h.update(np.ascontiguousarray(detections[k]).tobytes())
    return h.hexdigest()


#: variant -> its runs: ``{run name: RunRecord}`` (:func:`.comparison.by_variant`), a sequence of records, or one
Groups = Mapping[str, "Mapping[str, RunRecord] | Sequence[RunRecord] | RunRecord"]


def runs_of(group) -> list[RunRecord]:
    """A variant's runs from ``{name: record}``, a sequence of records, or one record."""
    if isinstance(group, RunRecord):
        return [group]
    return list(group.values()) if isinstance(group, Mapping) else list(group)


#: the fewest training seeds a bootstrap resample redraws (with replacement); with fewer, redrawing 2 seeds would
#: halve their variance, so the interval covers the images only and the seeds' spread is reported beside it
MIN_SEEDS_RESAMPLED = 3


def seeds_resampled(n_seeds: int) -> bool:
    """Whether an interval over ``n_seeds`` training seeds redraws them (:data:`MIN_SEEDS_RESAMPLED`)."""
    return n_seeds >= MIN_SEEDS_RESAMPLED


def covers(n_images: int, n_seeds: int | Mapping[str, int]) -> str:
    """What an interval over ``n_seeds`` seeds resamples, in words: the images, and the seeds when redrawn. For a
    difference, ``n_seeds`` maps each side to its seeds: each side's seeds are redrawn or not on their own."""
    if isinstance(n_seeds, Mapping):
        if len(set(n_seeds.values())) == 1:
            return covers(n_images, next(iter(n_seeds.values())))
        if not any(map(seeds_resampled, n_seeds.values())):
            return f"{n_images} validation images (seeds not resampled: {' and '.join(map(str, n_seeds.values()))})"
        drawn = [f"{v}'s {n} redrawn" if seeds_resampled(n) else f"{v}'s {n} not" for v, n in n_seeds.items()]
        return f"{n_images} validation images, and the seeds ({', '.join(drawn)})"
    if seeds_resampled(n_seeds):
        return f"{n_images} validation images and {n_seeds} training seeds"
    return f"{n_images} validation images (seeds not resampled: {n_seeds} of them)"


class ApBootstrap:
    """Matches each (run, epoch)'s saved detections once, on the validation images every run of ``records`` was
    evaluated on, and scores them on ``n_resamples`` resamples of those images (the same resamples for every run:
    paired). :meth:`stat` and :meth:`diff` combine a variant's seeds (mean; with :data:`MIN_SEEDS_RESAMPLED` seeds
    or more each resample also redraws the seeds with replacement; with fewer the interval covers the images only,
    and ``seed_std`` gives the seeds' spread beside it). Quantities (:attr:`QUANTITIES`): AP at epoch 0, at the
    first fine-tuned epoch (``first``), at the final epoch, at the best fine-tuned epoch re-picked in every resample,
    and each of those minus epoch 0 (``... change``)."""

    QUANTITIES = ("epoch 0", "first", "first change", "final", "change", "best", "best change")

    def __init__(self, records: Mapping[str, RunRecord], n_resamples: int = 1000, seed: int = 0) -> None:
        self.records, self.n_resamples, self.seed = dict(records), n_resamples, seed
        self._cache: dict[tuple, tuple[float, np.ndarray]] = {}
        self.img_ids, self.gt = [], None
        with_zero = [r for r in self.records.values() if self.has(r, 0)]
        if with_zero:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                self.gt = COCO(str(Path(with_zero[0].config.split_dir) / "val.json"))
            self.img_ids = common_images(*(load_detections(r.run_dir, 0) for r in with_zero))
        self.counts = resample_counts(len(self.img_ids), n_resamples, seed)

    def has(self, record: RunRecord, epoch: int | None) -> bool:
        return epoch is not None and epoch in detection_epochs(record.run_dir)

    def matched(self, record: RunRecord, epoch: int, max_det: int | None = None,
                detections: Mapping[str, np.ndarray] | None = None) -> MatchedDetections:
        detections = load_detections(record.run_dir, epoch) if detections is None else detections
        if max_det is not None and per_image_max(detections) <= max_det:
            max_det = None  # nothing to cut: the same detections as the uncapped AP
        return MatchedDetections(self.gt, detections, self.img_ids, max_det)

    def run_ap(self, record: RunRecord, epoch: int, max_det: int | None = None) -> tuple[float, np.ndarray]:
        """AP (fraction) of one run's epoch on all the images, and on each resample ``[B]``. Detections are
        matched once per content in a process (:data:`_SCORED`): the seeds and recipe arms of a variant share
        their epoch 0, and 04, 05 and 06 score the same runs on the same resamples."""
        key = (str(record.run_dir), epoch, max_det)
        if key not in self._cache:
            detections = load_detections(record.run_dir, epoch)
            gt = Path(record.config.split_dir) / "val.json"
            content = (SCORES_VERSION, _digest(detections), max_det, str(gt.resolve()), gt.stat().st_mtime_ns,
                       tuple(self.img_ids), self.seed, self.n_resamples)
            if content not in _SCORED:
                _SCORED[content] = _stored(record.run_dir.parent, content, lambda: self._score(record, epoch, max_det,
                                                                                                detections))
            self._cache[key] = _SCORED[content]
        return self._cache[key]

    def _score(self, record: RunRecord, epoch: int, max_det: int | None, detections) -> tuple[float, np.ndarray]:
        m = self.matched(record, epoch, max_det, detections)
        return m.point[0], resampled_ap(m, self.counts)

    def quantity(self, record: RunRecord, what: str, max_det: int | None = None) -> tuple[float, np.ndarray] | None:
        """One run's ``what`` (one of :attr:`QUANTITIES`: AP at epoch 0 or at the final epoch, final minus epoch 0,
        AP at the best fine-tuned epoch re-picked in every resample, that minus epoch 0): point and resamples, or
        None when the run lacks the detections."""
        if what not in self.QUANTITIES:
            raise ValueError(f"ApBootstrap.quantity: what must be one of {self.QUANTITIES}, got {what!r}")
        if what in ("change", "best change", "first change"):
            a = self.quantity(record, {"change": "final"}.get(what, what.removesuffix(" change")), max_det)
            b = self.quantity(record, "epoch 0", max_det)
            return None if a is None or b is None else (a[0] - b[0], a[1] - b[1])
        if what == "best":
            epochs = [e for e in detection_epochs(record.run_dir) if e >= 1 and e in record.metrics.index]
            if not epochs:
                return None
            points, samples = zip(*(self.run_ap(record, e, max_det) for e in epochs))
            return max(points), np.fmax.reduce(np.stack(samples), axis=0)
        epoch = {"epoch 0": 0, "first": 1}.get(what, record.final_epoch)
        return self.run_ap(record, epoch, max_det) if self.has(record, epoch) else None

    def _combined(self, variant: str, runs: Sequence[RunRecord], what: str, max_det: int | None):
        return self.combine_seeds(variant, [self.quantity(r, what, max_det) for r in runs])

    def combine_seeds(self, variant: str, parts: Sequence[tuple[float, np.ndarray] | None]):
        """Mean over a variant's seeds of per-run ``(point, resamples [B])`` scored on :attr:`counts`: point,
        resamples (with several seeds each resample redraws them with replacement, the same draws for every
        statistic of ``variant``), per-seed points; or None when a part is missing."""
        if not parts or any(p is None for p in parts):
            return None
        points, samples = np.array([p[0] for p in parts]), np.stack([p[1] for p in parts])
        if seeds_resampled(len(parts)):  # the same draws for every statistic of this variant
            rng = np.random.default_rng([self.seed, zlib.crc32(variant.encode())])
            draws = rng.integers(0, len(parts), size=(self.n_resamples, len(parts)))
            with warnings.catch_warnings():  # a resample holding none of a group's objects has no AP (NaN)
                warnings.simplefilter("ignore", RuntimeWarning)
                samples = np.nanmean(samples[draws, np.arange(self.n_resamples)[:, None]], axis=1)
        else:
            samples = np.nanmean(samples, axis=0)
        return float(points.mean()), samples, points

    def stat(self, variant: str, group, what: str = "final", max_det: int | None = None) -> dict | None:
        """``what`` of a variant (its runs: ``group``) with its 95% interval: ``point``, ``low``, ``high``, ``std``
        (fractions), ``seeds``, ``seed_std`` (sample std of the per-seed points; NaN for one seed),
        ``seeds_resampled`` (whether the interval redraws the seeds), ``per_seed`` (the per-seed points)."""
        c = self._combined(variant, runs_of(group), what, max_det)
        if c is None:
            return None
        point, samples, points = c
        return percentile_interval(point, samples) | {"seeds": len(points), "seed_std": float(
            np.std(points, ddof=1)) if len(points) > 1 else math.nan, "seeds_resampled": seeds_resampled(len(points)),
            "per_seed": points.tolist()}

    def diff(self, a: tuple[str, object], b: tuple[str, object], what: str = "final",
             max_det: int | None = None) -> dict | None:
        """``what`` of variant ``a`` minus variant ``b`` (each ``(variant, group)``) on the same image resamples:
        the interval entries, ``excludes_zero`` and the two-sided bootstrap ``p``."""
        ca, cb = self._combined(a[0], runs_of(a[1]), what, max_det), self._combined(b[0], runs_of(b[1]), what, max_det)
        if ca is None or cb is None:
            return None
        d = percentile_interval(ca[0] - cb[0], ca[1] - cb[1])
        return d | {"excludes_zero": bool(d["low"] > 0 or d["high"] < 0), "p": bootstrap_p(ca[1] - cb[1])}
