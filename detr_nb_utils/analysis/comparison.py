"""06_analysis's tables: the runs found and grouped by what their folders hold, each variant's AP at the final epoch
with its 95% interval (the headline), the change from its own epoch 0, the differences between variants (Holm-
adjusted), the losses beside the original study's numbers, the AP of each decoder layer, and cost against AP.

Runs are found by content, never by folder name (:mod:`.run_sets`: :func:`~.run_sets.load_runs`,
:func:`~.run_sets.by_variant`, :func:`~.run_sets.by_recipe`), and runs made on different splits, in different
precisions or with different recipes are refused, naming both folders.

The statistics, fixed before any result is seen:

- **Primary: the final epoch** (each run's last evaluated epoch, ``config.epochs`` once complete). The headline
  table, the rankings and the differences use it.
- **Secondary: the best fine-tuned epoch** by validation AP (:func:`detr_nb_utils.training.runs.best_epoch`; never
  epoch 0). It is picked on the same validation images it is scored on, so its interval re-picks the best epoch
  inside every bootstrap resample: the selection is inside the interval.
- **Changes are signed**: final (or best) minus the variant's own epoch 0, negative when fine-tuning lost AP.
- **Seeds**: a variant's value is the mean over its training seeds; with three seeds or more each bootstrap resample
  also redraws the seeds with replacement, so the interval covers both the choice of images and the seed. With
  fewer, redrawing would shrink the seeds' variance: the interval covers the images only and the seeds' spread is
  given beside it (:data:`.run_bootstrap.MIN_SEEDS_RESAMPLED`).
- **Recipes**: runs compare only within one recipe (:mod:`detr_nb_utils.training.recipe`); a run of another recipe
  is refused naming the field and both folders, unless it is a declared recipe arm, which is its own family
  (:func:`by_recipe`).
- **Many comparisons**: one Holm family per question, the same in every notebook that asks it (:data:`VARIANT_PAIRS`,
  :data:`QUERY_PAIRS`); their bootstrap p-values are Holm-adjusted (:func:`.bootstrap.holm`).
- **The 50-query cap**: ``AP@50det`` keeps each image's 50 highest-scoring detections (all a 50-query model can
  output); a pair of variants with different numbers of queries is compared on it.

AP in points (COCOeval's fractions x 100, as the paper prints them; each table's ``attrs["units"]`` names its AP
columns). Nothing here trains. What 06 concludes from these tables is :mod:`.conclusions`.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ..models.loss import LOSS_VIEWS
from ..training.config import variant_name
from ..training.runs import RunRecord
from .bootstrap import LEVEL, holm, seed_summary
from .run_bootstrap import ApBootstrap, Groups, runs_of

# the runs found and grouped by content, where 06 and the tests have always imported them from
from .run_sets import (  # noqa: F401
    IncomparableRuns,
    by_recipe,
    by_variant,
    check_comparable,
    discover_runs,
    first_seed_runs,
    load_runs,
    missing_variants,
    variant_labels,
)

#: run name (``RunConfig.run_dir``'s default) -> (decoder layers, queries, label): the three variants compared
VARIANTS = {variant_name(layers, queries): (layers, queries, label)
            for layers, queries, label in ((6, 100, "baseline"), (3, 100, "shallow decoder"),
                                           (3, 50, "shallow + 50 queries"))}
#: what the original study reported as "best validation loss" (its section 5), to set beside our runs
ORIGINAL_STUDY_LOSS = {"dec6_q100": 71.3, "dec3_q100": 52.5, "dec3_q50": 51.45}
#: DETR-R50 on COCO val2017, the paper's Table 1 (500 epochs), in points (../shared/reference/README.md)
PAPER_AP = {"AP": 42.0, "AP50": 62.4, "AP75": 44.2, "APs": 20.5, "APm": 45.8, "APl": 61.1}
AP_STATS = tuple(PAPER_AP)
#: the 50-query choices of notebook 05: variant name -> strategy of detr_nb_utils.analysis.queries.select_queries
QUERY_CHOICES = {"dec3_q50": "first", "dec3_q50_most_matched": "most_matched", "dec3_q50_spread": "spread"}
#: one Holm family per question, the same wherever it is asked (04, 05 and 06): which decoder (every pair of the
#: three variants), and which 50 queries (every pair of the three choices). One sign convention everywhere: ``(a, b)``
#: is shown as a - b, the smaller model (or the later choice) minus the one it was cut from, so a negative
#: difference is what the cut loses: 3 layers - 6 layers, 50 queries - 100, a choice of 50 - the first 50
VARIANT_PAIRS = (("dec3_q100", "dec6_q100"), ("dec3_q50", "dec6_q100"), ("dec3_q50", "dec3_q100"))
QUERY_PAIRS = (("dec3_q50_most_matched", "dec3_q50"), ("dec3_q50_spread", "dec3_q50"),
               ("dec3_q50_spread", "dec3_q50_most_matched"))
#: the unit of every AP column of 06's tables (COCOeval's fractions x 100)
POINTS = "points"
#: detections per image kept for the capped AP: what the 50-query variant can output at most
CAP = 50
AP_CAPPED = f"AP@{CAP}det"
#: the final layer's loss terms, compared with the deep model's auxiliary layer by :func:`layer_equivalence`
LOSS_TERMS = ("loss_ce", "loss_bbox", "loss_giou")


def _ap_at(record: RunRecord, epoch: int | None) -> float:
    m = record.metrics
    return 100 * float(m.loc[epoch, "val_AP"]) if epoch is not None and epoch in m.index else math.nan


def seeds_table(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """Per variant and epoch (rows ``(variant, "AP at")``: the final epoch (primary), epoch 0, the best fine-tuned
    epoch (secondary)), over its seeds: ``seeds``, ``mean``, sample ``std``, ``min``, ``max`` of AP, points."""
    groups = by_variant(records)
    parts = {what: seed_summary({v: [_ap_at(r, pick(r)) for r in runs.values()] for v, runs in groups.items()})
             for what, pick in (("final epoch", lambda r: r.final_epoch), ("epoch 0", lambda r: 0),
                                ("best epoch (secondary)", lambda r: r.best_epoch_ap))}
    table = pd.concat(parts, names=["AP at"]).swaplevel().sort_index(level=0, sort_remaining=False)
    table = table.reindex(pd.MultiIndex.from_product([list(groups), list(parts)], names=["variant", "AP at"]))
    table.attrs["units"] = {c: POINTS for c in ("mean", "std", "min", "max")}
    return table


def _pct(d: dict | None, prefix: str, excludes: bool = False) -> dict:
    if d is None:
        return {}
    out = {prefix: 100 * d["point"], f"{prefix} low": 100 * d["low"], f"{prefix} high": 100 * d["high"]}
    if excludes:
        out[f"{prefix} excludes 0"] = bool(d["low"] > 0 or d["high"] < 0)
    return out


def _final_epochs(runs: Sequence[RunRecord]) -> int | str:
    epochs = sorted({r.final_epoch for r in runs if r.final_epoch is not None})
    return epochs[0] if len(epochs) == 1 else ", ".join(map(str, epochs))


def headline_table(bootstrap: ApBootstrap, groups: Groups) -> pd.DataFrame:
    """The primary comparison, one row per variant: AP at the final epoch and ``AP@50det`` (each image's 50
    highest-scoring detections), mean over the seeds, each with its 95% interval (images, and seeds when there are
    several), the seeds and their sample std of the final AP, points. ``attrs``: ``n_images``, ``n_resamples``."""
    rows = {}
    for v, group in groups.items():
        runs = runs_of(group)
        ap = bootstrap.stat(v, runs, "final")
        rows[v] = {"layers": runs[0].config.dec_layers, "queries": runs[0].config.num_queries, "seeds": len(runs),
                   "final epoch": _final_epochs(runs), "complete": all(r.complete for r in runs),
                   **_pct(ap, "AP"), **_pct(bootstrap.stat(v, runs, "final", CAP), AP_CAPPED),
                   "seed std": 100 * ap["seed_std"] if ap else math.nan}
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("variant")
    table.attrs.update(n_images=len(bootstrap.img_ids), n_resamples=bootstrap.n_resamples,
                       units={"AP": POINTS, AP_CAPPED: POINTS, "seed std": POINTS})
    return table


def finetuning_gain_table(bootstrap: ApBootstrap, groups: Groups) -> pd.DataFrame:
    """Per variant: AP at epoch 0, at the final epoch and the signed ``change`` between them (primary; negative
    when fine-tuning lost AP), then, secondary, the best fine-tuned epochs and AP there with its change from
    epoch 0, both re-picked inside every resample. Each with its 95% interval and, for changes, whether it
    excludes 0. Points; mean over the seeds."""
    rows = {}
    for v, group in groups.items():
        runs = runs_of(group)
        rows[v] = {"seeds": len(runs), "final epoch": _final_epochs(runs),
                   **_pct(bootstrap.stat(v, runs, "epoch 0"), "epoch-0 AP"),
                   **_pct(bootstrap.stat(v, runs, "final"), "AP"),
                   **_pct(bootstrap.stat(v, runs, "change"), "change", excludes=True),
                   "best epochs": ", ".join(str(r.best_epoch_ap) for r in runs if r.best_epoch_ap is not None),
                   **_pct(bootstrap.stat(v, runs, "best"), "best AP (secondary)"),
                   **_pct(bootstrap.stat(v, runs, "best change"), "best change (secondary)", excludes=True)}
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("variant")
    table.attrs.update(n_images=len(bootstrap.img_ids), n_resamples=bootstrap.n_resamples, units=dict.fromkeys(
        ("epoch-0 AP", "AP", "change", "best AP (secondary)", "best change (secondary)"), POINTS))
    return table


def differences_table(bootstrap: ApBootstrap, groups: Groups, pairs: Sequence[tuple[str, str]] | None = None
                      ) -> pd.DataFrame:
    """Variant ``a`` minus variant ``b`` at the final epoch for each pair of the family ``pairs`` (one question's
    pairs, e.g. :data:`VARIANT_PAIRS`; default: every pair of ``groups``, a later one minus an earlier one, so with
    the baseline first the smaller model minus the one it was cut from) whose variants both have runs, in points
    with the 95% paired interval. A pair whose query counts differ is ``compared on`` ``AP@50det``, others on AP
    (both are given). ``p``: two-sided bootstrap p-value; ``p Holm``: Holm-adjusted over the family
    (``attrs["family"]`` pairs). While some of the family's pairs have no runs yet (04 before 05 has run), ``p
    Holm`` is its upper bound, ``family`` x ``p`` capped at 1 (Holm never exceeds it; ``attrs["holm"]`` is
    ``"bound"``, else ``"exact"``). ``excludes 0 (Holm)``: ``p Holm`` below 5%."""
    pairs = [(b, a) for a, b in itertools.combinations(groups, 2)] if pairs is None else list(pairs)
    rows = []
    for a, b in [(a, b) for a, b in pairs if a in groups and b in groups]:
        ra, rb = runs_of(groups[a]), runs_of(groups[b])
        capped = ra[0].config.num_queries != rb[0].config.num_queries
        d = {k: bootstrap.diff((a, ra), (b, rb), "final", m) for k, m in (("AP", None), (AP_CAPPED, CAP))}
        on = AP_CAPPED if capped else "AP"
        if d[on] is not None:
            rows.append({"a": a, "b": b, "compared on": on, **_pct(d[on], "a - b", excludes=True), "p": d[on]["p"],
                         "AP a - b": 100 * d["AP"]["point"], f"{AP_CAPPED} a - b": 100 * d[AP_CAPPED]["point"]})
    columns = ["a", "b", "compared on", "a - b", "a - b low", "a - b high", "a - b excludes 0", "p", "p Holm",
               "excludes 0 (Holm)", "AP a - b", f"{AP_CAPPED} a - b"]
    table = pd.DataFrame(rows, columns=columns)
    complete = len(table) == len(pairs)
    p = table["p"].to_numpy(float)
    table["p Holm"] = holm(p) if complete else np.minimum(1.0, len(pairs) * p)
    table["excludes 0 (Holm)"] = table["p Holm"] < 1 - LEVEL
    table.attrs.update(family=len(pairs), holm="exact" if complete else "bound", n_images=len(bootstrap.img_ids),
                       units=dict.fromkeys(("a - b", "AP a - b", f"{AP_CAPPED} a - b"), POINTS))
    return table


def layer_equivalence(records: Mapping[str, RunRecord], deep: str = "dec6_q100", shallow: str = "dec3_q100",
                      rtol: float = 1e-4) -> dict:
    """The shallow model at epoch 0 is the deep model's layer ``L`` (same weights, same final norm): its epoch-0
    AP and final-layer loss terms (:data:`LOSS_TERMS`) against the deep run's epoch-0 ``AP_layer_{L-1}`` and
    auxiliary terms ``loss_*_{L-1}``. Returns ``layers``, ``shallow_AP``, ``deep_layer_AP`` (fractions),
    ``abs_diff``, ``losses`` (term -> (shallow, deep)), ``max_loss_rel_diff``, ``same_AP``, ``same_losses`` (each
    within ``rtol`` relative), ``same``; {} when a run or its epoch 0 is missing. The losses decide where AP is 0."""
    if deep not in records or shallow not in records:
        return {}
    ms, md = records[shallow].metrics, records[deep].metrics
    layers, deep_layers = records[shallow].config.dec_layers, records[deep].config.dec_layers
    if 0 not in ms.index or 0 not in md.index or layers > deep_layers:
        return {}
    suffix = "" if layers == deep_layers else f"_{layers - 1}"
    a, b = float(ms.loc[0, "val_AP"]), float(md.loc[0, f"val_AP_layer_{layers - 1}"])
    losses = {t: (float(ms.loc[0, f"val_{t}"]), float(md.loc[0, f"val_{t}{suffix}"])) for t in LOSS_TERMS
              if f"val_{t}" in ms and f"val_{t}{suffix}" in md}
    rel = [abs(x - y) / max(abs(x), abs(y), 1e-12) for x, y in losses.values()]
    same_ap, same_losses = abs(a - b) < 5e-5, bool(losses) and max(rel) <= rtol
    return {"layers": layers, "deep_layers": deep_layers, "shallow_AP": a, "deep_layer_AP": b, "abs_diff": abs(a - b),
            "losses": losses,
            "max_loss_rel_diff": max(rel) if rel else math.nan, "same_AP": same_ap, "same_losses": same_losses,
            "same": same_ap and same_losses}


def cost_vs_ap(cost: pd.DataFrame, headline: pd.DataFrame) -> pd.DataFrame:
    """The cost table (:func:`detr_nb_utils.analysis.cost.cost_table`) joined with each variant's final-epoch AP and
    ``AP@50det`` and their intervals (:func:`headline_table`): parameters, GFLOPs and GMACs, the median latency per
    image (``latency (ms)``, and ``latency GPU (ms)`` when measured; the device and image size in ``attrs``), AP."""
    names = {"gflops": "GFLOPs", "gmacs": "GMACs", "latency_ms": "latency (ms)", "latency_ms_gpu": "latency GPU (ms)"}
    keep = [c for c in ("parameters", *names) if c in cost]
    ap = [c for c in headline.columns if c.startswith(("AP", "seeds"))]
    table = cost[keep].rename(columns=names).join(headline[ap], how="left")
    table.attrs.update(units=headline.attrs.get("units", {}), **{k: str(cost[k].iloc[0]) for k in
                                                                ("latency_device", "latency_size") if k in cost})
    return table


# ---- the losses and the single runs ------------------------------------------------------------------------


def _row(record: RunRecord, epoch: int | None, at: str) -> dict:
    m = record.metrics
    row = {"run": record.run_dir.name, "layers": record.config.dec_layers, "queries": record.config.num_queries,
           "at": at, "epoch": epoch}
    ok = epoch is not None and epoch in m.index
    row.update({k: m.loc[epoch, f"val_{k}"] if ok and f"val_{k}" in m else math.nan for k in LOSS_VIEWS})
    row.update({k: 100 * m.loc[epoch, f"val_{k}"] if ok and f"val_{k}" in m else math.nan for k in AP_STATS})
    return row


def comparison_table(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """Per run, four rows: epoch 0 (the checkpoint, before fine-tuning), the final epoch (the primary comparison),
    the original study's pick (the fine-tuned epoch of lowest total val loss) and the fine-tuned epoch of highest
    val AP (secondary: picked on the validation images); each with the three val losses and AP..APl (points)."""
    rows = []
    for r in records.values():
        rows += [_row(r, 0, "epoch 0"), _row(r, r.final_epoch, "final epoch"),
                 _row(r, r.best_epoch_loss, "lowest total loss (original study)"),
                 _row(r, r.best_epoch_ap, "highest AP (secondary)")]
    columns = ["run", "layers", "queries", "at", "epoch", *LOSS_VIEWS, *AP_STATS]
    table = pd.DataFrame(rows, columns=columns).set_index(["run", "at"])
    table.attrs["units"] = dict.fromkeys(AP_STATS, POINTS)
    return table


def _fine_tuned(record: RunRecord, column: str) -> pd.Series:
    m = record.metrics
    return m.loc[m.index >= 1, column] if column in m else pd.Series(dtype=float)


def reported_losses(variants: Sequence[str] = tuple(VARIANTS)) -> pd.DataFrame:
    """What the original study reported as each variant's best validation loss (its total over the decoder
    layers, on COCO with DETR-R50), a table of its own: numbers of another model on other data, never to be set in
    one table with a run's losses."""
    return pd.DataFrame({"best total validation loss, as reported": {v: ORIGINAL_STUDY_LOSS[v] for v in variants
                                                                     if v in ORIGINAL_STUDY_LOSS}}).rename_axis("variant")


