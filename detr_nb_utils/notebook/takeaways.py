"""The takeaways a student reads at the end of notebooks 01, 03, 04, 05 and 07: a few computed lines each, in
Markdown, the demo's note once (:func:`show_takeaway`), every number from the data the notebook just made.

- 01: the split's largest category-share gap against its yardstick, the same gap over random splits of the same
  images (:func:`split_lines`);
- 03 and 07: how much fine-tuning gained or lost with its paired interval, and why a loss is what this recipe does
  to a converged checkpoint, with what the recipe arms measured (:func:`finetune_lines`);
- 04: the sign of a difference said in words (:func:`sign_line`);
- 05: the best choice of 50 queries after fine-tuning, in one line (:func:`best_line`), and the most-matched choice
  with no training against the fine-tuned first 50 (:func:`untrained_line`, on
  :func:`~detr_nb_utils.analysis.baseline.untrained_choice`).

The findings come from :mod:`detr_nb_utils.analysis`; 07's change on your own validation images from
:func:`~detr_nb_utils.analysis.own_data.run_change`.
"""
from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..analysis.findings import Finding, interval_verdict
from ..data.split import CROWDED_THRESHOLD, largest_share_gap
from ..training.recipe import ORIGINAL, RECIPES
from .tables import save_takeaway

#: the width the takeaway's Markdown source is wrapped at
WIDTH = 110


def takeaway_markdown(lines: Sequence[str], note: str = "") -> str:
    """``lines`` as a Markdown bullet list, each wrapped at :data:`WIDTH` and set apart by a blank line (each bullet
    reads as its own short paragraph), after ``note`` (the demo's, once) in italics; empty lines are left out."""
    wrap = {"width": WIDTH, "break_on_hyphens": False, "break_long_words": False}  # "fine-tuning" stays whole
    head = textwrap.fill(f"*{note}*", **wrap) + "\n\n" if note else ""
    bullets = [textwrap.fill(line, initial_indent="- ", subsequent_indent="  ", **wrap) for line in lines if line]
    return head + "\n\n".join(bullets) + "\n"


def show_takeaway(lines: Sequence[str], name: str, report_dir: str | Path, note: str = ""):
    """Save the takeaway's lines (:func:`takeaway_markdown`) as ``<report_dir>/tables/<name>.md``, where
    :func:`.tables.save_takeaway` opens them with the demo's stamp, and return them after ``note`` for the notebook
    to display as Markdown: the demo is said once in each place."""
    from IPython.display import Markdown

    save_takeaway(takeaway_markdown(lines), name, report_dir)
    return Markdown(takeaway_markdown(lines, note))


def _interval(value: float, low: float, high: float) -> str:
    return f"{value:+.1f} points [{low:+.1f}, {high:+.1f}]"


# ---- 01 -------------------------------------------------------------------------------------------------------


def split_lines(summary: pd.DataFrame, diversity: pd.DataFrame, gaps: np.ndarray) -> list[str]:
    """01's takeaway: the split's sizes, its largest category-share gap (:func:`~detr_nb_utils.data.split.
    largest_share_gap`) placed among ``gaps`` (:func:`~detr_nb_utils.data.split.random_split_gaps`, the same
    statistic over random splits of the same images), and the crowded images."""
    gap, name = largest_share_gap(diversity)
    present = diversity[diversity["source"] > 0]
    n_train, n_val = summary.loc["train", "images"], summary.loc["val", "images"]
    below = 100 * float(np.mean(gaps < gap))
    typical = np.percentile(gaps, [50, 95])
    verdict = ("within what a random split gives: the split keeps the source's mix as well as chance does"
               if gap <= typical[1] else "beyond 95% of random splits: the mix is kept worse than chance keeps it")
    over = f"images > {CROWDED_THRESHOLD} boxes"
    return [f"The split holds {n_train} training and {n_val} validation images ({summary.loc['train', 'boxes']} and "
            f"{summary.loc['val', 'boxes']} boxes); {int((present['val'] > 0).sum())} of the source's "
            f"{len(present)} categories appear in val.",
            f"Largest gap between a category's share of the val boxes and its share of the source's: {gap:.2f} "
            f"points ({name}). Yardstick: over {len(gaps)} random {n_train}/{n_val} splits of the same images the "
            f"same gap has median {typical[0]:.2f} and 95th percentile {typical[1]:.2f} points; ours is larger than "
            f"{below:.0f}% of them, {verdict}.",
            f"{summary.loc['val', over]} validation images hold more than {CROWDED_THRESHOLD} objects, which a "
            f"{CROWDED_THRESHOLD}-query model cannot all detect."]


# ---- 03, 07 ---------------------------------------------------------------------------------------------------


def _final_change(table: pd.DataFrame, arm: str) -> tuple[float, float, float] | None:
    if arm not in table.index or math.isnan(table.loc[arm, "final change"]):
        return None
    r = table.loc[arm]
    return float(r["final change"]), float(r["final change low"]), float(r["final change high"])


def restart_words(lr: float, lr_backbone: float) -> str:
    """Why fine-tuning a converged checkpoint with the original recipe can lose AP, with the rates computed."""
    done = RECIPES["checkpoint_rates"]
    rate = lambda x: f"{x:.0e}".replace("e-0", "e-")  # noqa: E731 (1e-4, as the recipe is written)
    return (f"the checkpoint had converged at learning rate {rate(done['lr'])} (backbone {rate(done['lr_backbone'])}),"
            f" and the recipe restarts it at {lr / done['lr']:.0f}x that ({rate(lr)}, backbone {rate(lr_backbone)}) "
            "with a fresh AdamW state, so every weight moves at every step")


