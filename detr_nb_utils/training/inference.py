"""Prediction with a trained DETR: load a model from a run folder or a checkpoint file, detect objects in image
files, write the images with their boxes drawn and the detections as COCO results.

Three steps, each usable alone:

- :func:`model_from_run` (a run folder of :mod:`.runs`: its config, label map and best weights) or
  :func:`model_from_checkpoint` (a DETR checkpoint file: the official ``detr-r50-e632da11.pth``, the demo's tiny
  DETR, or a run's 91-class checkpoint) -> an eval-mode model, its :class:`~detr_nb_utils.data.label_map.LabelMap`
  and the image sizes it was trained at;
- :func:`predict_images`: reads the files with the package's one image reader (:func:`~detr_nb_utils.data.images.
  read_image`; a file it refuses is recorded with the reason and skipped), resizes them as the validation does, runs
  the model in batches and keeps the detections at or above a score threshold;
- :func:`.prediction_files.write_outputs`: the drawn images, ``results.json`` and ``images.json``.

Used by the command line :mod:`detr_nb_utils.predict` (``python -m detr_nb_utils.predict``), notebook 02's
prediction cell and notebook 07_your_dataset. Inference runs in fp32 (the published computation), without
auxiliary outputs.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision import tv_tensors
from tqdm.auto import tqdm

from ..data.coco import collate_fn
from ..data.images import ImageReadError, read_image
from ..data.label_map import COCO_NUM_CLASSES, LabelMap
from ..data.transforms import MAX_SIZE, VAL_SIZE, make_transforms
from ..models.checkpoint import CheckpointError, checkpoint_dims, read_checkpoint
from ..models.detr import DETR, build_detr
from ..models.hf_layout import is_hf_checkpoint, read_hf_checkpoint
from ..models.postprocess import postprocess
from . import runs
from .config import PROFILES, RunConfig
from .config_checks import CHECKPOINT_SHAPES
from .runtime import resolve_device

#: the published validation size, at which the official checkpoint predicts
PUBLISHED_SIZES = {"min_size": VAL_SIZE, "max_size": MAX_SIZE}
#: the demo world's size, at which the tiny DETR was pre-trained
TINY_SIZES = {"min_size": PROFILES["demo"]["min_size"], "max_size": PROFILES["demo"]["max_size"]}
_ARCH_KEYS = ("backbone", "enc_layers", "hidden_dim", "nheads", "dim_feedforward")


@dataclass
class ImagePrediction:
    """The kept detections of one image: ``scores`` float32 [n], ``indices`` int64 [n] (class indices of the model's
    head), ``names`` (one per detection), ``category_ids`` int64 [n] (the dataset's ids, :meth:`LabelMap.to_id`),
    ``boxes`` float32 [n, 4] (x0, y0, x1, y1) in pixels of the original image of ``size`` (h, w)."""

    path: Path
    size: tuple[int, int]
    scores: np.ndarray
    indices: np.ndarray
    names: list[str]
    category_ids: np.ndarray
    boxes: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


@dataclass
class PredictResult:
    """What :func:`predict_images` found: one :class:`ImagePrediction` per image read, in input order, and
    ``failed``, ``(path, reason)`` for every file that could not be read (skipped)."""

    labels: LabelMap
    threshold: float
    images: list[ImagePrediction] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def num_detections(self) -> int:
        return sum(len(p) for p in self.images)

    def summary(self) -> str:
        """``N images predicted, D detections at score >= T, F failed`` (with ``:`` when some failed)."""
        n, d = len(self.images), self.num_detections
        return (f"{n} image{'s' * (n != 1)} predicted, {d} detection{'s' * (d != 1)} at score >= "
                f"{self.threshold:g}, {len(self.failed)} failed" + (":" if self.failed else ""))


# ---- loading a model ------------------------------------------------------------------------------------------


def model_from_run(run_dir: str | os.PathLike, which: str = "best") -> tuple[DETR, LabelMap, RunConfig]:
    """The model of a run folder, in eval mode on the CPU, with its label map and configuration.

    Reads ``config.json``, ``categories.json`` and the weights of ``checkpoint_best.pth`` (``which="best"``; a run
    without one falls back to ``checkpoint_last.pth`` with a warning) or ``checkpoint_last.pth`` (``which="last"``),
    through :func:`~detr_nb_utils.models.checkpoint.read_checkpoint` (every entry's CRC checked, then
    ``weights_only=True``) and loaded with ``strict=True``. Missing files raise ``FileNotFoundError`` naming the
    folder and what it lacks; damaged weights a ``CheckpointError`` naming the file. Predict at the run's sizes,
    ``cfg.min_size`` and ``cfg.max_size``.
    """
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist (a run folder is <out_dir>/<run_name>, "
                                f"e.g. runs/demo/dec6_q100_seed42)")
    for name in (runs.CONFIG, runs.CATEGORIES):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir} holds no {name}: it is not a run folder, or its run never started "
                                    f"(every run writes {runs.CONFIG} and {runs.CATEGORIES} before training)")
    cfg = RunConfig.from_json(run_dir / runs.CONFIG)
    labels = LabelMap.load(run_dir / runs.CATEGORIES)
    weights = run_dir / (runs.BEST if which == "best" else runs.LAST)
    if not weights.is_file() and which == "best" and (run_dir / runs.LAST).is_file():
        warnings.warn(f"{run_dir} holds no {runs.BEST} (no epoch was evaluated yet); predicting with the weights "
                      f"of {runs.LAST}", stacklevel=2)
        weights = run_dir / runs.LAST
    if not weights.is_file():
        raise FileNotFoundError(f"{run_dir} holds no weights: neither {runs.BEST} nor {runs.LAST} (the run wrote "
                                f"no checkpoint yet; train it first)")
    state_dict = read_checkpoint(weights, fix=f"Its run cannot be predicted from it: delete {run_dir} and train the "
                                              f"run again.")["model"]
    model = build_detr(**{**cfg.arch, "num_classes": labels.num_classes}, num_queries=cfg.num_queries,
                       dec_layers=cfg.dec_layers, dropout=0.0, aux_loss=False)
    _load_strict(model, state_dict, weights)
    return model.eval(), labels, cfg


def model_from_checkpoint(path: str | os.PathLike) -> tuple[DETR, LabelMap, dict[str, int]]:
    """The model of a DETR checkpoint file, in eval mode on the CPU, its label map (COCO's) and the image sizes to
    predict at (``{"min_size", "max_size"}``, :func:`predict_images`'s keywords).

    The architecture comes from the file's ``arch`` entry (the demo's tiny DETR), else from a run's ``config``
    entry (a run's ``checkpoint_*.pth``), else it is the published DETR-R50 (so for Hugging Face weights, a folder or
    ``.safetensors`` file of :mod:`~detr_nb_utils.models.hf_layout`); decoder layers, queries and classes
    are read off the weights, so a cut checkpoint loads too. Sizes: a run's own, the demo world's for the tiny
    backbone, the published 800 / 1333 for ResNet-50. A checkpoint whose head is not COCO's 91 classes raises
    ``ValueError``: its class names live in its run folder (:func:`model_from_run`, ``--run``).
    """
    path = Path(path)
    if is_hf_checkpoint(path):  # Hugging Face DETR-R50 weights: the published architecture
        entries = {"model": read_hf_checkpoint(path)[0]}
    else:
        entries = read_checkpoint(path)
    state_dict = entries["model"]
    dims = checkpoint_dims(state_dict)
    config = entries.get("config") if isinstance(entries.get("config"), dict) else {}
    if isinstance(entries.get("arch"), dict):
        arch = {k: v for k, v in entries["arch"].items() if k in _ARCH_KEYS}
    elif config:
        arch = {k: config[k] for k in _ARCH_KEYS if k in config}
    else:
        arch = {}
    arch = {"backbone": "resnet50", **CHECKPOINT_SHAPES["resnet50"], **arch, **dims}
    if dims["num_classes"] != COCO_NUM_CLASSES:
        raise ValueError(f"{path} has a head of {dims['num_classes']} classes, not COCO's {COCO_NUM_CLASSES}: the "
                         f"names of its classes are in the run folder it comes from; predict with --run <run folder> "
                         f"(model_from_run) instead")
    model = build_detr(**arch, dropout=0.0, aux_loss=False)
    _load_strict(model, state_dict, path)
    if "min_size" in config and "max_size" in config:
        sizes = {"min_size": int(config["min_size"]), "max_size": int(config["max_size"])}
    else:
        sizes = dict(TINY_SIZES if arch["backbone"] == "tiny" else PUBLISHED_SIZES)
    return model.eval(), LabelMap.coco(), sizes


def _load_strict(model: nn.Module, state_dict: dict, path: Path) -> None:
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        lines = str(e).splitlines()
        detail = "; ".join(line.strip() for line in lines[1:4]) or lines[0]
        raise CheckpointError(f"{path} does not fit the model its folder or entries describe ({detail[:400]})") \
            from None


# ---- predicting ---------------------------------------------------------------------------------------------


def predict_images(model: nn.Module, labels: LabelMap, paths: Sequence[str | os.PathLike], *, min_size: int,
                   max_size: int, threshold: float = 0.7, batch_size: int = 4, device: str = "auto",
                   progress: bool = True) -> PredictResult:
    """Detect objects in image files; keep the detections with score >= ``threshold``.

    Each image is read by :func:`~detr_nb_utils.data.images.read_image` as 8-bit RGB (a file it refuses goes to
    ``.failed`` with the reason and is skipped; nothing one file holds can stop the others),
    resized as the validation does (shorter side ``min_size``, longer at most ``max_size``, normalised), batched
    ``batch_size`` at a time (padded at the bottom/right, as in evaluation) and run in fp32 under ``no_grad`` on
    ``device`` (``"auto"``: CUDA when there is one); the model is moved there and put in eval mode. Boxes are in
    pixels of the original image. ``progress``: a progress bar (tqdm; a widget in JupyterLab).
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1] (a score), got {threshold!r}")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    dev = resolve_device(device)
    model.to(dev).eval()
    transform = make_transforms("val", val_size=min_size, max_size=max_size)
    result = PredictResult(labels=labels, threshold=float(threshold))
    names = labels.index_names
    with tqdm(total=len(paths), desc="predict", unit="image", disable=not progress) as bar:
        for batch in _read_batches([Path(p) for p in paths], batch_size, result.failed, bar):
            images, mask, _ = collate_fn([(transform(tv_tensors.Image(im)).as_subclass(torch.Tensor), {})
                                          for _, im in batch])
            orig = torch.tensor([list(im.shape[-2:]) for _, im in batch], dtype=torch.int64, device=dev)
            with torch.no_grad():
                detections = postprocess(model(images.to(dev), mask.to(dev)), orig)
            for (path, im), d in zip(batch, detections):
                keep = d["scores"] >= threshold
                scores, indices = d["scores"][keep].cpu().numpy(), d["labels"][keep].cpu().numpy().astype(np.int64)
                order = np.argsort(-scores, kind="stable")
                scores, indices = scores[order], indices[order]
                result.images.append(ImagePrediction(
                    path=path, size=(int(im.shape[-2]), int(im.shape[-1])), scores=scores.astype(np.float32),
                    indices=indices, names=[names.get(int(i), f"class {int(i)}") for i in indices],
                    category_ids=labels.to_id(indices).astype(np.int64),
                    boxes=d["boxes"][keep].float().cpu().numpy()[order].reshape(-1, 4)))
            bar.update(len(batch))
    return result


def _read_batches(paths: list[Path], batch_size: int, failed: list[tuple[Path, str]], bar: tqdm):
    """Yield lists of ``(path, uint8 image)`` of up to ``batch_size`` readable images; record the others."""
    batch: list[tuple[Path, torch.Tensor]] = []
    for path in paths:
        try:
            batch.append((path, read_image(path)))
        except ImageReadError as e:
            failed.append((path, e.reason))
            bar.update(1)
            continue
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
