"""Pre-training the demo world's tiny DETR from scratch on synthetic shapes, so that the demo fine-tunes a model
that has learnt something, as the study fine-tunes the official checkpoint.

``python -m detr_nb_utils.training.pretrain`` (``make pretrain``; defaults: the committed checkpoint's run) trains
``build_detr(**TINY_DETR)`` (6 decoder layers, 100 queries, 91 classes: the official checkpoint's layout apart from
the backbone and the widths) on the shape world's pre-training stream (:class:`~detr_nb_utils.data.synthetic.
ShapeStream`), with the project's matcher, set loss (auxiliary losses included) and training step
(:func:`.engine.train_one_epoch`: AdamW, gradient clipping 0.1), and evaluates COCO AP on a fixed held-out set of
the same world (:func:`.evaluation.evaluate`). Beside the checkpoint ``<out>`` it writes ``<stem>.csv`` (the
training curve: step, losses, AP at each evaluation) and ``<stem>.json`` (final AP, SHA-256 of the checkpoint,
wall time, the configuration, and ``demo_val``: the checkpoint's epoch-0 AP on the demo profile's validation split,
which a test holds the committed checkpoint to). All three are written atomically. The settings it shares with
fine-tuning (batch size, learning rates, loss weights, image sizes, device, precision, ...) are a
:class:`.config.RunConfig` (:data:`SHARED`, :data:`TINY_RUN`), with one flag each under RunConfig's name
(``--lr``, ``--min-size``, ``--train-scales``); the pre-training's own (``--steps``, ``--lr-drop`` in steps, ...) sit
beside it in :class:`PretrainConfig`.

The checkpoint is the project's format, a dict with ``model`` (the fp32 state dict), ``arch`` (the
:func:`~detr_nb_utils.models.detr.build_detr` arguments) and ``pretrain`` (steps, seed, AP), loadable by
:func:`~detr_nb_utils.models.checkpoint.load_pretrained` with ``weights_only=True`` and cut to fewer decoder
layers or queries by the same surgery as the official one.

Reproducible: on the CPU in fp32, the same ``--seed`` and ``--steps`` (and the same number of threads) give the
same weights and AP; ``--minutes`` stops earlier when the wall time runs out (the summary says so) and is only a
safety net. Differences from the published recipe, for training from scratch: the backbone learns at the
transformer's rate (it has no ImageNet weights to keep), the rate is 5e-4 (a 64-wide model, batch 16), no dropout,
and one image size (shorter side 96) without crops (``augment=False``; with the published augmentation the tiny
DETR had learnt no class after 6,000 steps); the learning rates drop x0.1 at 2/3 of the steps, as the published
200 of 300 epochs. The demo fine-tunes it at that size and dropout (:data:`.config.PROFILES`).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import itertools
import json
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data import atomic
from ..data.coco import build_dataset, collate_fn
from ..data.download import sha256_file
from ..data.synthetic import ShapeStream, make_synthetic_coco
from ..data.transforms import TRAIN_SCALES, VAL_SIZE
from ..models.detr import TINY_DETR, build_detr
from ..models.fast import resolve_amp_dtype, resolve_channels_last, set_fast_mode
from ..models.loss import SetCriterion
from .config import RunConfig, make_config
from .config_checks import CHECKPOINT_SHAPES
from .engine import build_optimizer, evaluate_checkpoint, train_one_epoch
from .evaluation import evaluate
from .runtime import resolve_device, seed_everything

#: the published training scales (480..800) scaled to the demo's 96-pixel images, as the demo fine-tunes at
DEMO_SCALES = tuple(round(s * 96 / VAL_SIZE) for s in TRAIN_SCALES)


#: the settings pre-training shares with fine-tuning: fields of :class:`.config.RunConfig`, read from
#: :attr:`PretrainConfig.run` (min_size: the held-out set's shorter side; train_scales: the training images')
SHARED = ("seed", "batch_size", "lr", "lr_backbone", "weight_decay", "clip_max_norm", "eos_coef", "dropout",
          "num_queries", "dec_layers", "min_size", "max_size", "train_scales", "num_workers", "device", "precision",
          "channels_last", "progress")
#: the committed checkpoint's values of :data:`SHARED`: the tiny DETR from scratch (no checkpoint) at batch 16, both
#: learning rates 5e-4, no dropout, one image size (shorter side 96, longer at most 192), in fp32 on the CPU; the rest
#: as the published recipe (weight decay 1e-4, clipping 0.1, "no object" weight 0.1, 6 decoder layers, 100 queries)
TINY_RUN = RunConfig(profile="demo", backbone="tiny", **CHECKPOINT_SHAPES["tiny"], checkpoint=None, seed=0,
                     batch_size=16, lr=5e-4, lr_backbone=5e-4, dropout=0.0, min_size=96, max_size=192,
                     train_scales=(96,), num_workers=1, device="cpu", progress=False)


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that decides a pre-training run's weights: ``run``, a :class:`.config.RunConfig` holding the
    settings shared with fine-tuning (:data:`SHARED`, which mean the same there; the engine's training step reads
    it), and the pre-training's own fields. :func:`make_pretrain_config` makes one from flat keyword arguments.

    Image sizes are pixels (height, width): the world's images are drawn at ``image_size`` (the demo dataset's) and
    resized to a shorter side in ``run.train_scales`` (training) or ``run.min_size`` (held-out set), the longer side
    at most ``run.max_size``. ``augment``: train with the published augmentation (flip, multi-scale resize, random
    crops; :class:`ShapeStream`; pass ``train_scales=DEMO_SCALES``) as the official checkpoint was; without it (the
    default, the committed checkpoint's), one resize to a scale of ``run.train_scales``. From scratch with it, the
    tiny DETR had not learnt the classes after 6,000 steps (held-out AP 0.01; ``benchmarks/RESULTS.md``), so the demo
    fine-tunes at the one scale it was pre-trained at. ``lr_drop``: the step (not epoch) at which both learning
    rates drop x0.1 (``None``: 2/3 of ``steps``); ``eval_every``, ``log_every``: steps. ``minutes``: stop at the
    first log point past this wall time (``None``: run every step). ``threads``: torch's CPU threads for the model;
    ``run.num_workers``: DataLoader processes drawing the images (the default, one thread and one worker, keeps
    both cores of a 2-core machine busy and degrades gently when the machine is shared: two threads of compute
    slowed down twenty-fold next to another job). The weights depend on ``threads`` (the order of floating-point
    sums), not on ``num_workers``."""

    run: RunConfig = TINY_RUN
    out: str = "data/pretrained/tiny_detr.pth"
    steps: int = 9000
    minutes: float | None = None
    lr_drop: int | None = None
    image_size: tuple[int, int] = (160, 224)
    augment: bool = False
    heldout_images: int = 200
    eval_every: int = 1000
    log_every: int = 100
    threads: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", tuple(self.image_size))
        if not (isinstance(self.run, RunConfig) and self.run.arch == {**TINY_DETR, "num_classes": 91}):
            arch = self.run.arch if isinstance(self.run, RunConfig) else self.run
            raise ValueError(f"PretrainConfig.run has the architecture {arch!r}: must be the tiny DETR's "
                             f"({TINY_DETR}, 91 classes), e.g. dataclasses.replace(TINY_RUN, ...)")
        for name in ("steps", "heldout_images", "eval_every", "log_every", "threads"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"PretrainConfig.{name} = {getattr(self, name)!r} is invalid: must be an integer >= 1")
        if self.lr_drop is not None and not (isinstance(self.lr_drop, int) and self.lr_drop >= 1):
            raise ValueError(f"PretrainConfig.lr_drop = {self.lr_drop!r} is invalid: must be None or an integer >= 1")
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f"PretrainConfig.minutes = {self.minutes!r} is invalid: must be None or > 0")

    @property
    def arch(self) -> dict:
        """The :func:`build_detr` arguments of the model, as stored in the checkpoint."""
        return {**TINY_DETR, "num_classes": self.run.num_classes, "num_queries": self.run.num_queries,
                "dec_layers": self.run.dec_layers}

    @property
    def drop_step(self) -> int:
        return self.lr_drop if self.lr_drop is not None else max(1, round(self.steps * 2 / 3))

    def to_dict(self) -> dict:
        """The pre-training's own fields, then :data:`SHARED` from ``run``: one flat record."""
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "run"}
        values = {**own, **{name: getattr(self.run, name) for name in SHARED}}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def make_pretrain_config(**params) -> PretrainConfig:
    """A :class:`PretrainConfig` from flat keyword arguments: the pre-training's own fields, and any of
    :data:`SHARED`, which replace :data:`TINY_RUN`'s (checked by :class:`.config.RunConfig`)."""
    own = {f.name for f in fields(PretrainConfig)} - {"run"}
    unknown = sorted(set(params) - own - set(SHARED))
    if unknown:
        raise ValueError(f"make_pretrain_config: unknown parameter(s) {unknown}; valid: {sorted(own | set(SHARED))}")
    run = replace(TINY_RUN, **{k: v for k, v in params.items() if k in SHARED})
    return PretrainConfig(run=run, **{k: v for k, v in params.items() if k in own})


