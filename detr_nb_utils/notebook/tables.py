"""The tables of notebooks 01-05, :func:`save_table` that exports every notebook's tables (CSV and Markdown) into
``report/tables``, and the closing sentences of 01-05, every number computed from the files they read.

Nothing here trains: tables are built from a split manifest, a checkpoint's state dict, or run folders read with
:func:`detr_nb_utils.training.runs.load_run`. AP is reported in points (COCOeval's fractions x 100, as the paper
prints them); losses are the weighted sums of :mod:`detr_nb_utils.models.loss` in three views (total, final
layer, per-layer mean). 06_analysis's tables are :mod:`detr_nb_utils.analysis.comparison`.
"""
from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch
from pycocotools.coco import COCO

from ..analysis.bootstrap import MatchedDetections, ap_difference, ap_interval, common_images
from ..analysis.comparison import AP_STATS, PAPER_AP, VARIANTS
from ..analysis.findings import Finding, findings_json, findings_table
from ..data import atomic
from ..data.split import CROWDED_THRESHOLD, SIDES
from ..models.checkpoint import LoadReport
from ..models.detr import DETR, build_detr, parameter_table
from ..models.loss import LOSS_VIEWS, loss_views, weight_dict
from ..training.runs import PRECISION_FIELD, RunRecord
from .figures import current_stamp
from .table_format import display_table, flat, markdown_table, shown  # noqa: F401 (the notebooks' names)

#: the sidecar of a CSV holding the stamp of the world it was made in (the demo's), beside the data
STAMP_SUFFIX = ".stamp"


def save_table(df: pd.DataFrame, name: str, report_dir: str | Path = "report", floatfmt: str = ".3f"
               ) -> pd.DataFrame:
    """Write ``df`` to ``<report_dir>/tables/<name>.csv`` (the data only, one header row, so ``pandas.read_csv``
    reads it plainly) and ``.md`` (as a reader sees it: :func:`.table_format.markdown_table`), and return it as
    shown (:func:`.table_format.display_table`), for the cell to display. With a stamp set
    (:func:`.figures.set_stamp`: the demo), the Markdown opens with it and the CSV gets a sidecar
    ``<name>.csv.stamp`` holding it. Used by notebooks 01-07."""
    folder = Path(report_dir) / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = current_stamp()
    atomic.write_text(folder / f"{name}.csv", flat(df).to_csv(index=False))
    sidecar = folder / f"{name}.csv{STAMP_SUFFIX}"
    if stamp:
        atomic.write_text(sidecar, stamp + "\n")
    else:
        sidecar.unlink(missing_ok=True)
    atomic.write_text(folder / f"{name}.md", (f"*{stamp}*\n\n" if stamp else "") + markdown_table(df, floatfmt))
    return display_table(df, floatfmt)


def save_takeaway(text: str, name: str, report_dir: str | Path = "report") -> None:
    """Write a notebook's closing sentences to ``<report_dir>/tables/<name>.md`` (the report embeds them), opening
    with the stamp when one is set (:func:`.figures.set_stamp`: the demo)."""
    path = Path(report_dir) / "tables" / f"{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = current_stamp()
    atomic.write_text(path, (f"*{stamp}*\n\n" if stamp else "") + text.strip() + "\n")


def save_findings(findings: Sequence[Finding], name: str, report_dir: str | Path = "report", **meta) -> Path:
    """Write ``findings`` to ``<report_dir>/tables/<name>.json`` (:func:`~detr_nb_utils.analysis.findings
    .findings_json`, with ``meta`` and the stamp: what the report's ``{{findings:...}}`` renders) and as a table
    (:func:`~detr_nb_utils.analysis.findings.findings_table`, ``<name>.csv`` and ``.md``). Used by 06_analysis."""
    save_table(findings_table(findings), name, report_dir, floatfmt=".2f")
    return atomic.write_text(Path(report_dir) / "tables" / f"{name}.json",
                             findings_json(findings, stamp=current_stamp(), **meta))


# ---- 01: the split -----------------------------------------------------------------------------------------


