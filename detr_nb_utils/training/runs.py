"""The run folder: everything needed to read, reproduce or resume one fine-tuning run.

``<out_dir>/<run_name>/`` holds ``config.json`` (the :class:`~.config.RunConfig`), ``split_manifest.json`` (copied
from the split), ``metrics.jsonl`` (one JSON object per finished epoch, epoch 0 being the loaded checkpoint before any
training), ``history.csv`` (the same without per-category AP), ``detections/epoch_N.npz`` (the final layer's
detections of every evaluated epoch N, as flat arrays, for the bootstrap of :mod:`detr_nb_utils.analysis.bootstrap`),
``checkpoint_last.pth`` (model, optimizer, scheduler, epoch, RNG states, config and the metrics history: the source of
truth for resuming) and ``checkpoint_best.pth`` (the weights of the epoch with the best val AP). Every file is written
under a temporary name and renamed, so an interrupted run never leaves half a file; all load with
``torch.load(weights_only=True)``. Written by :func:`.engine.run_experiment` (notebooks 03-05), read by
:func:`load_run` (06_analysis, which never retrains).
"""
from __future__ import annotations

import io
import json
import math
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data import atomic
from .config import RunConfig

CONFIG, MANIFEST, METRICS, HISTORY = "config.json", "split_manifest.json", "metrics.jsonl", "history.csv"
LAST, BEST = "checkpoint_last.pth", "checkpoint_best.pth"
DETECTIONS = "detections"
# fields a resumed run may change: they do not change the numbers (epochs: a finished run can be extended;
# channels_last: the memory layout, rounding at most)
RESUMABLE_CHANGES = ("epochs", "progress", "num_workers", "device", "channels_last")


class RunConfigMismatch(ValueError):
    """A run folder holds a run made with a different configuration."""


def config_diff(old: RunConfig, new: RunConfig) -> list[tuple[str, object, object]]:
    """``(field, old, new)`` for every field that differs, except :data:`RESUMABLE_CHANGES`."""
    a, b = old.to_dict(), new.to_dict()
    return [(k, a[k], b[k]) for k in a if a[k] != b[k] and k not in RESUMABLE_CHANGES]


def prepare_run_dir(cfg: RunConfig, manifest_file: Path) -> Path:
    """Create (or re-open for resuming) ``cfg.run_dir``; write ``config.json`` and copy the split manifest.

    Raises :class:`RunConfigMismatch` naming the differing fields when the folder holds another configuration
    or another split.
    """
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / CONFIG).is_file():
        diff = config_diff(RunConfig.from_json(run_dir / CONFIG), cfg)
        if diff:
            rows = "; ".join(f"{k}: {a!r} in the folder, {b!r} now" for k, a, b in diff)
            raise RunConfigMismatch(f"{run_dir} holds a run with a different configuration ({rows}). Choose a new "
                                    f"run_name, or delete {run_dir} to start over.")
    if (run_dir / MANIFEST).is_file() and (run_dir / MANIFEST).read_bytes() != Path(manifest_file).read_bytes():
        raise RunConfigMismatch(f"{run_dir} was trained on another split than {manifest_file}. Choose a new "
                                f"run_name, or delete {run_dir} to start over.")
    atomic.write_text(run_dir / CONFIG, cfg.to_json())
    shutil.copyfile(manifest_file, run_dir / f".{MANIFEST}.tmp")
    (run_dir / f".{MANIFEST}.tmp").replace(run_dir / MANIFEST)
    return run_dir


def rng_state() -> dict:
    """The torch, CUDA, numpy and Python RNG states as tensors and plain values (``weights_only``-loadable)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                      "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
            "python": {"version": py_state[0], "state": torch.tensor(py_state[1], dtype=torch.int64),
                       "gauss_next": py_state[2]}}


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"].tolist()), p["gauss_next"]))


def save_last(run_dir: Path, model, optimizer, scheduler, epoch: int, history: list[dict], cfg: RunConfig) -> None:
    atomic.torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                       "scheduler": scheduler.state_dict(), "epoch": epoch, "rng": rng_state(),
                 "config": cfg.to_dict(), "history": history}, run_dir / LAST)


def save_best(run_dir: Path, model, epoch: int, metrics: dict, cfg: RunConfig) -> None:
    """The weights of the best-AP epoch in the official layout (``model`` key), loadable by ``load_pretrained``."""
    atomic.torch_save({"model": model.state_dict(), "epoch": epoch, "config": cfg.to_dict(),
                 "metrics": {k: v for k, v in metrics.items() if not isinstance(v, dict)}}, run_dir / BEST)


def save_detections(run_dir: Path, epoch: int, arrays: dict[str, np.ndarray]) -> Path:
    """``detections/epoch_{epoch}.npz`` (written atomically): :func:`.evaluation.detection_arrays`."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return atomic.write_bytes(Path(run_dir) / DETECTIONS / f"epoch_{epoch}.npz", buffer.getvalue())