def build_tiny(cfg: PretrainConfig, device: torch.device) -> tuple[nn.Module, SetCriterion]:
    """A fresh tiny DETR of ``cfg.arch`` (random initialisation from the current torch seed) and its criterion."""
    run = cfg.run
    model = build_detr(**cfg.arch, dropout=run.dropout).to(device)
    amp_dtype = resolve_amp_dtype(run.precision, device)
    set_fast_mode(model, amp_dtype is not None)
    if resolve_channels_last(run.channels_last, amp_dtype):
        model.to(memory_format=torch.channels_last)
    criterion = SetCriterion(num_classes=cfg.arch["num_classes"], eos_coef=run.eos_coef, dec_layers=run.dec_layers)
    return model, criterion.to(device)


def heldout_loader(cfg: PretrainConfig, folder: Path) -> DataLoader:
    """The fixed held-out set (``cfg.heldout_images`` images of the world's ``heldout`` part, written as a COCO
    dataset into ``folder``), read as the demo reads its validation images, at ``cfg.run.min_size``."""
    data = make_synthetic_coco(folder, n_images=cfg.heldout_images, seed=cfg.run.seed, image_size=cfg.image_size,
                               world_part="heldout")
    dataset = build_dataset(data.annotations, data.images, "val", val_size=cfg.run.min_size,
                            max_size=cfg.run.max_size)
    return DataLoader(dataset, batch_size=cfg.run.batch_size, collate_fn=collate_fn)


