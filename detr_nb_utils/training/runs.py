"""The run folder: everything needed to read, reproduce or resume one fine-tuning run.

``<out_dir>/<run_name>/`` holds ``config.json`` (the :class:`~.config.RunConfig`), ``split_manifest.json`` (copied from
the split; for your own dataset its files and their SHA-256), ``categories.json`` (the label map: class index <->
category id <-> name) and ``class_head.csv`` (where each class-head row started from), ``metrics.jsonl`` (one JSON
object per finished epoch, epoch 0 being the loaded checkpoint before any training), ``history.csv`` (the same without
per-category AP), ``detections/epoch_N.npz`` (the final layer's detections of every evaluated epoch N, as flat arrays,
for the bootstrap of :mod:`detr_nb_utils.analysis.bootstrap`), ``detections/layers/epoch_N.npz`` (the auxiliary decoder
layers' detections of epoch 0 and the last epoch, for the error breakdown per layer), TensorBoard's event files
(``events.out.tfevents.*``, :mod:`.tensorboard`), ``checkpoint_last.pth`` (model, optimizer, scheduler,
epoch, RNG states, config and the metrics history: the source of truth for resuming) and ``checkpoint_best.pth`` (the
weights of the epoch with the best val AP). Every file is written under a temporary name and renamed, so an interrupted
run never leaves half a file; the checkpoints are read back by the package's one checkpoint reader
(:func:`~detr_nb_utils.models.checkpoint.read_checkpoint`: every entry's CRC-32, then ``weights_only=True``), so a
damaged file is named, never used. Written by :func:`.engine.run_experiment`
(notebooks 03-05, 07), read by :func:`load_run` (06_analysis, which never retrains) and :mod:`detr_nb_utils.predict`.
"""
from __future__ import annotations

import io
import json
import math
import random
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data import atomic
from ..data.split import load_manifest
from ..models.checkpoint import CheckpointError, file_damage, read_checkpoint
from .config import RunConfig

CONFIG, MANIFEST, METRICS, HISTORY = "config.json", "split_manifest.json", "metrics.jsonl", "history.csv"
#: the label map (:class:`~detr_nb_utils.data.label_map.LabelMap`) and where each class-head row came from
CATEGORIES, CLASS_HEAD = "categories.json", "class_head.csv"
LAST, BEST = "checkpoint_last.pth", "checkpoint_best.pth"
DETECTIONS = "detections"
#: ``detections/layers/epoch_N.npz``: every auxiliary decoder layer's detections, with a ``layer`` array (0-based)
LAYER_DETECTIONS = "layers"
#: one line per start or resume of a run: when, from which epoch, and on what (:func:`.runtime.environment`)
ENVIRONMENT = "environment.jsonl"
# fields a resumed run may change: they do not change the numbers (epochs: a finished run can be extended;
# channels_last and threads: the memory layout and the order of sums, rounding at most)
RESUMABLE_CHANGES = ("epochs", "progress", "num_workers", "device", "channels_last", "threads")
#: where the run folder is, which is not what the run is: a folder moved or renamed resumes where it is now (its
#: config.json is rewritten to say so). The input paths (data, split, checkpoint) stay part of a run's identity: they
#: are relative to the project root, so they hold wherever the folder goes within the project (or a copy of it)
LOCATION_FIELDS = ("out_dir", "run_name")


class RunConfigMismatch(ValueError):
    """A run folder holds a run made with a different configuration."""


def config_diff(old: RunConfig, new: RunConfig) -> list[tuple[str, object, object]]:
    """``(field, old, new)`` for every field that differs, except :data:`RESUMABLE_CHANGES` and
    :data:`LOCATION_FIELDS`."""
    a, b = old.to_dict(), new.to_dict()
    return [(k, a[k], b[k]) for k in a if a[k] != b[k] and k not in RESUMABLE_CHANGES + LOCATION_FIELDS]


def located(cfg: RunConfig, run_dir: str | Path) -> RunConfig:
    """``cfg`` with ``out_dir`` and ``run_name`` (None where the folder's name is the default,
    :func:`~.config.variant_name`) saying that its run folder is ``run_dir``: the config of a folder read where it is
    now, after a move."""
    run_dir = Path(run_dir)
    if cfg.run_dir == run_dir:
        return cfg
    moved = replace(cfg, out_dir=str(run_dir.parent), run_name=None)
    return moved if moved.run_dir.name == run_dir.name else replace(moved, run_name=run_dir.name)


