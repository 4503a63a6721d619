"""Why fine-tuning loses AP: the recipe arms of a variant compared (03), and whether the decoders' ranking holds
under each arm (06).

The original study's recipe restarts a converged checkpoint at ten times the rate it finished at, with a fresh AdamW
state. The declared recipe arms (:mod:`detr_nb_utils.training.recipe`) change only that: ``checkpoint_rates``
continues at the checkpoint's own final rates, ``warmup`` ramps up to the original rates. Every arm starts from the
same epoch 0, so the change from epoch 0 to the first fine-tuned epoch shows the shock itself, and the arms'
differences at the first and the final epoch (paired: the same resampled images) say which recipe keeps more.
Findings (:class:`.findings.Finding`) with 95% bootstrap intervals; AP in points.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

from ..training.recipe import ORIGINAL
from ..training.runs import RunRecord
from .run_bootstrap import ApBootstrap, covers, runs_of
from .comparison import VARIANT_PAIRS, by_variant, differences_table
from .findings import Finding, interval_verdict


def _finding(claim: str, d: dict | None, n_images: int, seeds: int, **extra) -> Finding:
    if d is None:
        return Finding(claim, math.nan, why="no saved detections for it")
    return Finding(claim, 100 * d["point"], 100 * d["low"], 100 * d["high"], covers(n_images, seeds),
                   interval_verdict(d["low"], d["high"]), **extra)


def _spread(d: dict | None) -> str:
    """The seeds' spread beside an interval that does not redraw them (fewer than three seeds)."""
    if d is None or d.get("seeds_resampled", True) or d.get("seeds", 1) < 2:
        return ""
    return f"the {d['seeds']} seeds' values: " + ", ".join(f"{100 * v:+.1f}" for v in d["per_seed"])


def arm_table(bootstrap: ApBootstrap, families: Mapping[str, Mapping[str, RunRecord]],
              variant: str = "dec6_q100") -> tuple[pd.DataFrame, list[Finding]]:
    """Per recipe arm that has runs of ``variant`` (``families``: :func:`.comparison.by_recipe`): its seeds, AP at
    epoch 0, the change from epoch 0 to the first fine-tuned epoch and to the final epoch, and the arm minus the
    original at the first and at the final epoch, each with its 95% interval (points). Returns the table and the
    findings, the changes first."""
    arms = {arm: runs_of(by_variant(f)[variant]) for arm, f in families.items() if variant in by_variant(f)}
    n, rows, changes, versus = len(bootstrap.img_ids), {}, [], []
    for arm, group in arms.items():
        key = f"{variant}/{arm}"  # the seeds' draws are the arm's own
        stats = {q: bootstrap.stat(key, group, q) for q in ("epoch 0", "first change", "change")}
        one_epoch = all(r.final_epoch == 1 for r in group)  # the first fine-tuned epoch is the final one
        for q, words in (("first change", "first fine-tuned epoch"), ("change", "final epoch"))[:2 - one_epoch]:
            last = 1 if q == "first change" else group[0].final_epoch
            changes.append(_finding(f"{variant}, recipe {arm} ({len(group)} seeds): AP change from epoch 0 to the "
                                    f"{words}", stats[q], n, len(group), why=_spread(stats[q]),
                                    data={"label": f"{arm}: epoch {last} - epoch 0"}))
        row = {"seeds": len(group), "epoch-0 AP": 100 * stats["epoch 0"]["point"] if stats["epoch 0"] else math.nan}
        for q, col in (("first change", "epoch-1 change"), ("change", "final change")):
            d = stats[q]
            row |= {col: math.nan, f"{col} low": math.nan, f"{col} high": math.nan} if d is None else {
                col: 100 * d["point"], f"{col} low": 100 * d["low"], f"{col} high": 100 * d["high"]}
        if arm != ORIGINAL and ORIGINAL in arms:
            for q, words in (("first", "first fine-tuned epoch"), ("final", "final epoch"))[:2 - one_epoch]:
                d = bootstrap.diff((key, group), (f"{variant}/{ORIGINAL}", arms[ORIGINAL]), q)
                at = 1 if q == "first" else group[0].final_epoch
                versus.append(_finding(f"{variant}, recipe {arm} minus recipe {ORIGINAL}, AP at the {words}", d, n,
                                       min(len(group), len(arms[ORIGINAL])),
                                       data={"label": f"{arm} - {ORIGINAL}, epoch {at}"}))
                if d is not None:
                    row[f"minus original, {words}"] = 100 * d["point"]
        rows[arm] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("recipe"), changes + versus


def best_arm(findings: list[Finding]) -> str | None:
    """The arm whose first fine-tuned epoch loses least AP (highest change), from :func:`arm_table`'s findings;
    None when no arm has one."""
    first = {f.claim.split("recipe ")[1].split(" (")[0]: f.value for f in findings
             if "to the first fine-tuned epoch" in f.claim and not math.isnan(f.value)}
    return max(first, key=first.get) if first else None


def _mean_final(group) -> float:
    return float(pd.Series([r.metrics.loc[r.final_epoch, "val_AP"] for r in runs_of(group)]).mean())


def ranking_under_arms(bootstrap: ApBootstrap, families: Mapping[str, Mapping[str, RunRecord]]) -> list[Finding]:
    """For each recipe arm other than the original: whether the decoders' order by final AP is the original's,
    and the arm's pairwise differences (the decoder family, Holm-adjusted). An arm with fewer than two variants
    says so: no ranking to check."""
    headline = {v for pair in VARIANT_PAIRS for v in pair}
    original = by_variant(families.get(ORIGINAL, {}))
    order = {v: _mean_final(g) for v, g in original.items() if v in headline}
    out = []
    for arm, family in families.items():
        if arm == ORIGINAL:
            continue
        groups = {v: g for v, g in by_variant(family).items() if v in headline}
        if len(groups) < 2:
            out.append(Finding(f"the decoders' ranking under recipe {arm}", math.nan, why=(
                f"only {', '.join(groups) or 'no variant'} ran with it: no ranking to check (04 and 05 with "
                f"-p recipe {arm} make the others)")))
            continue
        diffs = differences_table(bootstrap, groups, VARIANT_PAIRS)
        ranked = sorted(groups, key=lambda v: -_mean_final(groups[v]))
        before = [v for v in sorted(order, key=lambda v: -order[v]) if v in groups]
        real = diffs[diffs["excludes 0 (Holm)"]]
        same = ranked == before
        out.append(Finding(f"the decoders' ranking by final AP under recipe {arm}: {' > '.join(ranked)}", math.nan,
                           why=("the same order as under the original recipe" if same else
                                f"the original recipe orders them {' > '.join(before)}")
                           + "; differences beyond sampling after Holm's adjustment: "
                           + (", ".join(f"{r['a']} - {r['b']} {r['a - b']:+.1f} [{r['a - b low']:+.1f}, "
                                        f"{r['a - b high']:+.1f}]" for _, r in real.iterrows()) or "none"),
                           data={"same order": same, "differences": diffs}))
    return out
