"""The notebooks' tables, :func:`save_table` that exports them (CSV and Markdown) into ``report/tables``, and the
closing sentences whose every number and ranking is computed from the run files.

Nothing here trains: tables are built from a split manifest, a checkpoint's state dict, or run folders read with
:func:`detr_nb_utils.runs.load_run`. AP is reported in percent (COCOeval's fractions x 100, as the paper prints
them); losses are the weighted sums of :mod:`detr_nb_utils.loss` in three views (total, final layer,
per-layer mean). Used by notebooks 01-06; :func:`comparison_table` and :func:`conclusion` by 06_analysis.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd
import torch

from .checkpoint import LoadReport
from .loss import DEFAULT_WEIGHTS, final_layer_loss
from .model import DETR, build_detr, parameter_table
from .runs import RunRecord, load_run
from .split import CROWDED_THRESHOLD, SIDES

#: run name (``RunConfig.run_dir``'s default) -> (decoder layers, queries, label): the three variants compared
VARIANTS = {"dec6_q100": (6, 100, "baseline"), "dec3_q100": (3, 100, "shallow decoder"),
            "dec3_q50": (3, 50, "shallow + 50 queries")}
#: what the seed document reported as "best validation loss" (its section 5), to set beside our runs
SEED_REPORTED_LOSS = {"dec6_q100": 71.3, "dec3_q100": 52.5, "dec3_q50": 51.45}
#: DETR-R50 on COCO val2017, the paper's Table 1 (500 epochs), in percent (../shared/reference/README.md)
PAPER_AP = {"AP": 42.0, "AP50": 62.4, "AP75": 44.2, "APs": 20.5, "APm": 45.8, "APl": 61.1}
AP_STATS = tuple(PAPER_AP)
LOSS_VIEWS = ("loss_total", "loss_final", "loss_layer_mean")
DEMO_NOTE = ("These runs use RANDOM weights on synthetic demo data: the numbers exercise the pipeline and say "
             "nothing about DETR.")


def markdown_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """``df`` (index included) as a GitHub-flavoured Markdown table; NaN printed as an empty cell."""
    df = df.reset_index() if df.index.name or not isinstance(df.index, pd.RangeIndex) else df

    def cell(v) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else format(v, floatfmt)
        return str(v).replace("|", "\\|")

    rows = [[cell(str(c)) for c in df.columns], ["---"] * df.shape[1], *([cell(v) for v in r] for r in df.to_numpy())]
    return "\n".join("| " + " | ".join(r) + " |" for r in rows) + "\n"


def save_table(df: pd.DataFrame, name: str, report_dir: str | Path = "report", floatfmt: str = ".3f") -> None:
    """Write ``df`` to ``<report_dir>/tables/<name>.csv`` and ``.md``. Used by notebooks 01-06."""
    folder = Path(report_dir) / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    df.to_csv(folder / f"{name}.csv")
    (folder / f"{name}.md").write_text(markdown_table(df, floatfmt))


def save_takeaway(text: str, name: str, report_dir: str | Path = "report") -> None:
    """Write a notebook's closing sentences to ``<report_dir>/tables/<name>.md`` (the report links them)."""
    path = Path(report_dir) / "tables" / f"{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.strip() + "\n")


def _ranked(values: Mapping[str, float], higher_is_better: bool, fmt: str) -> str:
    """``"a (1.0) > b = c (0.5)"``: runs in order, ties (equal as printed) joined by ``=``."""
    values = dict(values)
    order = sorted(values, key=lambda k: values[k], reverse=higher_is_better)
    text = [f"{order[0]} ({values[order[0]]:{fmt}})"]
    for prev, k in zip(order, order[1:]):
        tie = format(values[prev], fmt) == format(values[k], fmt)
        text.append(("= " if tie else "> " if higher_is_better else "< ") + f"{k} ({values[k]:{fmt}})")
    return " ".join(text)


def _discordant(first: pd.Series, second: pd.Series) -> list[tuple[str, str]]:
    """Pairs ``(a, b)`` that ``first`` ranks ``a`` above ``b`` and ``second`` ranks ``b`` above ``a`` (both: higher
    is better; round them to the precision that is printed, so ties are ties)."""
    return [(a, b) for a in first.index for b in first.index if first[a] > first[b] and second[b] > second[a]]


def _agreement(name: str, first: pd.Series, other: str, second: pd.Series) -> str:
    """One sentence: do the rankings by ``first`` and ``second`` (higher is better) order every pair alike?"""
    flips = _discordant(first, second)
    if not flips:
        return f"The rankings by {name} and by {other} agree (no pair of runs is ordered the other way round)."
    return (f"The rankings by {name} and by {other} DISAGREE: "
            + "; ".join(f"{name} puts {a} above {b}, {other} puts {b} above {a}" for a, b in flips) + ".")


