"""The model card (``README.md``) of an exported model, written from its run folder: the answer first (AP with its
95% interval over the validation images, and at which epoch), then the model, the data, the recipe, the seeds, AP
per class, how to use it, and what differs in transformers. Every number is read from the run folder; nothing is
typed in. A demo run's card opens with the demo stamp the notebooks use.

The interval is the image bootstrap of :mod:`detr_nb_utils.analysis.bootstrap` over the run's saved detections of
the exported epoch (``detections/epoch_N.npz``) against the validation annotations the run was evaluated on.
Used by ``python -m detr_nb_utils.export --to hf``.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
from pathlib import Path

from pycocotools.coco import COCO

from ..analysis.bootstrap import MatchedDetections, ap_interval, common_images
from ..analysis.conclusions import runs_note
from ..data.label_map import LabelMap
from ..models.checkpoint import read_checkpoint
from ..models.detr import DETR
from ..training import runs
from ..training.config import RunConfig
from ..training.runs import RunRecord, load_detections, load_run
from .hugging_face import PUBLISHED_FROZEN

#: what a demo-profile run's card says first when its world note is empty (a demo run with the published backbone)
DEMO_STAMP = ("DEMO: this model comes from a demo-profile run on synthetic data; its numbers exercise the pipeline "
              "and say nothing about DETR-R50 on COCO.")
RECIPE = ("epochs", "batch_size", "lr", "lr_backbone", "weight_decay", "clip_max_norm", "lr_drop", "dropout",
          "eos_coef", "train_scales", "random_crop", "min_size", "max_size", "checkpoint", "class_head",
          "query_indices")
FRONT_MATTER = """---
library_name: transformers
pipeline_tag: object-detection
license: apache-2.0
tags:
- object-detection
- detr
- detr-mini-coco
---
"""


def exported_epoch(run_dir: str | os.PathLike) -> tuple[int, str]:
    """The epoch whose weights :func:`~detr_nb_utils.training.inference.model_from_run` exports (the best-AP
    epoch of ``checkpoint_best.pth``, else that of ``checkpoint_last.pth``) and why it is that one."""
    run_dir = Path(run_dir)
    for name, why in ((runs.BEST, "the epoch with the best validation AP"), (runs.LAST, "the last epoch saved")):
        if (run_dir / name).is_file():
            return int(read_checkpoint(run_dir / name)["epoch"]), why
    raise FileNotFoundError(f"{run_dir} holds neither {runs.BEST} nor {runs.LAST}")


def validation_annotations(record: RunRecord) -> Path:
    """The instances file the run was evaluated on: its own dataset's validation file, or its split's ``val.json``."""
    dataset = record.split_manifest.get("dataset")
    if dataset:
        return Path(dataset["val"]["annotation_file"])
    return Path(record.config.split_dir) / "val.json"


def ap_with_interval(record: RunRecord, epoch: int, n_resamples: int = 1000, seed: int = 0) -> dict | None:
    """AP and AP50 of ``epoch``'s saved detections with 95% intervals over the validation images
    (:func:`~detr_nb_utils.analysis.bootstrap.ap_interval`), or None when the detections or the validation
    annotations are not there."""
    gt_file = validation_annotations(record)
    if epoch not in runs.detection_epochs(record.run_dir) or not gt_file.is_file():
        return None
    detections = load_detections(record.run_dir, epoch)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = COCO(str(gt_file))
    return ap_interval(MatchedDetections(gt, detections, common_images(detections)), n_resamples, seed)


def _pct(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _headline(record: RunRecord, epoch: int, why: str, ci: dict | None) -> str:
    ap = record.metrics["val_AP"].get(epoch, math.nan) if "val_AP" in record.metrics else math.nan
    last = record.final_epoch
    where = f"at epoch {epoch} of {record.config.epochs} ({why})"
    if ci is None:
        return (f"**COCO AP {_pct(ap)}** {where}; no interval: the detections of that epoch or the validation "
                f"annotations ({validation_annotations(record)}) are not where the run left them.")
    a = ci["AP"]
    text = (f"**COCO AP {_pct(a['point'])}** (95% interval {_pct(a['low'])} to {_pct(a['high'])}, bootstrap over "
            f"the {ci['n_images']:,} validation images, {ci['n_resamples']:,} resamples; "
            f"AP50 {_pct(ci['AP50']['point'])}) {where}.")
    if why.startswith("the epoch with the best") and last is not None and last != epoch:
        text += (f" The epoch was chosen on these validation images, so the interval is optimistic; the run's final "
                 f"epoch {last} scored {_pct(record.metrics['val_AP'][last])}.")
    elif why.startswith("the epoch with the best"):
        text += " It is also the run's final epoch."
    return text


def _data(record: RunRecord) -> list[str]:
    cfg, manifest = record.config, record.split_manifest
    if manifest.get("dataset"):
        lines = [f"Your own COCO-format dataset, {len(LabelMap.load(record.run_dir / runs.CATEGORIES).ids)} "
                 f"categories:"]
        for side in ("train", "val"):
            d = manifest["dataset"][side]
            lines.append(f"- {side}: `{d['annotation_file']}` (SHA-256 `{d['sha256'][:16]}…`), images in "
                         f"`{d['image_dir']}`")
        return lines
    source = manifest.get("source", {}).get("file", cfg.annotation_file or cfg.data_root)
    sides = {s: manifest.get(s, {}).get("n_images", getattr(cfg, f"n_{s}")) for s in ("train", "val")}
    return [f"A seeded split of `{source}`: {sides['train']:,} training and {sides['val']:,} validation images "
            f"(split seed {cfg.split_seed}), COCO's 80 categories in COCO's ids."]


def _recipe(record: RunRecord) -> list[str]:
    cfg = record.config
    rows = [("decoder layers / queries", f"{cfg.dec_layers} / {cfg.num_queries}"),
            ("precision", record.effective_precision or cfg.precision)]
    rows += [(name, str(getattr(cfg, name))) for name in RECIPE]
    return ["| setting | value |", "|---|---|", *(f"| {k} | `{v}` |" for k, v in rows)]


def _per_class(record: RunRecord, epoch: int, labels: LabelMap) -> list[str]:
    if epoch not in record.per_category_ap.index:
        return ["No per-class AP was recorded for this epoch."]
    ap = record.per_category_ap.loc[epoch]
    ids = dict(zip(labels.names, labels.ids))
    lines = ["| class | category id | AP |", "|---|---|---|"]
    lines += [f"| {name} | {ids.get(name, '')} | {_pct(v)} |" for name, v in ap.items()]
    return lines + ["", "– : no validation box of that class."]


def _usage(min_size: int, max_size: int, whose: str = "the run's validation did") -> list[str]:
    return ["```python", "from transformers import pipeline", "",
            'detector = pipeline("object-detection", model="path/to/this/folder")',
            'detector("image.jpg", threshold=0.7)  # [{"score", "label", "box": {"xmin", "ymin", "xmax", "ymax"}}]',
            "```", "",
            f"The preprocessor resizes as {whose}: shorter side {min_size} px, longer at most "
            f"{max_size} px, ImageNet mean and std."]


def _in_transformers(dropout: float) -> list[str]:
    return [
        "- The backbone is transformers' own ResNet-50 (`use_timm_backbone=False`): no `timm` needed. The weights are "
        "the same numbers as the project's checkpoint (official layout), converted name by name.",
        f"- Dropout {dropout:g} is set in all three places transformers has one (`dropout`, `attention_dropout`, "
        "`activation_dropout`), as the published model uses it. In training, transformers also drops out the "
        "encoder's input features, which the published model does not.",
        "- transformers leaves every backbone parameter of this folder's model trainable; the published model "
        "freezes the ResNet stem and first stage. To fine-tune as published, freeze them first:", "",
        "  ```python",
        "  for name, p in model.model.backbone.model.named_parameters():",
        f"      if name.startswith({PUBLISHED_FROZEN!r}):",
        "          p.requires_grad_(False)",
        "  ```", "",
        "- `auxiliary_loss` is off: with it on, transformers feeds each decoder layer the normalised output of the "
        "previous one, unlike the published model, and the model would compute another function. Fine-tuning "
        "further in transformers therefore trains on the final layer's loss only; this project's recipe adds one "
        "loss per decoder layer.",
    ]


def run_card(run_dir: str | os.PathLike, model: DETR, labels: LabelMap, n_resamples: int = 1000,
               seed: int = 0) -> str:
    """The card of the model exported from the run folder ``run_dir`` (``model`` and ``labels``: what
    :func:`~detr_nb_utils.training.inference.model_from_run` returned for it), in Markdown with the Hub's front
    matter. ``n_resamples`` and ``seed``: the bootstrap's."""
    record = load_run(run_dir)
    cfg: RunConfig = record.config
    epoch, why = exported_epoch(run_dir)
    ci = ap_with_interval(record, epoch, n_resamples, seed)
    stamp = runs_note([record]) or (DEMO_STAMP if cfg.profile == "demo" else "")
    params = sum(p.numel() for p in model.parameters())
    classes = (f"COCO's {len(labels.ids)} categories (a head of {labels.num_classes} rows in COCO's ids)"
               if labels.label_space == "coco" else f"{labels.num_classes} classes of your own dataset")
    parts = [FRONT_MATTER, f"# {Path(run_dir).name}: DETR-R50 fine-tuned with detr-mini-coco", ""]
    if stamp:
        parts += [f"> **{stamp}**", ""]
    parts += [_headline(record, epoch, why, ci), "",
              "## Model", "",
              f"DETR (Carion et al., ECCV 2020) with a ResNet-50 backbone: {len(model.transformer.encoder.layers)} "
              f"encoder and {model.dec_layers} decoder layers, {model.num_queries} queries, {classes} plus "
              f"\"no object\"; {params:,} parameters. Exported from the run folder `{run_dir}`.", "",
              "## Data", "", *_data(record), "",
              "## Recipe", "", *_recipe(record), "",
              "## Seeds", "",
              f"Training seed {cfg.seed}, split seed {cfg.split_seed}. One training seed: the interval above covers "
              f"the validation images, not the training seed.", "",
              f"## AP per class (epoch {epoch})", "", *_per_class(record, epoch, labels), "",
              "## Use", "", *_usage(cfg.min_size, cfg.max_size), "",
              "## In transformers", "", *_in_transformers(cfg.dropout), ""]
    return "\n".join(parts)