def prepare_run_dir(cfg: RunConfig, manifest: dict | Path) -> Path:
    """Create (or re-open for resuming) ``cfg.run_dir``; write ``config.json`` and the data's manifest (the split's,
    or your own dataset's files and their SHA-256) as ``split_manifest.json``.

    Raises :class:`RunConfigMismatch` naming the differing fields when the folder holds another configuration
    or other data. The folder's location is not compared (:data:`LOCATION_FIELDS`): a moved folder resumes.
    """
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / CONFIG).is_file():
        diff = config_diff(RunConfig.from_json(run_dir / CONFIG), cfg)
        if diff:
            rows = "; ".join(f"{k}: {a!r} in the folder, {b!r} now" for k, a, b in diff)
            raise RunConfigMismatch(f"{run_dir} holds a run with a different configuration ({rows}). Choose a new "
                                    f"run_name, or delete {run_dir} to start over.")
    manifest = load_manifest(manifest)
    if (run_dir / MANIFEST).is_file() and json.loads((run_dir / MANIFEST).read_text()) != manifest:
        raise RunConfigMismatch(f"{run_dir} was trained on other data (another split, or changed annotation files) "
                                f"than this run's. Choose a new run_name, or delete {run_dir} to start over.")
    atomic.write_text(run_dir / CONFIG, cfg.to_json())
    atomic.write_text(run_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
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
        raise FileNotFoundError(f"{path} is missing: epoch {epoch} was not evaluated (a run saves the detections of "
                                f"every epoch it evaluates: {detection_epochs(run_dir)} in {run_dir})")
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def detection_epochs(run_dir: str | Path) -> list[int]:
    """The epochs whose detections the run folder holds, in order."""
    files = (Path(run_dir) / DETECTIONS).glob("epoch_*.npz")
    return sorted(int(p.stem.removeprefix("epoch_")) for p in files if p.stem.removeprefix("epoch_").isdigit())


def save_layer_detections(run_dir: Path, epoch: int, layers: list[dict[str, np.ndarray]]) -> Path:
    """``detections/layers/epoch_{epoch}.npz`` (atomic): the auxiliary layers' :func:`.evaluation.detection_arrays`
    (layer 0 first) concatenated, with ``layer`` int8 [N] saying whose each row is. The final layer stays in
    :func:`save_detections`' file, which every reader of the bootstrap keeps reading unchanged."""
    arrays = {k: np.concatenate([d[k] for d in layers]) for k in layers[0]} if layers else {}
    arrays["layer"] = np.repeat(np.arange(len(layers), dtype=np.int8), [len(d["score"]) for d in layers])
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return atomic.write_bytes(Path(run_dir) / DETECTIONS / LAYER_DETECTIONS / f"epoch_{epoch}.npz", buffer.getvalue())


def load_layer_detections(run_dir: str | Path, epoch: int) -> list[dict[str, np.ndarray]]:
    """Every decoder layer's detections of ``epoch``, first layer first, the final layer last (from
    :func:`load_detections`); the run folder keeps them for epoch 0 and its last epoch."""
    path = Path(run_dir) / DETECTIONS / LAYER_DETECTIONS / f"epoch_{epoch}.npz"
    if not path.is_file():
        kept = sorted(int(p.stem.removeprefix("epoch_")) for p in path.parent.glob("epoch_*.npz")) \
            if path.parent.is_dir() else []
        raise FileNotFoundError(f"{path} is missing: the run folder keeps every decoder layer's detections for epochs "
                                f"{kept or 'none (it predates them: run it again to get them)'}")
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    layer = arrays.pop("layer")
    return [{k: v[layer == n] for k, v in arrays.items()} for n in range(int(layer.max()) + 1 if len(layer) else 0)] \
        + [load_detections(run_dir, epoch)]


#: the field of every metrics row (``metrics.jsonl``, and the history in ``checkpoint_last.pth``) that says which
#: precision the run computed in: "fp32" or "bf16", what ``precision`` resolved to on the run's device (never "auto")
PRECISION_FIELD = "effective_precision"
_LAST_KEYS = ("model", "optimizer", "scheduler", "epoch", "rng", "config", "history")


class DamagedRunFolder(CheckpointError):
    """A run folder's ``checkpoint_last.pth`` or ``checkpoint_best.pth`` cannot be read; the message names the file
    and the ways forward."""


class PrecisionMismatch(RunConfigMismatch):
    """Resuming a run folder would compute in another precision than the one its finished epochs were computed in."""


def load_last(run_dir: Path) -> dict | None:
    """The state in ``checkpoint_last.pth``, or None when the run has not finished an epoch.

    Both checkpoints are checked by the one checkpoint reader (every entry's CRC-32 first): raises
    :class:`DamagedRunFolder` when ``checkpoint_last.pth`` is truncated, garbled or not a last checkpoint, or when
    ``checkpoint_best.pth`` is damaged (resuming would keep garbage as the run's best weights), naming the file and
    the ways forward. ``checkpoint_best.pth`` is recommended as a starting point only when it reads cleanly."""
    run_dir = Path(run_dir)
    path, best = run_dir / LAST, run_dir / BEST
    if not path.is_file():
        return None
    try:
        state = read_checkpoint(path)
    except CheckpointError as e:
        what = e.reason
    else:
        missing = [k for k in _LAST_KEYS if k not in state]
        if not missing:
            if best.is_file() and (damage := file_damage(best)) is not None:
                raise DamagedRunFolder(f"{best} is damaged: {damage}. These are the run's best weights (what "
                                       f"predict and a new run from them would use); delete {run_dir} and run again "
                                       f"to train the run afresh.", best, damage)
            return state
        what = f"it lacks {missing}"
    if not best.is_file():
        keep = f" ({run_dir} holds no {BEST} to start from)"
    elif (best_problem := _best_problem(best)) is not None:
        keep = f" ({best}, its best epoch's weights, is damaged too: {best_problem})"
    else:
        keep = (f"; or keep the weights of its best epoch, {best}, by passing checkpoint='{best}' with a new run_name "
                "(training starts again from those weights, with a fresh optimizer; leave query_indices None: the "
                "file holds only the slots the run kept)")
    raise DamagedRunFolder(f"{path} is damaged: {what}. The run in {run_dir} cannot resume from it. Delete {run_dir} "
                           f"and run again to start the run afresh{keep}.", path, what)


def _best_problem(best: Path) -> str | None:
    """What keeps ``checkpoint_best.pth`` from being a starting point (read as a new run would read it), or None."""
    try:
        read_checkpoint(best)
    except CheckpointError as e:
        return e.reason
    return None


def check_resume_precision(run_dir: Path, state: dict, effective: str, how: str, training_left: bool) -> None:
    """Check that resuming computes in the effective precision ("fp32" or "bf16") the run folder's finished epochs
    were computed in (the :data:`PRECISION_FIELD` of every row of its history); raises :class:`PrecisionMismatch`
    naming the folder, both precisions and the ways forward.

    ``state``: :func:`load_last`'s; ``effective``: the precision the resumed run computes in, ``how``: how it got it
    (e.g. "precision='auto' on cpu"); ``training_left``: whether epochs remain (a finished run is only read back).
    """
    recorded = sorted({str(h.get(PRECISION_FIELD)) for h in state["history"]})
    if recorded == [effective] or not training_left:
        return
    ways = (f"delete {run_dir} to run it afresh in {effective}, or start a new run_name from its best weights "
            f"(checkpoint='{Path(run_dir) / BEST}').")
    raise PrecisionMismatch(f"{run_dir} was computed in {', '.join(recorded)} (the {PRECISION_FIELD} of its "
                            f"{METRICS}); resuming it would compute in {effective} ({how}), and one run must not mix "
                            f"precisions. Resume it where precision resolves to {', '.join(recorded)} again "
                            f"(the machine and device that trained it), or {ways}")


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def record_environment(run_dir: Path, env: dict, from_epoch: int | None) -> None:
    """Add a line to ``environment.jsonl``: the UTC time this session of the run started, the epoch it resumed
    from (``None``: a fresh start) and ``env`` (:func:`.runtime.environment`). The report's setup section reads it."""
    path = run_dir / ENVIRONMENT
    before = path.read_text() if path.is_file() else ""
    line = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "from_epoch": from_epoch, **env}
    atomic.write_text(path, before + json.dumps(line) + "\n")


