"""A variant against the baseline, for the takeaways of 04 and 05: its final AP minus the baseline's with the paired
95% interval over the validation images (and seeds), and each one's gap between validation and training loss at the
final epoch. Reads the run folders 03 wrote beside the variant's; never trains. 06 makes the full comparison.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from ..models.loss import loss_views, weight_dict
from ..training.runs import RunRecord
from .bootstrap import ApBootstrap
from .comparison import AP_CAPPED, by_variant, differences_table, load_runs

BASELINE = "dec6_q100"


def loss_gap(record: RunRecord) -> float:
    """Final-layer loss at the final epoch, validation minus training (the training loss is the epoch's mean, with
    dropout and augmentation on): positive when the model does worse on images it did not train on."""
    m, layers, weights = record.metrics, record.config.dec_layers, weight_dict(record.config.dec_layers)
    final = {side: loss_views({k: m.loc[record.final_epoch, f"{side}_{k}"] for k in weights}, weights,
                              layers)["loss_final"] for side in ("val", "train")}
    return float(final["val"] - final["train"])


def versus_baseline(out_dir: str | Path, variant: str, n_resamples: int = 1000,
                    baseline: str = BASELINE) -> tuple[pd.DataFrame, str]:
    """``variant`` (every seed's run folder under ``out_dir``) against ``baseline`` (03's): the row of
    :func:`~.comparison.differences_table` (``a - b`` in points with its interval, on AP, or on AP@50det when the
    query counts differ) with the mean ``loss gap`` (:func:`loss_gap`) of each, and a sentence saying what it
    shows. Without the baseline's runs the table is empty and the sentence says which notebook makes them."""
    groups = by_variant(load_runs(out_dir))
    if variant not in groups or baseline not in groups:
        absent = [v for v in (variant, baseline) if v not in groups]
        return pd.DataFrame(), (f"No comparison with the baseline: no finished run of {', '.join(absent)} in "
                                f"{out_dir} (03_baseline makes {baseline}'s).")
    pair = {v: groups[v] for v in (variant, baseline)}
    runs: Mapping[str, RunRecord] = {n: r for g in pair.values() for n, r in g.items()}
    table = differences_table(ApBootstrap(runs, n_resamples), pair, [(variant, baseline)])
    gaps = {v: sum(loss_gap(r) for r in g.values()) / len(g) for v, g in pair.items()}
    table["loss gap a"], table["loss gap b"] = gaps[variant], gaps[baseline]
    row = table.iloc[0]
    on = "AP" if row["compared on"] == "AP" else f"{AP_CAPPED} (AP with at most 50 detections per image, since "\
                                                 "the two keep different numbers of queries)"
    seeds = {v: len(g) for v, g in pair.items()}
    drawn = "validation images and training seeds" if max(seeds.values()) > 1 else "validation images"
    covers = (f"excludes 0: a difference the choice of {drawn} does not explain" if row["a - b excludes 0"]
              else f"includes 0: the choice of {drawn} could explain the difference")
    return table, (
        f"Against the baseline {baseline} ({seeds[baseline]} seed(s); {variant}: {seeds[variant]}), {variant}'s final "
        f"{on} differs by {row['a - b']:+.1f} points, 95% interval {row['a - b low']:+.1f} to {row['a - b high']:+.1f} "
        f"(paired bootstrap over the validation images{' and the seeds' if max(seeds.values()) > 1 else ''}); the "
        f"interval {covers}. Validation minus training final-layer loss at the final epoch: {gaps[variant]:+.3f} "
        f"for {variant}, {gaps[baseline]:+.3f} for {baseline}.")


def best_of(out_dir: str | Path, variants: list[str]) -> str:
    """Which of ``variants`` (e.g. 05's choices of 50 queries) ends with the highest final AP, by how much, in words:
    means over each variant's seeds, in percent, the others listed after it. The paired intervals of
    :func:`versus_baseline` say whether the lead is beyond sampling."""
    groups = by_variant(load_runs(out_dir))
    final = {v: 100 * sum(float(r.metrics.loc[r.final_epoch, "val_AP"]) for r in groups[v].values()) / len(groups[v])
             for v in variants if v in groups}
    if len(final) < 2:
        return f"Fewer than two of {', '.join(variants)} have finished runs in {out_dir}: nothing to rank."
    order = sorted(final, key=final.get, reverse=True)
    lead = final[order[0]] - final[order[1]]
    return (f"Highest final AP: {order[0]} ({final[order[0]]:.1f}, mean over its seeds), {lead:.1f} points above "
            f"{order[1]}; then " + ", ".join(f"{v} ({final[v]:.1f})" for v in order[1:]) + ".")