# ---- 01: the split -----------------------------------------------------------------------------------------


def split_summary(manifest: dict) -> pd.DataFrame:
    """Per side (source, train, val): images, boxes, crowd regions, images without boxes, most boxes in one image,
    images over :data:`~detr_nb_utils.split.CROWDED_THRESHOLD` boxes. ``manifest``: ``make_split``'s."""
    keys = {"n_images": "images", "n_boxes": "boxes", "n_crowd": "crowd", "n_images_without_boxes": "no boxes",
            "max_boxes_per_image": "max boxes/image",
            f"n_images_over_{CROWDED_THRESHOLD}_boxes": f"images > {CROWDED_THRESHOLD} boxes"}
    return pd.DataFrame({side: {v: manifest[side][k] for k, v in keys.items()} for side in ("source", *SIDES)}).T


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


def split_takeaway(summary: pd.DataFrame, diversity: pd.DataFrame) -> str:
    """Closing sentences of 01 from :func:`split_summary` and :func:`~detr_nb_utils.split.split_diversity`."""
    over = f"images > {CROWDED_THRESHOLD} boxes"
    present = diversity[diversity["source"] > 0]
    worst = (present["val_share"] - present["source_share"]).abs().idxmax()
    return (f"The split holds {summary.loc['train', 'images']} training and {summary.loc['val', 'images']} "
            f"validation images with {summary.loc['train', 'boxes']} and {summary.loc['val', 'boxes']} boxes; "
            f"{int((present['val'] > 0).sum())} of the source's {len(present)} categories appear in val. The "
            f"largest gap between a category's val share and its source share is "
            f"{100 * abs(present.loc[worst, 'val_share'] - present.loc[worst, 'source_share']):.2f} points "
            f"({present.loc[worst, 'name']}). {summary.loc['val', over]} val images hold more than "
            f"{CROWDED_THRESHOLD} objects, which a {CROWDED_THRESHOLD}-query model cannot all detect.")


# ---- 02: the checkpoint and the variants -------------------------------------------------------------------


def skeleton(dec_layers: int = 6, num_queries: int = 100) -> DETR:
    """A DETR variant without storage (meta device): for counting parameters and planning surgery, instantly."""
    with torch.device("meta"):
        return build_detr(dec_layers=dec_layers, num_queries=num_queries)


def parameter_counts(variants: Mapping[str, tuple] = VARIANTS) -> pd.DataFrame:
    """Parameters per component (rows) of each variant (columns), with a ``total`` row. ``variants``: name ->
    ``(dec_layers, num_queries, ...)``, e.g. :data:`VARIANTS`."""
    return pd.DataFrame({name: parameter_table(skeleton(*v[:2]))["parameters"] for name, v in variants.items()})


def surgery_table(reports: Mapping[str, LoadReport]) -> pd.DataFrame:
    """State-dict entries per action (loaded, sliced, dropped, re-initialised) for each variant's surgery."""
    return pd.DataFrame({v: r.summary() for v, r in reports.items()}).fillna(0).astype(int).T


def ap_vs_paper(metrics: Mapping[str, float]) -> pd.DataFrame:
    """Epoch-0 AP stats (``metrics`` from ``evaluate_checkpoint``, fractions) beside the paper's, in percent."""
    return pd.DataFrame({"this split, epoch 0": {k: 100 * metrics[k] for k in AP_STATS}, "paper": PAPER_AP})


def checkpoint_takeaway(params: pd.DataFrame, surgery: pd.DataFrame, ap: pd.DataFrame, random_weights: bool) -> str:
    """Closing sentences of 02 from :func:`parameter_counts`, :func:`surgery_table` and :func:`ap_vs_paper`."""
    total = params.loc["total"]
    cuts = "; ".join(f"{v} keeps {total[v]:,} parameters ({100 * total[v] / total.iloc[0]:.1f}%), "
                     f"drops {surgery.loc[v].get('dropped', 0)} entries and slices {surgery.loc[v].get('sliced', 0)}"
                     for v in params.columns[1:])
    ours, paper = ap.loc["AP", "this split, epoch 0"], ap.loc["AP", "paper"]
    head = DEMO_NOTE + " " if random_weights else ""
    return (f"{head}The checkpoint's model has {total.iloc[0]:,} parameters; {cuts}. Before any fine-tuning it "
            f"scores AP {ours:.1f} on this validation split, against {paper:.1f} in the paper on all of val2017.")