def write_logs(run_dir: Path, history: list[dict]) -> None:
    """Rewrite ``metrics.jsonl`` and ``history.csv`` from the history (NaN written as null)."""
    atomic.write_text(run_dir / METRICS, "".join(json.dumps(_json_safe(h)) + "\n" for h in history))
    table = pd.DataFrame([{k: v for k, v in h.items() if not isinstance(v, dict)} for h in history])
    atomic.write_text(run_dir / HISTORY, table.to_csv(index=False))


def best_epoch(history: list[dict], key: str, mode: str) -> int | None:
    """The fine-tuned epoch (>= 1) of the best finite ``key`` (``mode`` "max" or "min"); the earliest on ties.

    The one definition of "best" everywhere (checkpoint_best.pth, notebooks 03-06): epoch 0, the checkpoint before
    any training, is the starting point, reported on its own and never picked, so "best minus epoch 0" can be
    negative. None when no fine-tuned epoch has ``key``.
    """
    scored = [(h[key], h["epoch"]) for h in history
              if h["epoch"] >= 1 and isinstance(h.get(key), float) and math.isfinite(h[key])]
    if not scored:
        return None
    best = max(s for s, _ in scored) if mode == "max" else min(s for s, _ in scored)
    return min(e for s, e in scored if s == best)


