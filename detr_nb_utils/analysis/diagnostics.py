"""One run folder's diagnostics, all from its saved detections (nothing retrains, nothing re-runs the model):
AP by class and by size, precision-recall curves, the confusion matrix, the error breakdown (also per decoder
layer), and the validation images for the galleries.

``RunDiagnostics(record)`` reads the run's validation annotations (the split's ``val.json``, or your own dataset's
validation file named in ``split_manifest.json``) and the detections of one evaluated epoch (default: the final
one, 06_analysis's primary comparison), then hands them to :mod:`.ap_breakdown`, :mod:`.confusion` and
:mod:`.errors`, caching the COCOeval they share. Used by notebooks 03-05, 07 and 06_analysis.
"""
from __future__ import annotations

import contextlib
import io
from functools import cached_property
from pathlib import Path

import pandas as pd
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..data.coco import CocoDetection, resolve_coco_layout
from ..training.runs import RunRecord, load_detections, load_layer_detections
from .ap_breakdown import class_ap_table, evaluate_detections, pr_curves, size_table
from .bootstrap import MatchedDetections, common_images
from .confusion import confusion_matrix
from .errors import ErrorAnalysis, analyse_errors, error_table

#: the score threshold of the confusion matrix, the error counts and the galleries (AP and delta AP use all)
SCORE_THRESHOLD = 0.5


def validation_files(record: RunRecord) -> tuple[Path, Path | None]:
    """The run's validation instances file and image folder (None when the images cannot be found here)."""
    cfg = record.config
    own = record.split_manifest.get("dataset", {}).get("val") if cfg.own_data else None
    if own:
        return Path(own["annotation_file"]), Path(own["image_dir"])
    try:
        image_dir = Path(cfg.image_dir) if cfg.image_dir else resolve_coco_layout(cfg.data_root)[0]
    except FileNotFoundError:
        image_dir = None
    return Path(cfg.split_dir) / "val.json", image_dir


class RunDiagnostics:
    """The diagnostics of ``record`` at ``epoch`` (default: its final epoch)."""

    def __init__(self, record: RunRecord, epoch: int | None = None) -> None:
        self.record = record
        self.epoch = record.final_epoch if epoch is None else epoch
        if self.epoch is None:
            raise ValueError(f"{record.run_dir} has no evaluated epoch: nothing to diagnose")
        self.annotation_file, self.image_dir = validation_files(record)
        if not self.annotation_file.is_file():
            raise FileNotFoundError(f"{self.annotation_file}, the validation annotations of {record.run_dir}, is "
                                    "missing: make the split again (notebook 01) or point the run's config at it")
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.gt = COCO(str(self.annotation_file))
        self.detections = load_detections(record.run_dir, self.epoch)
        self.img_ids = common_images(self.detections)

    @property
    def names(self) -> dict[int, str]:
        """Category id -> name."""
        return {c: v["name"] for c, v in self.gt.cats.items()}

    @cached_property
    def cocoeval(self) -> COCOeval:
        return evaluate_detections(self.gt, self.detections, self.img_ids)

    def sizes(self) -> pd.DataFrame:
        """AP and AR by object size with the objects of each size (:func:`.ap_breakdown.size_table`)."""
        return size_table(self.cocoeval)

    def classes(self, n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
        """AP per class with its 95% interval over the images (:func:`.ap_breakdown.class_ap_table`)."""
        return class_ap_table(MatchedDetections(self.gt, self.detections, self.img_ids), self.gt, n_resamples, seed)

    def pr_curves(self) -> pd.DataFrame:
        """COCOeval's precision-recall curves at IoU 0.5 and 0.75 (:func:`.ap_breakdown.pr_curves`)."""
        return pr_curves(self.cocoeval)

    def confusion(self, score_threshold: float = SCORE_THRESHOLD) -> pd.DataFrame:
        """The confusion matrix at IoU >= 0.5 and ``score_threshold`` (:func:`.confusion.confusion_matrix`)."""
        return confusion_matrix(self.gt, self.detections, self.img_ids, score_threshold)

    def errors(self, min_score: float = 0.0) -> ErrorAnalysis:
        """Every detection and object classified (:func:`.errors.analyse_errors`); ``min_score`` 0 for delta AP50,
        :data:`SCORE_THRESHOLD` for the counts and galleries."""
        return analyse_errors(self.gt, self.detections, self.img_ids, min_score)

    def layer_errors(self, epoch: int | None = None, min_score: float = SCORE_THRESHOLD) -> pd.DataFrame:
        """The error breakdown of every decoder layer's detections at ``epoch`` (default: this one; the run folder
        keeps them for epoch 0 and its last epoch): one row per layer (1..L, L the final), AP50, the delta AP50 of
        each kind and the counts of each kind at ``min_score`` (:func:`.errors.error_table`)."""
        epoch = self.epoch if epoch is None else epoch
        layers = load_layer_detections(self.record.run_dir, epoch)
        every = {k + 1: analyse_errors(self.gt, d, self.img_ids) for k, d in enumerate(layers)}
        above = {k + 1: analyse_errors(self.gt, d, self.img_ids, min_score) for k, d in enumerate(layers)}
        table = error_table(every, above).rename_axis("decoder layer")
        table.attrs.update(epoch=epoch, run=self.record.run_dir.name)
        return table

    def dataset(self) -> CocoDetection:
        """The validation images with their annotations (original pixels), for the galleries."""
        if self.image_dir is None:
            raise FileNotFoundError(f"the validation images of {self.record.run_dir} are not found under "
                                    f"{self.record.config.data_root}; pass image_dir in the run's config")
        return CocoDetection(self.annotation_file, self.image_dir)


def variant_errors(diagnostics: dict[str, RunDiagnostics], min_score: float = SCORE_THRESHOLD) -> pd.DataFrame:
    """The error breakdown of several runs side by side (06_analysis: one run per variant): AP50, delta AP50 of
    each kind and the counts of each kind at ``min_score``, one row per key of ``diagnostics``."""
    return error_table({k: d.errors() for k, d in diagnostics.items()},
                       {k: d.errors(min_score) for k, d in diagnostics.items()})