def _segments(cfg: PretrainConfig) -> list[int]:
    """The steps at which training pauses: every ``log_every``, every ``eval_every``, the lr drop, the end."""
    marks = set(range(cfg.log_every, cfg.steps, cfg.log_every)) | set(range(cfg.eval_every, cfg.steps, cfg.eval_every))
    return sorted(marks | {cfg.steps} | ({cfg.drop_step} if cfg.drop_step < cfg.steps else set()))


def _evaluate(model, criterion, loader, cfg: PretrainConfig, device) -> dict[str, float]:
    amp_dtype = resolve_amp_dtype(cfg.run.precision, device)
    metrics = evaluate(model, criterion, loader, loader.dataset.coco, device, amp_dtype,
                       resolve_channels_last(cfg.run.channels_last, amp_dtype), per_layer_ap=False)
    return {k: metrics[k] for k in ("AP", "AP50", "AP75", "loss_final")}


def train(cfg: PretrainConfig, heldout_dir: Path, log=print) -> tuple[nn.Module, list[dict], dict]:
    """Train a fresh tiny DETR for ``cfg.steps`` steps (fewer if ``cfg.minutes`` runs out) and evaluate it every
    ``cfg.eval_every`` steps and at the end. Returns the model, the curve (one row per log point: ``step``,
    ``wall_s``, ``lr``, mean ``loss`` and final-layer terms since the previous row, ``AP``/``AP50``/``AP75``/
    ``val_loss_final`` where evaluated) and the final row. Runs with ``cfg.threads`` torch threads."""
    with torch_threads(cfg.threads):
        return _train(cfg, heldout_dir, log)


def _train(cfg: PretrainConfig, heldout_dir: Path, log) -> tuple[nn.Module, list[dict], dict]:
    run = cfg.run
    device = resolve_device(run.device)
    seed_everything(run.seed)
    model, criterion = build_tiny(cfg, device)
    optimizer = build_optimizer(model, run)
    val_loader = heldout_loader(cfg, heldout_dir)
    stream = ShapeStream(seed=run.seed, image_size=cfg.image_size, scales=run.train_scales, max_size=run.max_size,
                         augment=cfg.augment)
    batches: Iterator = iter(DataLoader(stream, batch_size=run.batch_size, collate_fn=collate_fn,
                                        num_workers=run.num_workers))
    curve, done, start = [], 0, time.perf_counter()
    for step in _segments(cfg):
        if done == cfg.drop_step:
            for group in optimizer.param_groups:
                group["lr"] *= 0.1
        stats = train_one_epoch(model, criterion, itertools.islice(batches, step - done), optimizer, device,
                                step, run)
        done = step
        row = {"step": step, "wall_s": round(time.perf_counter() - start, 1), "lr": optimizer.param_groups[0]["lr"],
               **{k: stats[k] for k in ("loss", "loss_ce", "loss_bbox", "loss_giou", "class_error")}}
        out_of_time = cfg.minutes is not None and row["wall_s"] > 60 * cfg.minutes
        if step % cfg.eval_every == 0 or step == cfg.steps or out_of_time:
            row |= {k if k.startswith("AP") else f"val_{k}": v
                    for k, v in _evaluate(model, criterion, val_loader, cfg, device).items()}
            row["wall_s"] = round(time.perf_counter() - start, 1)
        curve.append(row)
        log(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
        if out_of_time:
            break
    return model, curve, curve[-1]


def save(model: nn.Module, cfg: PretrainConfig, curve: list[dict], final: dict) -> dict:
    """Write the checkpoint ``cfg.out``, its curve (``.csv``) and summary (``.json``) atomically; return the
    summary. The same weights give the same checkpoint bytes, so a re-run reproduces the SHA-256."""
    out = Path(cfg.out)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()  # torch.save names the archive after a file: saved to memory, the bytes repeat run to run
    torch.save({"model": state, "arch": cfg.arch,
                "pretrain": {"steps": final["step"], "seed": cfg.run.seed, "AP": final["AP"], "AP50": final["AP50"]},
                "note": "tiny DETR pre-trained on synthetic shapes (detr_nb_utils.training.pretrain)"}, buffer)
    atomic.write_bytes(out, buffer.getvalue())
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys(k for row in curve for k in row)))
    writer.writeheader()
    writer.writerows(curve)
    atomic.write_text(out.with_suffix(".csv"), text.getvalue())
    summary = {"checkpoint": out.name, "sha256": sha256_file(out), "bytes": out.stat().st_size,
               "steps": final["step"], "stopped_by_time": final["step"] < cfg.steps,
               **{k: final[k] for k in ("AP", "AP50", "AP75")}, "wall_time_s": final["wall_s"],
               "torch": torch.__version__, "config": cfg.to_dict()}
    atomic.write_text(out.with_suffix(".json"), json.dumps(summary, indent=2) + "\n")
    return summary