# ---- 03-05: one run ----------------------------------------------------------------------------------------


def with_train_views(record: RunRecord) -> pd.DataFrame:
    """``record.metrics`` plus the training loss in the three views: ``train_loss_total`` (the optimised sum),
    ``train_loss_final`` (last layer) and ``train_loss_layer_mean`` (total / decoder layers)."""
    df = record.metrics.copy()
    if "train_loss" in df:
        df["train_loss_total"] = df["train_loss"]
        df["train_loss_final"] = final_layer_loss({k: df[f"train_{k}"] for k in DEFAULT_WEIGHTS}, DEFAULT_WEIGHTS)
        df["train_loss_layer_mean"] = df["train_loss"] / record.config.dec_layers
    return df


def run_table(record: RunRecord) -> pd.DataFrame:
    """Per epoch: the three validation losses and the AP stats (percent) of one run."""
    df = record.metrics[[f"val_{k}" for k in LOSS_VIEWS]].copy()
    for k in AP_STATS:
        df[k] = 100 * record.metrics[f"val_{k}"]
    return df.rename(columns=lambda c: c.removeprefix("val_"))


def run_takeaway(record: RunRecord) -> str:
    """Closing sentences of 03-05: what fine-tuning did to AP and to the losses, from the run folder."""
    m, name = record.metrics, record.run_dir.name
    last, best = int(m.index.max()), record.best_epoch_ap
    head = DEMO_NOTE + " " if bool(m["random_weights"].any()) else ""
    status = "" if record.complete else f" The run is incomplete ({last} of {record.config.epochs} epochs)."
    ap = "no epoch was evaluated" if best is None else (
        f"val AP went from {100 * m.loc[0, 'val_AP']:.1f} at epoch 0 to {100 * m.loc[last, 'val_AP']:.1f} at epoch "
        f"{last} (best {100 * m.loc[best, 'val_AP']:.1f}, epoch {best})")
    return (f"{head}{name}: {ap}; the total val loss went from {m.loc[0, 'val_loss_total']:.3f} to "
            f"{m.loc[last, 'val_loss_total']:.3f} and the final-layer loss from {m.loc[0, 'val_loss_final']:.3f} "
            f"to {m.loc[last, 'val_loss_final']:.3f}.{status}")


# ---- 06: the comparison ------------------------------------------------------------------------------------


def load_runs(out_dir: str | Path, names: Iterable[str] = VARIANTS) -> tuple[dict[str, RunRecord], list[str]]:
    """The run folders ``<out_dir>/<name>`` that hold finished epochs, and the names of those that do not."""
    records, missing = {}, []
    for name in names:
        try:
            records[name] = load_run(Path(out_dir) / name)
        except FileNotFoundError:
            missing.append(name)
    return records, missing


def _row(record: RunRecord, epoch: int | None, at: str) -> dict:
    m = record.metrics
    row = {"run": record.run_dir.name, "layers": record.config.dec_layers, "queries": record.config.num_queries,
           "at": at, "epoch": epoch}
    ok = epoch is not None and epoch in m.index
    row.update({k: m.loc[epoch, f"val_{k}"] if ok else math.nan for k in LOSS_VIEWS})
    row.update({k: 100 * m.loc[epoch, f"val_{k}"] if ok else math.nan for k in AP_STATS})
    return row


