"""Epoch 0, evaluated once: the loaded checkpoint's metrics and detections, shared by every run that starts from it.

Epoch 0 is the checkpoint before any training. It depends on the variant (layers, queries, query slots), the data and
how it is scored (image sizes, evaluation batch, precision, device, threads), not on the training seed or the recipe's
rates, so the seeds and recipe arms of a variant share one evaluation, and so does
:func:`.engine.evaluate_checkpoint` (02's epoch-0 AP, 05's choices of 50 queries). It is kept in
``<out_dir>/.epoch0/<key>.json`` (the metrics) and ``<key>.npz`` (the final layer's detections), ``key`` a hash of
everything that decides it (:func:`epoch0_key`), written under temporary names and renamed; a file lock makes a run
that needs it while another process computes it wait and read it. Runs on your own data also key on the seed: their
fresh class-head rows are drawn from it. The folder goes with its run folders (``make clean-demo``).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..data import atomic
from .config import RunConfig

CACHE = ".epoch0"
#: config fields that cannot change epoch 0: how the model trains, and where the run goes
TRAINING_ONLY = ("epochs", "batch_size", "lr", "lr_backbone", "weight_decay", "clip_max_norm", "lr_drop",
                 "eval_every", "recipe", "warmup_steps", "train_scales", "random_crop", "max_train_images", "dropout",
                 "num_workers", "progress", "out_dir", "run_name", "device")


def epoch0_key(cfg: RunConfig, device: str, precision: str, manifest: dict) -> str:
    """16 hex digits of a hash of what decides epoch 0: the config without :data:`TRAINING_ONLY` (and without the
    seed unless fresh weights are drawn), the device type, the precision computed in, the data's manifest and the
    checkpoint file's size and modification time."""
    fields = {k: v for k, v in cfg.to_dict().items() if k not in TRAINING_ONLY}
    if not cfg.own_data and cfg.checkpoint is not None:
        fields.pop("seed")  # every weight comes from the checkpoint
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint else None
    stat = ckpt.stat() if ckpt is not None and ckpt.is_file() else None
    what = {"config": fields, "device": str(device).split(":")[0], "precision": precision, "data": manifest,
            "checkpoint": [stat.st_size, stat.st_mtime_ns] if stat else None}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path`` while the block runs (POSIX ``flock``; elsewhere none, and two processes may
    both compute the same epoch 0, each writing the same files)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read(stem: Path) -> dict | None:
    meta, arrays = stem.with_suffix(".json"), stem.with_suffix(".npz")
    if not (meta.is_file() and arrays.is_file()):
        return None
    metrics = json.loads(meta.read_text())
    with np.load(arrays, allow_pickle=False) as f:
        metrics["detections"] = {k: f[k] for k in f.files if ":" not in k}
        layers = sorted({int(k.split(":")[0]) for k in f.files if ":" in k})
        if layers:  # every auxiliary layer's detections, first layer first
            metrics["layer_detections"] = [{k.split(":")[1]: f[k] for k in f.files if k.startswith(f"{i}:")}
                                           for i in layers]
    return metrics


def _write(stem: Path, metrics: dict) -> None:
    arrays = dict(metrics["detections"]) | {f"{i}:{k}": v for i, layer in enumerate(metrics.get("layer_detections", []))
                                             for k, v in layer.items()}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic.write_bytes(stem.with_suffix(".npz"), buffer.getvalue())  # first: the JSON says both are there
    atomic.write_text(stem.with_suffix(".json"), json.dumps({k: v for k, v in metrics.items()
                                                             if k not in ("detections", "layer_detections")}))


def shared_epoch0(cfg: RunConfig, key: str, compute: Callable[[], dict]) -> dict:
    """Epoch 0's metrics (with ``detections``, the final layer's arrays) for ``key`` (:func:`epoch0_key`): read from
    ``<out_dir>/.epoch0/`` when an earlier run or process evaluated it, else ``compute()``d and kept there."""
    stem = Path(cfg.out_dir) / CACHE / key
    found = _read(stem)
    if found is not None:
        return found
    with _locked(stem.with_suffix(".lock")):
        found = _read(stem)  # another process may have written it while this one waited
        if found is None:
            found = compute()
            _write(stem, found)
    with contextlib.suppress(OSError):
        os.remove(stem.with_suffix(".lock"))
    return found