@dataclass
class RunRecord:
    """A run folder, read back: ``metrics`` (one row per finished epoch, indexed by ``epoch``; columns
    ``train_*``, ``val_*``, ``lr``, times), ``per_category_ap`` (epochs x category names), the best fine-tuned
    epochs (:func:`best_epoch`) by val AP and by the original study's total validation loss, the split manifest,
    and whether every epoch finished, ``environment``: what each session of the run ran on
    (:data:`ENVIRONMENT`). ``final_epoch``: the last evaluated epoch
    (06_analysis's pre-registered comparison); ``effective_precision``: what the run computed in;
    ``best_checkpoint``: the weights of the best-AP epoch (loadable by ``load_pretrained``)."""

    run_dir: Path
    config: RunConfig
    metrics: pd.DataFrame
    per_category_ap: pd.DataFrame
    best_epoch_ap: int | None
    best_epoch_loss: int | None
    split_manifest: dict = field(repr=False)
    complete: bool = False
    environment: list[dict] = field(default_factory=list, repr=False)

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / BEST

    @property
    def final_epoch(self) -> int | None:
        """The last epoch with a finite val AP: the run's final result (``config.epochs`` once complete)."""
        ap = self.metrics["val_AP"].dropna() if "val_AP" in self.metrics else pd.Series(dtype=float)
        return int(ap.index.max()) if len(ap) else None

    @property
    def effective_precision(self) -> str | None:
        """What the run computed in: the :data:`PRECISION_FIELD` its metrics rows record ("fp32", "bf16", or both
        joined by "+" for a run that mixed them); None when its rows record none."""
        recorded = self.metrics[PRECISION_FIELD].dropna() if PRECISION_FIELD in self.metrics else []
        return "+".join(sorted(set(recorded))) if len(recorded) else None


def load_run(path: str | Path) -> RunRecord:
    """Read a run folder written by :func:`.engine.run_experiment` (never trains); its config says where the folder
    is now (:func:`located`), wherever it was trained."""
    run_dir = Path(path)
    if not (run_dir / METRICS).is_file():
        raise FileNotFoundError(f"{run_dir} holds no {METRICS}: it is not a run folder, or no epoch has finished")
    cfg = located(RunConfig.from_json(run_dir / CONFIG), run_dir)
    history = [json.loads(line) for line in (run_dir / METRICS).read_text().splitlines() if line.strip()]
    history = [{k: (math.nan if v is None else v) for k, v in h.items()} for h in history]
    metrics = pd.DataFrame([{k: v for k, v in h.items() if not isinstance(v, dict)} for h in history])
    per_cat = pd.DataFrame({h["epoch"]: h["val_per_category_AP"] for h in history if h.get("val_per_category_AP")}).T
    return RunRecord(run_dir=run_dir, config=cfg, metrics=metrics.set_index("epoch"),
                     per_category_ap=per_cat.rename_axis("epoch").astype(float),
                     best_epoch_ap=best_epoch(history, "val_AP", "max"),
                     best_epoch_loss=best_epoch(history, "val_loss_total", "min"),
                     split_manifest=json.loads((run_dir / MANIFEST).read_text()),
                     complete=int(metrics["epoch"].max()) >= cfg.epochs,
                     environment=[json.loads(line) for line in (run_dir / ENVIRONMENT).read_text().splitlines()
                                  if line.strip()] if (run_dir / ENVIRONMENT).is_file() else [])