def comparison_table(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """Per run, three rows: epoch 0 (the checkpoint, before fine-tuning), the seed's pick (the epoch of lowest
    total val loss) and the epoch of highest val AP; each with the three val losses and AP..APl (percent)."""
    rows = []
    for r in records.values():
        rows += [_row(r, 0, "epoch 0"), _row(r, r.best_epoch_loss, "lowest total loss (seed)"),
                 _row(r, r.best_epoch_ap, "highest AP")]
    columns = ["run", "layers", "queries", "at", "epoch", *LOSS_VIEWS, *AP_STATS]
    return pd.DataFrame(rows, columns=columns).set_index(["run", "at"])


def seed_table(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """The seed's table (best total validation loss per variant) with what our runs measure beside it."""
    rows = {}
    for name, r in records.items():
        m = r.metrics
        rows[name] = {"seed reported": SEED_REPORTED_LOSS.get(name, math.nan),
                      "best total loss": m["val_loss_total"].min(), "best final-layer loss": m["val_loss_final"].min(),
                      "best per-layer mean": m["val_loss_layer_mean"].min(), "best AP": 100 * m["val_AP"].max()}
    columns = ["seed reported", "best total loss", "best final-layer loss", "best per-layer mean", "best AP"]
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns).rename_axis("run")


def ap_per_layer(records: Mapping[str, RunRecord], epoch: str | int = "best") -> pd.DataFrame:
    """AP (fraction) of each decoder layer's predictions (columns 1..L) per run, at the best-AP epoch or ``epoch``."""
    rows = {}
    for name, r in records.items():
        e = r.best_epoch_ap if epoch == "best" else epoch
        rows[name] = {layer + 1: r.metrics.loc[e, f"val_AP_layer_{layer}"] for layer in range(r.config.dec_layers)}
    return pd.DataFrame(rows).T


def _depth_effect(records: Mapping[str, RunRecord], seed: pd.DataFrame) -> list[str]:
    """How much of the deepest run's higher total loss is its depth: its total and its final-layer loss as
    multiples of the shallowest run's (one with the same number of queries when there is one)."""
    cfg = {n: r.config for n, r in records.items()}
    deep = max(cfg, key=lambda n: cfg[n].dec_layers)
    shallow = min(cfg, key=lambda n: (cfg[n].dec_layers, cfg[n].num_queries != cfg[deep].num_queries))
    if cfg[deep].dec_layers == cfg[shallow].dec_layers:
        return []
    ratio = seed.loc[deep] / seed.loc[shallow]
    return [f"The total sums one loss per decoder layer ({cfg[deep].dec_layers} against {cfg[shallow].dec_layers}): "
            f"{deep}'s total is {ratio['best total loss']:.2f}x {shallow}'s, its final-layer loss "
            f"{ratio['best final-layer loss']:.2f}x and its per-layer mean {ratio['best per-layer mean']:.2f}x."]


def conclusion(records: Mapping[str, RunRecord], missing: Iterable[str] = (),
               intervals: pd.DataFrame | None = None) -> str:
    """06's closing sentences: the rankings by the seed's total loss, by the depth-fair losses and by AP, whether
    they disagree, the fine-tuning gain of each run; every number read from the run folders.

    ``intervals`` (:func:`detr_nb_utils.intervals.zero_shot_table`): the best AP of each run is followed by its
    95% interval, and the gains are left to :func:`detr_nb_utils.intervals.interval_conclusion`, which gives
    them with theirs."""
    missing = list(missing)
    if len(records) < 2:
        return f"Fewer than two runs to compare (found {sorted(records) or 'none'}; missing {missing})."
    seed = seed_table(records)
    total, ap = seed["best total loss"], seed["best AP"]
    lines = [DEMO_NOTE] if any(bool(r.metrics["random_weights"].any()) for r in records.values()) else []
    if missing:
        lines.append(f"Missing run folders (not compared): {', '.join(missing)}.")
    lines.append(f"By the seed's metric, the lowest total validation loss: {_ranked(total, False, '.3f')}.")
    reported = {k: v for k, v in SEED_REPORTED_LOSS.items() if k in records}
    if len(reported) == len(records):
        lines.append(f"The seed reported {_ranked(reported, False, '.2f')}.")
    lines.append(f"By final-layer loss: {_ranked(seed['best final-layer loss'], False, '.3f')}; by per-layer mean "
                 f"loss: {_ranked(seed['best per-layer mean'], False, '.3f')}.")
    with_ci = intervals is not None and "best AP low" in intervals and set(ap.index) <= set(intervals.index)
    ci = (" (95% intervals: " + ", ".join(f"{n} [{intervals.loc[n, 'best AP low']:.1f}, "
                                          f"{intervals.loc[n, 'best AP high']:.1f}]" for n in ap.index) + ")"
          if with_ci else "")
    lines.append(f"By COCO AP (best epoch): {_ranked(ap, True, '.1f')}{ci}.")
    lines.append(_agreement("total loss", -total.round(3), "final-layer loss",
                            -seed["best final-layer loss"].round(3)))
    if ap.round(1).nunique() == 1:
        lines.append("AP does not separate the runs, so it can neither confirm nor contradict the total loss.")
    else:
        lines.append(_agreement("total loss", -total.round(3), "AP", ap.round(1)))
    lines += _depth_effect(records, seed)
    if not with_ci:
        gains = {n: 100 * (r.metrics["val_AP"].max() - r.metrics.loc[0, "val_AP"]) for n, r in records.items()}
        lines.append("AP gained by fine-tuning over epoch 0 (points): "
                     + ", ".join(f"{n} {g:+.1f}" for n, g in gains.items()) + ".")
    return "\n".join(lines)