def split_summary(manifest: dict) -> pd.DataFrame:
    """Per side (source, train, val): images, boxes, crowd regions, images without boxes, most boxes in one image,
    images over :data:`~detr_nb_utils.data.split.CROWDED_THRESHOLD` boxes. ``manifest``: ``make_split``'s."""
    keys = {"n_images": "images", "n_boxes": "boxes", "n_crowd": "crowd", "n_images_without_boxes": "no boxes",
            "max_boxes_per_image": "max boxes/image",
            f"n_images_over_{CROWDED_THRESHOLD}_boxes": f"images > {CROWDED_THRESHOLD} boxes"}
    return pd.DataFrame({side: {v: manifest[side][k] for k, v in keys.items()}
                         for side in ("source", *SIDES)}).T.rename_axis("side")


def objects_per_image(split_dir: str | Path) -> pd.DataFrame:
    """One row per image of each side: ``side``, ``image_id``, ``boxes`` (non-crowd annotations)."""
    rows = []
    for side in SIDES:
        coco = json.loads((Path(split_dir) / f"{side}.json").read_text())
        counts = dict.fromkeys((im["id"] for im in coco["images"]), 0)
        for a in coco["annotations"]:
            counts[a["image_id"]] += not a.get("iscrowd", 0)
        rows += [(side, i, n) for i, n in counts.items()]
    return pd.DataFrame(rows, columns=["side", "image_id", "boxes"])


# ---- 02: the checkpoint and the variants -------------------------------------------------------------------


def skeleton(dec_layers: int = 6, num_queries: int = 100, arch: Mapping | None = None) -> DETR:
    """A DETR variant without storage (meta device): for counting parameters and planning surgery, instantly.
    ``arch``: the other :func:`build_detr` arguments (a run's ``cfg.arch``; default: the published DETR-R50)."""
    with torch.device("meta"):
        return build_detr(**(arch or {}), dec_layers=dec_layers, num_queries=num_queries)


def parameter_counts(variants: Mapping[str, tuple] = VARIANTS, arch: Mapping | None = None) -> pd.DataFrame:
    """Parameters per component (rows) of each variant (columns), with a ``total`` row. ``variants``: name ->
    ``(dec_layers, num_queries, ...)``, e.g. :data:`VARIANTS`; ``arch`` as in :func:`skeleton`."""
    return pd.DataFrame({name: parameter_table(skeleton(*v[:2], arch=arch))["parameters"]
                         for name, v in variants.items()}).rename_axis("component")


def surgery_table(reports: Mapping[str, LoadReport]) -> pd.DataFrame:
    """State-dict entries per action (loaded, sliced, dropped, re-initialised) for each variant's surgery."""
    return pd.DataFrame({v: r.summary() for v, r in reports.items()}).fillna(0).astype(int).T.rename_axis("variant")


def reference_ap(checkpoint: str | Path | None, backbone: str) -> tuple[str, dict[str, float]]:
    """What a checkpoint's epoch-0 AP is compared with (a column name and AP stats in points): the paper's
    DETR-R50 on val2017 for the published model; for the demo world's tiny DETR, its pre-training's AP on the
    held-out set of the shape world, read from the record ``<stem>.json`` beside ``checkpoint``."""
    if backbone != "tiny":
        return "paper", dict(PAPER_AP)
    record = Path(checkpoint).with_suffix(".json")
    if not record.is_file():
        raise FileNotFoundError(f"{record}: the record of the tiny DETR {checkpoint} is missing; restore it with "
                                f"`git checkout -- {record}` or make both with `make pretrain`")
    summary = json.loads(record.read_text())
    return "pre-training, held-out", {k: 100 * summary[k] for k in AP_STATS if k in summary}


