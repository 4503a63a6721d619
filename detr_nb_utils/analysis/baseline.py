"""A variant against the baseline, the best of several choices, and a choice of queries untrained against the
fine-tuned first 50 (:func:`untrained_choice`), for the takeaways of 04 and 05: the final AP
difference with its paired 95% interval, read from the question's Holm family (:data:`.comparison.VARIANT_PAIRS`,
:data:`.comparison.QUERY_PAIRS`) exactly as 06 computes it, and each model's gap between validation and training loss.
Runs of the notebook's recipe only (:func:`.comparison.by_recipe`). Returns :class:`~.findings.Finding`s; reads the
run folders, never trains. 06 makes the full comparison.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from ..models.loss import loss_views, weight_dict
from ..training.recipe import ORIGINAL
from ..training.runs import RunRecord
from .bootstrap import percentile_interval
from .run_bootstrap import ApBootstrap, covers, runs_of
from .comparison import AP_CAPPED, QUERY_PAIRS, VARIANT_PAIRS, VARIANTS, by_recipe, by_variant, differences_table, \
    load_runs
from .findings import Finding, interval_verdict

BASELINE = "dec6_q100"


def loss_gap(record: RunRecord) -> float:
    """Final-layer loss at the final epoch, validation minus training (the training loss is the epoch's mean, with
    dropout and augmentation on): positive when the model does worse on images it did not train on."""
    m, layers, weights = record.metrics, record.config.dec_layers, weight_dict(record.config.dec_layers)
    final = {side: loss_views({k: m.loc[record.final_epoch, f"{side}_{k}"] for k in weights}, weights,
                              layers)["loss_final"] for side in ("val", "train")}
    return float(final["val"] - final["train"])


def family_of(variant: str) -> tuple[tuple[str, str], ...]:
    """The Holm family of the question ``variant`` answers: which decoder, or which 50 queries."""
    return VARIANT_PAIRS if variant in VARIANTS else QUERY_PAIRS


def family_table(out_dir: str | Path, pairs: Sequence[tuple[str, str]], n_resamples: int = 1000,
                 recipe: str = ORIGINAL) -> tuple[pd.DataFrame, dict]:
    """:func:`~.comparison.differences_table` of the family ``pairs`` on the runs of ``recipe`` under ``out_dir``
    (what 06 computes for it), and the variants' groups."""
    family = by_recipe(load_runs(out_dir)).get(recipe, {})
    groups = by_variant(family)
    wanted = {v for pair in pairs for v in pair}
    present = {v: g for v, g in groups.items() if v in wanted}
    runs = {n: r for g in present.values() for n, r in g.items()}
    return differences_table(ApBootstrap(runs, n_resamples), present, pairs) if len(present) > 1 else \
        pd.DataFrame(), present


def _oriented(table: pd.DataFrame, a: str, b: str) -> pd.Series | None:
    """The family's row of the pair {a, b}, as a - b (a flipped row negates the difference and its interval)."""
    for _, row in table.iterrows():
        if (row["a"], row["b"]) == (a, b):
            return row
        if (row["a"], row["b"]) == (b, a):
            flipped = row.copy()
            flipped["a"], flipped["b"] = a, b
            for k in ("a - b", "AP a - b", f"{AP_CAPPED} a - b"):
                flipped[k] = -row[k]
            flipped["a - b low"], flipped["a - b high"] = -row["a - b high"], -row["a - b low"]
            return flipped
    return None


def _holm_words(table: pd.DataFrame, row: pd.Series) -> str:
    bound = table.attrs.get("holm") == "bound"
    return (f"p {row['p']:.3f}; Holm-adjusted over the family of {table.attrs['family']} pairs "
            f"{'at most ' if bound else ''}{row['p Holm']:.3f}"
            + (" (an upper bound until every pair of the family has runs; 06 gives the exact value)" if bound else ""))


def pair_finding(table: pd.DataFrame, groups: dict, a: str, b: str, n_images: int) -> Finding | None:
    """``a - b`` at the final epoch from a family table, as a :class:`~.findings.Finding` (None: not in it)."""
    row = _oriented(table, a, b) if len(table) else None
    if row is None:
        return None
    seeds = {v: len(runs_of(groups[v])) for v in (a, b)}
    drawn = covers(n_images, seeds)
    on = "AP" if row["compared on"] == "AP" else AP_CAPPED
    return Finding(f"{a} - {b}, final {on} ({seeds[a]} and {seeds[b]} seeds)", row["a - b"], row["a - b low"],
                   row["a - b high"], drawn, interval_verdict(row["a - b low"], row["a - b high"]),
                   _holm_words(table, row), data={"p": row["p"], "p Holm": row["p Holm"], "compared on": on})


