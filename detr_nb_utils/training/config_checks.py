"""The checks a :class:`~.config.RunConfig` runs on itself when made: every field's type and range, and what the
checkpoint's shape allows, each failure a ``ValueError`` naming the field, its value and what it must be.

The limits the checks enforce live here too (:data:`CHECKPOINT_SHAPES`, :data:`MAX_QUERIES`, ...), and are imported
from here. The checks are run by :mod:`.config`.
"""
from __future__ import annotations

import math
import re

from ..models.detr import BACKBONES, TINY_DETR
from ..models.fast import PRECISIONS
from .recipe import RECIPES

#: the shape of each backbone's checkpoint (the published one; the demo world's tiny DETR): a config that loads one
#: must match it (num_queries/dec_layers may be smaller)
CHECKPOINT_SHAPES = {
    "resnet50": {"num_classes": 91, "enc_layers": 6, "hidden_dim": 256, "nheads": 8, "dim_feedforward": 2048},
    "tiny": {"num_classes": 91, **{k: v for k, v in TINY_DETR.items() if k != "backbone"}},
}
MAX_QUERIES, MAX_DEC_LAYERS = 100, 6
#: the files naming your own data's train and validation sets, all four or none
OWN_DATA_FILES = ("train_annotation_file", "train_image_dir", "val_annotation_file", "val_image_dir")
#: how the class head starts: "match", each class from the checkpoint's row of the same name (COCO's label space:
#: the whole head as loaded), the others fresh, "no object" carried; "reinit", the whole head fresh (Hugging Face)
CLASS_HEADS = ("match", "reinit")


def fail(name: str, value, allowed: str):
    raise ValueError(f"RunConfig.{name} = {value!r} is invalid: must be {allowed}")


def _int(cfg, name, low, high=None, optional=False, why=""):
    v = getattr(cfg, name)
    if optional and v is None:
        return
    ok = isinstance(v, int) and not isinstance(v, bool) and v >= low and (high is None or v <= high)
    if not ok:
        rng = f"an integer in {low}..{high}" if high is not None else f"an integer >= {low}"
        fail(name, v, rng + (" or None" if optional else "") + why)


def _float(cfg, name, low, high=None, low_open=False, high_open=False):
    """A float in the range; never NaN or infinite (an infinite lr passes ``> 0`` and dies inside the matcher)."""
    v = getattr(cfg, name)
    ok = isinstance(v, float) and math.isfinite(v)
    ok = ok and (v > low if low_open else v >= low) and (high is None or (v < high if high_open else v <= high))
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open or high is None else "]"
        fail(name, v, f"a finite number in {lo}{low}, {'inf' if high is None else high}{hi}")


def _str(cfg, name, optional=False):
    v = getattr(cfg, name)
    if not (optional and v is None) and not (isinstance(v, str) and v.strip()):
        fail(name, v, "a non-empty string" + (" or None" if optional else ""))


def _check_data(cfg) -> None:
    for name in ("data_root", "split_dir", "out_dir"):
        _str(cfg, name)
    for name in ("image_dir", "annotation_file", "checkpoint", "dataset_dir", *OWN_DATA_FILES):
        _str(cfg, name, optional=True)
    given = [n for n in OWN_DATA_FILES if getattr(cfg, n) is not None]
    if given and len(given) < len(OWN_DATA_FILES):
        missing = [n for n in OWN_DATA_FILES if n not in given]
        fail(missing[0], None, f"set too: your own data needs all of {list(OWN_DATA_FILES)} (missing {missing}), "
                                f"or dataset_dir alone")
    if given and cfg.dataset_dir is not None:
        fail("dataset_dir", cfg.dataset_dir, f"None when {list(OWN_DATA_FILES)} are set (give one or the other)")
    for name in ("n_train", "n_val"):
        _int(cfg, name, 1)
    _int(cfg, "split_seed", 0)
    for name in ("max_train_images", "max_val_images"):
        _int(cfg, name, 1, optional=True)
    _int(cfg, "min_size", 32, 4096)
    _int(cfg, "max_size", cfg.min_size if isinstance(cfg.min_size, int) else 32, 8192)
    s = cfg.train_scales
    if not (isinstance(s, tuple) and s and all(isinstance(x, int) and 32 <= x <= cfg.max_size for x in s)):
        fail("train_scales", s, f"a non-empty tuple of integers in 32..max_size ({cfg.max_size})")


