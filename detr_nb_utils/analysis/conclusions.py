"""06_analysis's closing sentences: the rankings by the original study's total loss, by the depth-fair losses and by
AP, whether they disagree, and every variant's AP, gain and difference with its 95% interval. Every number and
ranking is read from the tables of :mod:`.comparison`; nothing is typed by hand.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import pandas as pd

from ..training.runs import RunRecord
from .comparison import ORIGINAL_STUDY_LOSS, original_study_table

DEMO_NOTE = ("These runs use RANDOM weights on synthetic demo data: the numbers exercise the pipeline and say "
             "nothing about DETR.")


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


def _depth_effect(records: Mapping[str, RunRecord], original: pd.DataFrame) -> list[str]:
    """How much of the deepest run's higher total loss is its depth: its total and its final-layer loss as
    multiples of the shallowest run's (one with the same number of queries when there is one)."""
    cfg = {n: r.config for n, r in records.items()}
    deep = max(cfg, key=lambda n: cfg[n].dec_layers)
    shallow = min(cfg, key=lambda n: (cfg[n].dec_layers, cfg[n].num_queries != cfg[deep].num_queries))
    if cfg[deep].dec_layers == cfg[shallow].dec_layers:
        return []
    ratio = original.loc[deep] / original.loc[shallow]
    return [f"The total sums one loss per decoder layer ({cfg[deep].dec_layers} against {cfg[shallow].dec_layers}): "
            f"{deep}'s total is {ratio['best total loss']:.2f}x {shallow}'s, its final-layer loss "
            f"{ratio['best final-layer loss']:.2f}x and its per-layer mean {ratio['best per-layer mean']:.2f}x."]


def ranking_conclusion(records: Mapping[str, RunRecord], missing: Iterable[str] = (),
               intervals: pd.DataFrame | None = None) -> str:
    """06's closing sentences: the rankings by the original study's total loss, by the depth-fair losses and by AP,
    whether they disagree, the fine-tuning gain of each run; every number read from the run folders.

    ``intervals`` (:func:`.comparison.finetuning_gain_table`): the best AP of each run is followed by its
    95% interval, and the gains are left to :func:`uncertainty_conclusion`, which gives
    them with theirs."""
    missing = list(missing)
    if len(records) < 2:
        return f"Fewer than two runs to compare (found {sorted(records) or 'none'}; missing {missing})."
    original = original_study_table(records)
    total, ap = original["best total loss"], original["best AP"]
    lines = [DEMO_NOTE] if any(bool(r.metrics["random_weights"].any()) for r in records.values()) else []
    if missing:
        lines.append(f"Missing run folders (not compared): {', '.join(missing)}.")
    lines.append(f"By the original study's metric, the lowest total validation loss: {_ranked(total, False, '.3f')}.")
    reported = {k: v for k, v in ORIGINAL_STUDY_LOSS.items() if k in records}
    if len(reported) == len(records):
        lines.append(f"The original study reported {_ranked(reported, False, '.2f')}.")
    lines.append(f"By final-layer loss: {_ranked(original['best final-layer loss'], False, '.3f')}; by per-layer mean "
                 f"loss: {_ranked(original['best per-layer mean'], False, '.3f')}.")
    with_ci = intervals is not None and "best AP low" in intervals and set(ap.index) <= set(intervals.index)
    ci = (" (95% intervals: " + ", ".join(f"{n} [{intervals.loc[n, 'best AP low']:.1f}, "
                                          f"{intervals.loc[n, 'best AP high']:.1f}]" for n in ap.index) + ")"
          if with_ci else "")
    lines.append(f"By COCO AP (best epoch): {_ranked(ap, True, '.1f')}{ci}.")
    lines.append(_agreement("total loss", -total.round(3), "final-layer loss",
                            -original["best final-layer loss"].round(3)))
    if ap.round(1).nunique() == 1:
        lines.append("AP does not separate the runs, so it can neither confirm nor contradict the total loss.")
    else:
        lines.append(_agreement("total loss", -total.round(3), "AP", ap.round(1)))
    lines += _depth_effect(records, original)
    if not with_ci:
        gains = {n: 100 * (r.metrics["val_AP"].max() - r.metrics.loc[0, "val_AP"]) for n, r in records.items()}
        lines.append("AP gained by fine-tuning over epoch 0 (points): "
                     + ", ".join(f"{n} {g:+.1f}" for n, g in gains.items()) + ".")
    return "\n".join(lines)