def versus_baseline(out_dir: str | Path, variant: str, n_resamples: int = 1000, baseline: str = BASELINE,
                    recipe: str = ORIGINAL) -> tuple[pd.DataFrame, list[Finding]]:
    """``variant`` (every seed's run folder of ``recipe`` under ``out_dir``) against ``baseline``: its row of the
    question's Holm family (:func:`family_of`, oriented ``variant - baseline``) with the mean ``loss gap``
    (:func:`loss_gap`) of each, and the findings: the difference (on AP, or on AP@50det when the query counts differ),
    and the two loss gaps. Without the baseline's runs the table is empty and the finding says which notebook makes
    them."""
    table, groups = family_table(out_dir, family_of(variant), n_resamples, recipe)
    if variant not in groups or baseline not in groups:
        absent = [v for v in (variant, baseline) if v not in groups]
        return pd.DataFrame(), [Finding(f"{variant} against {baseline}", math.nan, why=(
            f"no finished run of {', '.join(absent)} with recipe {recipe!r} in {out_dir} (03_baseline makes "
            f"{baseline}'s)"))]
    n_images = int(table.attrs["n_images"])
    found = pair_finding(table, groups, variant, baseline, n_images)
    gaps = {v: sum(loss_gap(r) for r in runs_of(groups[v])) / len(runs_of(groups[v])) for v in (variant, baseline)}
    row = _oriented(table, variant, baseline).to_frame().T.assign(**{"loss gap a": gaps[variant],
                                                                       "loss gap b": gaps[baseline]})
    gap = Finding(f"validation minus training final-layer loss at the final epoch ({baseline}: "
                  f"{gaps[baseline]:+.3f}), {variant}", gaps[variant], unit="", decimals=3, why="means over the seeds; the "
                  "training loss is the epoch's mean with augmentation on, so no paired interval")
    return row.reset_index(drop=True), [found, gap]


def best_of(out_dir: str | Path, variants: Sequence[str], n_resamples: int = 1000,
            recipe: str = ORIGINAL) -> Finding:
    """Which of ``variants`` (05's choices of 50 queries) ends with the highest final AP (mean over its seeds), told
    through the paired differences of its Holm family (:data:`.comparison.QUERY_PAIRS`): a choice whose difference
    from the leader is within sampling after Holm's adjustment is tied with it, and named. ``data``: ``leader``,
    ``tied``, ``pairs`` (the leader minus each other choice, :class:`~.findings.Finding`)."""
    pairs = tuple((a, b) for a, b in QUERY_PAIRS if a in variants and b in variants) or \
        tuple((a, b) for i, a in enumerate(variants) for b in variants[i + 1:])
    table, groups = family_table(out_dir, pairs, n_resamples, recipe)
    if len(groups) < 2:
        return Finding(f"the best of {', '.join(variants)}", math.nan, why=f"fewer than two of them have finished "
                       f"runs with recipe {recipe!r} in {out_dir}: nothing to rank")
    final = {v: 100 * sum(float(r.metrics.loc[r.final_epoch, "val_AP"]) for r in runs_of(g)) / len(runs_of(g))
             for v, g in groups.items()}
    leader = max(final, key=final.get)
    n_images = int(table.attrs["n_images"])
    against = [f for v in final if v != leader and (f := pair_finding(table, groups, leader, v, n_images))]
    tied = [f.claim.split(" - ")[1].split(",")[0] for f in against if f.data["p Holm"] >= 0.05]
    verdict = (f"tied with {', '.join(tied)}: the paired differences after Holm's adjustment cannot tell "
               f"{'them' if len(tied) > 1 else 'it'} from {leader}" if tied else
               "ahead of every other choice beyond sampling after Holm's adjustment")
    return Finding(f"the highest final AP of {', '.join(final)}: {leader}", final[leader], signed=False, unit="AP",
                   verdict="no interval", why=verdict + "; " + "; ".join(f.text().rstrip(".") for f in against),
                   data={"leader": leader, "tied": tied, "pairs": against, "final AP": final})


def untrained_choice(untrained: RunRecord, trained: Mapping[str, RunRecord], n_resamples: int = 1000) -> Finding:
    """AP of ``untrained``'s epoch 0 (a choice of queries, nothing trained) minus the final AP of the ``trained``
    runs (e.g. the first 50 queries fine-tuned, mean over their seeds), paired on the same resampled validation
    images (and the seeds, from three): does picking the queries beat fine-tuning them?"""
    boot = ApBootstrap({untrained.run_dir.name: untrained, **trained}, n_resamples)
    a = boot.quantity(untrained, "epoch 0")
    b = boot.combine_seeds("trained", [boot.quantity(r, "final") for r in trained.values()])
    claim = f"{untrained.run_dir.name} at epoch 0 (no training) minus the fine-tuned {len(trained)} runs' final AP"
    if a is None or b is None:
        return Finding(claim, math.nan, why="a run lacks its saved detections")
    d = percentile_interval(a[0] - b[0], a[1] - b[1])
    return Finding(claim, 100 * d["point"], 100 * d["low"], 100 * d["high"], covers(len(boot.img_ids), len(trained)),
                   interval_verdict(d["low"], d["high"]), data={"untrained": 100 * a[0], "trained": 100 * b[0]})