def _check_model(cfg) -> None:
    _int(cfg, "num_queries", 1, MAX_QUERIES, why=f" (the checkpoint has {MAX_QUERIES} query embeddings)")
    _int(cfg, "dec_layers", 1, MAX_DEC_LAYERS, why=f" (the checkpoint has {MAX_DEC_LAYERS} decoder layers)")
    _int(cfg, "num_classes", 1)
    _int(cfg, "enc_layers", 1, 12)
    _int(cfg, "nheads", 1)
    _int(cfg, "hidden_dim", 2)
    if cfg.hidden_dim % cfg.nheads or cfg.hidden_dim % 2:
        fail("hidden_dim", cfg.hidden_dim, f"even and divisible by nheads ({cfg.nheads})")
    _int(cfg, "dim_feedforward", 1)
    _float(cfg, "dropout", 0.0, 1.0, high_open=True)
    _float(cfg, "eos_coef", 0.0, 1.0, low_open=True)
    if cfg.class_head not in CLASS_HEADS:
        fail("class_head", cfg.class_head, f"one of {CLASS_HEADS}")
    _check_query_indices(cfg)
    if cfg.backbone not in BACKBONES:
        fail("backbone", cfg.backbone, f"one of {sorted(BACKBONES)}")
    if cfg.checkpoint is not None:
        for name, want in CHECKPOINT_SHAPES[cfg.backbone].items():
            if getattr(cfg, name) != want:
                fail(name, getattr(cfg, name), f"{want} to load the {cfg.backbone} checkpoint {cfg.checkpoint} "
                                                f"(set checkpoint=None to train from random weights)")


def _check_query_indices(cfg) -> None:
    v = cfg.query_indices
    if v is None:
        return
    ints = isinstance(v, tuple) and all(isinstance(i, int) and not isinstance(i, bool) for i in v)
    if not ints:
        why = "it is not a tuple of integers"
    elif len(v) != cfg.num_queries:
        why = f"it lists {len(v)} slots"
    elif len(set(v)) != len(v):
        why = f"it repeats slot(s) {sorted({i for i in v if v.count(i) > 1})}"
    elif not all(0 <= i < MAX_QUERIES for i in v):
        why = f"slot(s) {[i for i in v if not 0 <= i < MAX_QUERIES]} are out of range"
    elif cfg.checkpoint is None:
        why = "checkpoint is None, so there are no checkpoint queries to choose from"
    else:
        return
    shown = repr(v) if not isinstance(v, tuple) or len(v) <= 6 else f"({v[0]!r}, {v[1]!r}, {v[2]!r}, ..., {v[-1]!r})"
    raise ValueError(f"RunConfig.query_indices = {shown} is invalid ({why}): must be None or a tuple of "
                     f"num_queries ({cfg.num_queries}) distinct integers in 0..{MAX_QUERIES - 1} (the checkpoint's "
                     f"query slots), with a checkpoint")


def _check_optim(cfg) -> None:
    _int(cfg, "epochs", 0)
    _int(cfg, "batch_size", 1)
    _int(cfg, "eval_batch_size", 1)
    _float(cfg, "lr", 0.0, low_open=True)
    _float(cfg, "lr_backbone", 0.0)
    _float(cfg, "weight_decay", 0.0)
    _float(cfg, "clip_max_norm", 0.0)
    _int(cfg, "lr_drop", 1, optional=True)
    _int(cfg, "eval_every", 1)
    if cfg.recipe not in RECIPES:
        fail("recipe", cfg.recipe, f"one of {sorted(RECIPES)}")
    _int(cfg, "warmup_steps", 0)
    if (cfg.warmup_steps > 0) != (cfg.recipe == "warmup"):
        fail("warmup_steps", cfg.warmup_steps, "above 0 exactly when recipe is 'warmup' (the arm that warms up; "
                                               f"recipe is {cfg.recipe!r})")


def _check_runtime(cfg) -> None:
    _int(cfg, "seed", 0)
    if not (isinstance(cfg.device, str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", cfg.device)):
        fail("device", cfg.device, "one of 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'")
    if cfg.precision not in PRECISIONS:
        fail("precision", cfg.precision, f"one of {PRECISIONS}")
    if not isinstance(cfg.random_crop, bool):
        fail("random_crop", cfg.random_crop, "True or False")
    if not isinstance(cfg.progress, bool):
        fail("progress", cfg.progress, "True or False")
    if cfg.channels_last is not None and not isinstance(cfg.channels_last, bool):
        fail("channels_last", cfg.channels_last, "None (on exactly when the forward runs in bf16), True or False")
    _int(cfg, "num_workers", 0, 64)
    _int(cfg, "threads", 1, 256, optional=True)
    name = cfg.run_name
    if name is not None and not (isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name)):
        fail("run_name", name, "None or a folder name of letters, digits, '.', '_' or '-'")


CHECKS = (_check_data, _check_model, _check_optim, _check_runtime)