def checkpoint_card(path: str | os.PathLike, model: DETR, labels: LabelMap, min_size: int, max_size: int,
                    dropout: float, random_weights: bool = False) -> str:
    """The card of a model exported from a checkpoint file rather than a run folder: what it is and how to use it;
    no evaluation (a checkpoint file carries none)."""
    params = sum(p.numel() for p in model.parameters())
    parts = [FRONT_MATTER, f"# {Path(path).name}: DETR-R50 converted by detr-mini-coco", ""]
    stamp = "RANDOM WEIGHTS: a stand-in for the official checkpoint; its detections mean nothing." \
        if random_weights else ""
    if stamp:
        parts += [f"> **{stamp}**", ""]
    parts += [f"DETR (Carion et al., ECCV 2020) with a ResNet-50 backbone, {model.dec_layers} decoder layers, "
              f"{model.num_queries} queries, {labels.num_classes} classes plus \"no object\"; {params:,} parameters, "
              f"converted from the checkpoint file `{path}`. No evaluation comes with it: export a run folder "
              f"(`--run`) for a card with its AP and interval.", "",
              "## Use", "", *_usage(min_size, max_size, "the checkpoint's validation does"), "",
              "## In transformers", "", *_in_transformers(dropout), ""]
    return "\n".join(parts)