def _with_interval(row: pd.Series, prefix: str) -> str:
    return f"{row[prefix]:.1f} [{row[f'{prefix} low']:.1f}, {row[f'{prefix} high']:.1f}]"


def _differences_sentence(diffs: pd.DataFrame, what: str) -> list[str]:
    if diffs.empty:
        return []
    parts = [f"{d['a']} - {d['b']} {d['AP a - b']:+.1f} [{d['AP a - b low']:+.1f}, {d['AP a - b high']:+.1f}]"
             for _, d in diffs.iterrows()]
    larger = [f"{d['a']} - {d['b']}" for _, d in diffs.iterrows() if d["AP a - b excludes 0"]]
    verdict = (f"larger than its interval (the interval excludes 0): {', '.join(larger)}" if larger
               else "none is larger than its interval (every interval contains 0)")
    return [f"{what} (AP points, 95% interval): {'; '.join(parts)}. Of these, {verdict}."]


def uncertainty_conclusion(gains: pd.DataFrame, diffs: pd.DataFrame, query_diffs: pd.DataFrame,
                        equivalence: dict, seeds: pd.DataFrame, n_images: int, n_resamples: int) -> str:
    """The analysis' closing sentences with uncertainty: each variant's epoch-0 and best AP and its gain with
    their intervals, the layer-equivalence check, which differences exceed their interval, and the seeds' spread.
    Every number is read from the tables passed in."""
    if gains.empty:
        return "No run folder with saved detections: nothing to bootstrap."
    lines = [f"Intervals: 95% percentile bootstrap over the {n_images} validation images ({n_resamples} "
             "resamples, paired for differences)."]
    for name, r in gains.iterrows():
        s = f"{name}: epoch-0 AP {_with_interval(r, 'epoch-0 AP')}"
        if "best AP" in r and not pd.isna(r.get("best AP")):
            s += (f", best AP {_with_interval(r, 'best AP')} (epoch {int(r['best epoch'])}), gain over its own "
                  f"epoch 0 {r['gain']:+.1f} [{r['gain low']:+.1f}, {r['gain high']:+.1f}]"
                  f" ({'larger than' if r['gain excludes 0'] else 'within'} its interval)")
        lines.append(s + ".")
    if equivalence:
        e = equivalence
        same = e["abs_diff"] < 5e-5
        lines.append(f"At epoch 0 the {e['layers']}-layer model's AP ({100 * e['shallow_AP']:.2f}) "
                     f"{'equals' if same else 'differs from'} the 6-layer model's layer-{e['layers']} AP "
                     f"({100 * e['deep_layer_AP']:.2f}; difference {100 * e['abs_diff']:.4f} points)"
                     + (": the cut decoder starts where the full one was after that layer." if same else "."))
    lines += _differences_sentence(diffs, "Differences between the variants at their best epochs")
    lines += _differences_sentence(query_diffs, "Which 50 queries, best epochs")
    multi = seeds[seeds[("best AP", "seeds")] > 1] if not seeds.empty else seeds
    if len(multi):
        lines.append("Best AP over seeds (mean ± sample std, n): " + ", ".join(
            f"{v} {r[('best AP', 'mean')]:.1f} ± {r[('best AP', 'std')]:.1f} (n={int(r[('best AP', 'seeds')])})"
            for v, r in multi.iterrows()) + ".")
    return "\n".join(lines)