def pretrain(cfg: PretrainConfig, log=print) -> dict:
    """A whole pre-training run: :func:`train` (the held-out set in a temporary folder), then :func:`save`.
    Returns the summary written to ``<stem>.json`` (the command line adds :func:`record_demo_val`)."""
    with tempfile.TemporaryDirectory(prefix="tiny-detr-heldout-") as tmp:
        model, curve, final = train(cfg, Path(tmp) / "heldout", log)
    return save(model, cfg, curve, final)


def demo_val_ap(checkpoint: str | Path, **params) -> dict[str, float]:
    """Epoch-0 ``AP``, ``AP50``, ``AP75`` of ``checkpoint`` (6 decoder layers, 100 queries) on the demo profile's
    validation split, in fp32: what 02 and 03 show at epoch 0. ``params``: :func:`.config.make_config` overrides
    (e.g. other ``data_root``/``split_dir``; by default the demo's, made when missing)."""
    cfg = make_config("demo", checkpoint=str(checkpoint), progress=False, **params)
    metrics = evaluate_checkpoint(cfg)
    return {k: metrics[k] for k in ("AP", "AP50", "AP75")}


def record_demo_val(checkpoint: str | Path) -> dict:
    """Add ``demo_val`` (:func:`demo_val_ap`) to the checkpoint's summary ``<stem>.json``; return the summary."""
    record = Path(checkpoint).with_suffix(".json")
    summary = json.loads(record.read_text())
    summary["demo_val"] = demo_val_ap(checkpoint)
    atomic.write_text(record, json.dumps(summary, indent=2) + "\n")
    return summary


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads, then restore the caller's number."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def parse_args(argv: Sequence[str] | None = None) -> PretrainConfig:
    """The command line: one flag per field of :class:`PretrainConfig` and per setting of :data:`SHARED`
    (``--batch-size``, ``--train-scales 64,96``, ...), each defaulting to the committed checkpoint's value."""
    parser = argparse.ArgumentParser(prog="python -m detr_nb_utils.training.pretrain",
                                     description=__doc__.split("\n\n")[0])
    defaults = make_pretrain_config().to_dict()
    for name in [f.name for f in fields(PretrainConfig) if f.name != "run"] + list(SHARED):
        value, flag = defaults[name], "--" + name.replace("_", "-")
        if isinstance(value, bool) or name == "channels_last":
            parser.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=value)
        elif isinstance(value, list):
            parser.add_argument(flag, type=_ints, default=tuple(value), help="comma-separated integers")
        elif name in ("minutes", "lr_drop"):
            parser.add_argument(flag, type=float if name == "minutes" else int, default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value)
    return make_pretrain_config(**vars(parser.parse_args(argv)))


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    pretrain(cfg)
    summary = record_demo_val(cfg.out)
    print(f"{cfg.out}: held-out AP {summary['AP']:.3f} after {summary['steps']} steps in "
          f"{summary['wall_time_s']:.0f} s; demo validation AP {summary['demo_val']['AP']:.3f}; "
          f"sha256 {summary['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