#: 04's and 05's line on a loss of AP: 03 says why and measures it, so they point there instead of saying it again
WHY_IN_03 = "A loss is the recipe's, not a broken setup: 03's takeaway says why, and 03_recipe_arms measures it."

#: how to measure the recipe's part in a loss, when no arm ran beside it
ARMS_HINT = ("The recipe arms test it: run 03 with `-p recipe_arms '[\"checkpoint_rates\", \"warmup\"]'` (the "
             "checkpoint's own rates; the original rates reached by a warm-up).")


def finetune_lines(variant: str, table: pd.DataFrame, findings: Sequence[Finding], recipe: str, lr: float,
                   lr_backbone: float, where: str = "03_recipe_arms", hint: str = ARMS_HINT,
                   why: str | None = None) -> list[str]:
    """03's (and 07's) takeaway on fine-tuning, from :func:`~detr_nb_utils.notebook.fine_tune.change_findings`
    (``table``, ``findings``): the change of AP from epoch 0 to the final epoch under ``recipe`` with its 95%
    interval and verdict; when it is a loss, why this recipe loses AP (:func:`restart_words`, the run's rates
    ``lr``, ``lr_backbone``), and what the other recipe arms of ``table`` measured (saved as ``where``), or how to
    measure it when none ran (``hint``). ``why``: the line on a loss instead of :func:`restart_words`' (04 and 05
    point to 03's)."""
    change = _final_change(table, recipe)
    if change is None:
        return [f"{variant}: no fine-tuned epoch with saved detections under recipe {recipe!r}, so no change to "
                "report."]
    value, low, high = change
    seeds = int(table.loc[recipe, "seeds"])
    cover = next((f.covers for f in findings if f"recipe {recipe} (" in f.claim and f.covers), f"{seeds} seeds")
    verdict = interval_verdict(low, high)
    what = {"beyond sampling": "a loss beyond sampling" if value < 0 else "a gain beyond sampling",
            "within sampling": "within sampling: it cannot be told from no change"}.get(verdict, "no interval")
    lines = [f"Fine-tuning {variant} with recipe {recipe!r} changed AP by {_interval(value, low, high)} from epoch 0 "
             f"(AP {table.loc[recipe, 'epoch-0 AP']:.1f}) to the final epoch (95% interval over {cover}): {what}."]
    if value < 0:
        lines.append(why or f"A loss is not a broken setup: {restart_words(lr, lr_backbone)}.")
    others = [a for a in table.index if a != recipe and _final_change(table, a) is not None]
    if others:
        versus = {f.data.get("label", "").split(",")[0]: f for f in findings if " - " in f.data.get("label", "")}
        parts = []
        for arm in others:
            text = f"{arm} {_interval(*_final_change(table, arm))}"
            v = versus.get(f"{arm} - {ORIGINAL}")
            if v is not None and recipe == ORIGINAL and v.has_interval:
                text += f" (minus the original {_interval(v.value, v.low, v.high)})"
            parts.append(text)
        lines.append(f"The recipe arms measure it ({where}), change from epoch 0 to the final epoch: "
                     + "; ".join(parts) + ".")
    elif value < 0:
        lines.append(hint)
    return lines


# ---- 04 -------------------------------------------------------------------------------------------------------


def sign_line(smaller: str, larger: str, how: str) -> str:
    """How a difference is signed, in words: ``smaller - larger``, ``how`` says what ``smaller`` is."""
    return (f"Differences are signed {smaller} - {larger} ({how}): negative means {smaller} scores lower.")


# ---- 05 -------------------------------------------------------------------------------------------------------


def untrained_line(f: Finding, choice: str) -> str:
    """05's sentence on :func:`~detr_nb_utils.analysis.baseline.untrained_choice`."""
    if math.isnan(f.value):
        return f"{f.claim}: {f.why}."
    words = {"beyond sampling": ("beat" if f.value > 0 else "lose to") + " fine-tuning beyond sampling",
             "within sampling": "cannot be told from fine-tuning"}.get(f.verdict, "have no interval")
    return (f"Picking the {choice} queries with no training gives AP {f.data['untrained']:.1f}; fine-tuning the "
            f"first 50 gives {f.data['trained']:.1f}: a difference of {_interval(f.value, f.low, f.high)} (95% "
            f"interval over {f.covers}): the {choice} queries untrained {words}.")


def best_line(best: Finding) -> str:
    """05's sentence on :func:`~detr_nb_utils.analysis.baseline.best_of`: which choice ends highest, and whether the
    paired differences (Holm-adjusted, in the table) tell it from the others."""
    if math.isnan(best.value):
        return f"{best.claim}: {best.why}."
    tied = best.data.get("tied", [])
    words = (f"tied with {', '.join(tied)} (the Holm-adjusted paired differences cannot tell them apart)" if tied
             else "ahead of every other choice beyond sampling (Holm-adjusted paired differences)")
    others = ", ".join(f"{v} {ap:.1f}" for v, ap in best.data["final AP"].items() if v != best.data["leader"])
    return (f"Fine-tuned, {best.data['leader']} ends highest with AP {best.value:.1f} (mean over its seeds; "
            f"{others}): {words}.")