def ap_vs_paper(metrics: Mapping[str, float], reference: tuple[str, Mapping[str, float]] | None = None,
                val_file: str | Path | COCO | None = None, n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Epoch-0 AP stats (``metrics`` from ``evaluate_checkpoint``, fractions) beside ``reference`` (a column name
    and stats in points, :func:`reference_ap`; default the paper's), in points. With ``val_file`` (the val split's
    annotations) AP and AP50 also get their 95% interval over ``n_resamples`` bootstrap resamples of the validation
    images (``low``, ``high``); the reference is another set of images, published without an interval, so there
    is no paired difference: ``attrs["n_images"]``, ``attrs["n_resamples"]``."""
    label, values = reference or ("paper", PAPER_AP)
    table = pd.DataFrame({"this split, epoch 0": {k: 100 * metrics[k] for k in AP_STATS},
                          label: {k: values.get(k, float("nan")) for k in AP_STATS}}).rename_axis("metric")
    if val_file is not None:
        if not isinstance(val_file, COCO):
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                val_file = COCO(str(val_file))
        img_ids = common_images(metrics["detections"])
        ci = ap_interval(MatchedDetections(val_file, metrics["detections"], img_ids), n_resamples, seed)
        for side in ("low", "high"):
            table[side] = pd.Series({k: 100 * ci[k][side] for k in ("AP", "AP50")})
        table.attrs.update(n_images=ci["n_images"], n_resamples=n_resamples)
    return table


def checkpoint_takeaway(params: pd.DataFrame, surgery: pd.DataFrame, ap: pd.DataFrame, note: str = "") -> str:
    """Closing sentences of 02 from :func:`parameter_counts`, :func:`surgery_table` and :func:`ap_vs_paper`,
    after ``note`` (:func:`~detr_nb_utils.analysis.conclusions.world_note`): the epoch-0 AP with its interval over
    the validation images, beside the reference, which has none."""
    total = params.loc["total"]
    cuts = "; ".join(f"{v} keeps {total[v]:,} parameters ({100 * total[v] / total.iloc[0]:.1f}%), "
                     f"drops {surgery.loc[v].get('dropped', 0)} entries and slices {surgery.loc[v].get('sliced', 0)}"
                     for v in params.columns[1:])
    label = ap.columns[1]
    ours, ref = ap.loc["AP", "this split, epoch 0"], ap.loc["AP", label]
    where = "in the paper on all of val2017" if label == "paper" else "on the pre-training's held-out images"
    head = note + " " if note else ""
    if "low" in ap:
        low, high = ap.loc["AP", "low"], ap.loc["AP", "high"]
        inside = "inside" if low <= ref <= high else "outside"
        ours_text = (f"AP {ours:.1f} [{low:.1f}, {high:.1f}] (95% interval over its {ap.attrs['n_images']} "
                     f"validation images)")
        versus = (f"; the reference is measured on other images and published without an interval, so the two do "
                  f"not make a paired difference: {ref:.1f} lies {inside} this split's interval")
    else:
        ours_text, versus = f"AP {ours:.1f}", " (no interval: pass val_file to ap_vs_paper)"
    return (f"{head}The checkpoint's model has {total.iloc[0]:,} parameters; {cuts}. Before any fine-tuning it "
            f"scores {ours_text} on this validation split, against {ref:.1f} {where}{versus}.")


def precision_ap_table(fp32: Mapping, bf16: Mapping, val_file: str | Path | COCO, n_resamples: int = 1000,
                       seed: int = 0) -> pd.DataFrame:
    """The same checkpoint evaluated in fp32 and in bf16 (two
    :func:`~detr_nb_utils.training.engine.evaluate_checkpoint` results, each with its ``detections`` and
    ``effective_precision``), scored on the images both evaluated: rows ``AP``, ``AP50``; columns ``fp32``, ``bf16``,
    ``bf16 - fp32`` (points), ``low`` and ``high`` (its 95% interval over ``n_resamples`` paired bootstrap
    resamples of the images, :func:`~detr_nb_utils.analysis.bootstrap.ap_difference`, ``seed``) and ``excludes 0``.
    ``attrs``: ``n_images``, ``n_resamples``. ``val_file``: the val split's annotation file (or its ``COCO``). The
    evidence to read before a study switches to the fast mode (02_checkpoint_inspection)."""
    for name, m in (("fp32", fp32), ("bf16", bf16)):
        if m.get(PRECISION_FIELD) != name:
            raise ValueError(f"precision_ap_table: the {name} result was computed in {m.get(PRECISION_FIELD)!r}; "
                             f"evaluate it with precision={name!r}")
    if not isinstance(val_file, COCO):
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            val_file = COCO(str(val_file))
    img_ids = common_images(fp32["detections"], bf16["detections"])
    fast, published = (MatchedDetections(val_file, m["detections"], img_ids) for m in (bf16, fp32))
    diff = ap_difference(fast, published, n_resamples, seed)
    rows = {k: {"fp32": 100 * published.point[i], "bf16": 100 * fast.point[i], "bf16 - fp32": 100 * diff[k]["point"],
                "low": 100 * diff[k]["low"], "high": 100 * diff[k]["high"], "excludes 0": diff[k]["excludes_zero"]}
            for i, k in enumerate(("AP", "AP50"))}
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("metric")
    table.attrs.update(n_images=diff["n_images"], n_resamples=diff["n_resamples"])
    return table


def precision_takeaway(table: pd.DataFrame) -> str:
    """The sentence of 02 on :func:`precision_ap_table`: how far bf16 moves AP, and whether image sampling explains
    it (02's closing cell puts it after :func:`checkpoint_takeaway` and the world note)."""
    ap = table.loc["AP"]
    verdict = ("the interval excludes 0: the fast mode moves AP by more than the choice of images explains, so runs "
               "in bf16 do not compare with runs in fp32" if ap["excludes 0"] else
               "the interval includes 0: on these images bf16 moves AP by no more than the choice of images explains")
    return (f"On the same {table.attrs['n_images']} validation images the checkpoint scores AP {ap['bf16']:.1f} "
            f"in bf16 and {ap['fp32']:.1f} in fp32: bf16 - fp32 = {ap['bf16 - fp32']:+.2f} points, 95% interval "
            f"[{ap['low']:+.2f}, {ap['high']:+.2f}] over {table.attrs['n_resamples']} paired bootstrap resamples of "
            f"the images; {verdict}.")


# ---- 03-05: one run ----------------------------------------------------------------------------------------


def with_train_views(record: RunRecord) -> pd.DataFrame:
    """``record.metrics`` plus the training loss in the three views: ``train_loss_total`` (the optimised sum),
    ``train_loss_final`` (last layer) and ``train_loss_layer_mean`` (total / decoder layers)."""
    df = record.metrics.copy()
    if "train_loss" in df:
        layers = record.config.dec_layers
        terms = {k: df[f"train_{k}"] for k in weight_dict(layers)}
        df = df.assign(**{f"train_{k}": v for k, v in loss_views(terms, weight_dict(layers), layers).items()})
    return df


def layer_ap_table(groups: Mapping[str, Mapping[str, RunRecord]]) -> pd.DataFrame:
    """AP (fraction) of each decoder layer's predictions (columns 1..L), mean over each variant's seeds, at epoch 0
    and at the final epoch: one row per variant and epoch, e.g. ``"dec6_q100, epoch 0"``; for
    :func:`.figures.plot_ap_per_layer`. 04 puts the 6-layer model's layers beside the cut to 3."""
    rows = {}
    for variant, runs in groups.items():
        for label, pick in (("epoch 0", lambda r: 0), ("final epoch", lambda r: r.final_epoch)):
            per_run = pd.DataFrame([{layer + 1: r.metrics.loc[pick(r), f"val_AP_layer_{layer}"]
                                     for layer in range(r.config.dec_layers)} for r in runs.values()])
            rows[f"{variant}, {label}"] = per_run.mean()
    return pd.DataFrame(rows).T.rename_axis(index="model, epoch", columns="decoder layer")


def run_table(record: RunRecord) -> pd.DataFrame:
    """Per epoch: the three validation losses and the AP stats (points) of one run."""
    df = record.metrics[[f"val_{k}" for k in LOSS_VIEWS]].copy()
    for k in AP_STATS:
        df[k] = 100 * record.metrics[f"val_{k}"]
    return df.rename(columns=lambda c: c.removeprefix("val_"))