def original_study_table(groups: Groups) -> pd.DataFrame:
    """The original study's criterion measured on these runs: the lowest total, final-layer and per-layer mean
    validation loss over the fine-tuned epochs (epoch 0 never counts), beside AP at the final epoch and its signed
    change from epoch 0 (points); means over the seeds. What the original study itself reported is
    :func:`reported_losses`, a table of its own."""
    rows = {}
    for v, group in groups.items():
        runs = runs_of(group)

        def mean(f, runs=runs) -> float:
            return float(np.mean([f(r) for r in runs]))

        rows[v] = {"best total loss": mean(lambda r: _fine_tuned(r, "val_loss_total").min()),
                   "best final-layer loss": mean(lambda r: _fine_tuned(r, "val_loss_final").min()),
                   "best per-layer mean": mean(lambda r: _fine_tuned(r, "val_loss_layer_mean").min()),
                   "final AP": mean(lambda r: _ap_at(r, r.final_epoch)),
                   "AP change": mean(lambda r: _ap_at(r, r.final_epoch) - _ap_at(r, 0))}
    columns = ["best total loss", "best final-layer loss", "best per-layer mean", "final AP", "AP change"]
    table = pd.DataFrame.from_dict(rows, orient="index", columns=columns).rename_axis("variant")
    table.attrs["units"] = {"final AP": POINTS, "AP change": POINTS}
    return table


def final_losses(groups: Groups) -> pd.DataFrame:
    """Per variant, the three validation losses at the final epoch (means over the seeds)."""
    at = (lambda r, k: r.metrics.loc[r.final_epoch, f"val_{k}"] if r.final_epoch is not None else math.nan)
    return pd.DataFrame({v: {k: float(np.mean([at(r, k) for r in runs_of(g)])) for k in LOSS_VIEWS}
                         for v, g in groups.items()}, index=list(LOSS_VIEWS)).T.rename_axis("variant")


def ap_per_layer(records: Mapping[str, RunRecord], epoch: str | int = "final") -> pd.DataFrame:
    """AP (fraction) of each decoder layer's predictions (columns 1..L) per run, at the final epoch (``"final"``),
    the best fine-tuned epoch (``"best"``) or ``epoch``."""
    rows = {}
    for name, r in records.items():
        e = {"final": r.final_epoch, "best": r.best_epoch_ap}.get(epoch, epoch)
        rows[name] = {layer + 1: r.metrics.loc[e, f"val_AP_layer_{layer}"] if e in r.metrics.index else math.nan
                      for layer in range(r.config.dec_layers)}
    return pd.DataFrame(rows).T