def load_detections(run_dir: str | Path, epoch: int) -> dict[str, np.ndarray]:
    """The detections saved for ``epoch``: ``image_id``, ``category_id``, ``score``, ``bbox`` (x, y, w, h) arrays."""
    path = Path(run_dir) / DETECTIONS / f"epoch_{epoch}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: epoch {epoch} was not evaluated, or the run predates saved "
                                "detections (delete the run folder and run it again)")
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def detection_epochs(run_dir: str | Path) -> list[int]:
    """The epochs whose detections the run folder holds, in order."""
    files = (Path(run_dir) / DETECTIONS).glob("epoch_*.npz")
    return sorted(int(p.stem.removeprefix("epoch_")) for p in files if p.stem.removeprefix("epoch_").isdigit())


def load_last(run_dir: Path) -> dict | None:
    """The state in ``checkpoint_last.pth``, or None when the run has not finished an epoch."""
    path = Path(run_dir) / LAST
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def write_logs(run_dir: Path, history: list[dict]) -> None:
    """Rewrite ``metrics.jsonl`` and ``history.csv`` from the history (NaN written as null)."""
    atomic.write_text(run_dir / METRICS, "".join(json.dumps(_json_safe(h)) + "\n" for h in history))
    table = pd.DataFrame([{k: v for k, v in h.items() if not isinstance(v, dict)} for h in history])
    atomic.write_text(run_dir / HISTORY, table.to_csv(index=False))


def best_epoch(history: list[dict], key: str, mode: str) -> int | None:
    """Fine-tuned epoch (>= 1) of the best finite ``key`` (``mode`` "max" or "min"); the earliest on ties.

    Epoch 0, the checkpoint before any training, is the starting point and is reported on its own; it is
    the answer only while no trained epoch has been evaluated. None if no epoch has ``key``.
    """
    scored = [(h[key], h["epoch"]) for h in history if isinstance(h.get(key), float) and math.isfinite(h[key])]
    if any(e >= 1 for _, e in scored):
        scored = [(s, e) for s, e in scored if e >= 1]
    if not scored:
        return None
    best = max(s for s, _ in scored) if mode == "max" else min(s for s, _ in scored)
    return min(e for s, e in scored if s == best)


@dataclass
class RunRecord:
    """A run folder, read back: ``metrics`` (one row per finished epoch, indexed by ``epoch``; columns
    ``train_*``, ``val_*``, ``lr``, times), ``per_category_ap`` (epochs x category names), the best epochs by
    val AP and by the original study's total validation loss, the split manifest, and whether every epoch
    finished. ``best_checkpoint``: the weights of the best-AP epoch (loadable by ``load_pretrained``)."""

    run_dir: Path
    config: RunConfig
    metrics: pd.DataFrame
    per_category_ap: pd.DataFrame
    best_epoch_ap: int | None
    best_epoch_loss: int | None
    split_manifest: dict = field(repr=False)
    complete: bool = False

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / BEST


def load_run(path: str | Path) -> RunRecord:
    """Read a run folder written by :func:`.engine.run_experiment` (never trains)."""
    run_dir = Path(path)
    if not (run_dir / METRICS).is_file():
        raise FileNotFoundError(f"{run_dir} holds no {METRICS}: it is not a run folder, or no epoch has finished")
    cfg = RunConfig.from_json(run_dir / CONFIG)
    history = [json.loads(line) for line in (run_dir / METRICS).read_text().splitlines() if line.strip()]
    history = [{k: (math.nan if v is None else v) for k, v in h.items()} for h in history]
    metrics = pd.DataFrame([{k: v for k, v in h.items() if not isinstance(v, dict)} for h in history])
    per_cat = pd.DataFrame({h["epoch"]: h["val_per_category_AP"] for h in history if h.get("val_per_category_AP")}).T
    return RunRecord(run_dir=run_dir, config=cfg, metrics=metrics.set_index("epoch"),
                     per_category_ap=per_cat.rename_axis("epoch").astype(float),
                     best_epoch_ap=best_epoch(history, "val_AP", "max"),
                     best_epoch_loss=best_epoch(history, "val_loss_total", "min"),
                     split_manifest=json.loads((run_dir / MANIFEST).read_text()),
                     complete=int(metrics["epoch"].max()) >= cfg.epochs)
