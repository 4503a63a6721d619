"""06_analysis's closing sentences, rendered from data: the rankings (:func:`rankings`, one :class:`Ranking` per
criterion: the original study's lowest total loss, the three losses, AP and AP@50det at the final epoch) and the
pairs two rankings order the other way round (:func:`agreements`), every variant's AP and signed change from its
own epoch 0 with their intervals, the Holm-adjusted differences, and what each interval covers. Every number and
ranking is read from the tables of :mod:`.comparison`; nothing is typed by hand. The sentences say when a statistic
is degenerate: tied rankings, fewer than :data:`MIN_IMAGES` validation images, zero-width intervals.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .bootstrap import MIN_SEEDS_RESAMPLED, Groups, runs_of
from .comparison import AP_CAPPED, CAP, ORIGINAL_STUDY_LOSS, final_losses, original_study_table

TINY_NOTE = ("These runs are the demo world: a tiny DETR pre-trained on synthetic shapes, fine-tuned and compared on "
             "a synthetic mini-COCO as the study does DETR-R50 on COCO. The numbers measure that small detector; they "
             "say nothing about DETR-R50 on COCO.")


def world_note(backbone: str) -> str:
    """The sentence that opens a takeaway whose numbers are not the study's: :data:`TINY_NOTE` for the demo world's
    tiny DETR (``backbone == "tiny"``), else ``""``."""
    return TINY_NOTE if backbone == "tiny" else ""


def runs_note(records: Iterable) -> str:
    """:func:`world_note` of the first run folder (:class:`~detr_nb_utils.training.runs.RunRecord`) that needs one."""
    notes = (world_note(r.config.backbone) for r in records)
    return next((n for n in notes if n), "")
#: below this many validation images the conclusions call AP and its intervals degenerate
MIN_IMAGES = 100


@dataclass(frozen=True)
class Ranking:
    """Variants ordered by one criterion: ``values`` (variant -> value), ``higher_is_better``, and the ``decimals``
    printed: values equal as printed are ties. ``criterion`` names it in full, ``short`` (default: the same) where
    a sentence names two."""

    criterion: str
    values: Mapping[str, float]
    higher_is_better: bool
    decimals: int
    short: str = ""

    @property
    def name(self) -> str:
        return self.short or self.criterion

    def _key(self, v: str) -> float:
        x = round(float(self.values[v]), self.decimals)
        return -x if self.higher_is_better else x

    @property
    def tiers(self) -> list[list[str]]:
        """The variants best first, ties (equal as printed) in one tier; NaN values left out."""
        known = sorted((v for v in self.values if not math.isnan(self.values[v])), key=self._key)
        return [list(g) for _, g in itertools.groupby(known, key=self._key)]

    @property
    def ranks(self) -> dict[str, int]:
        """Variant -> rank, 1 the best; tied variants share the better rank."""
        out, n = {}, 1
        for tier in self.tiers:
            out |= dict.fromkeys(tier, n)
            n += len(tier)
        return out

    @property
    def ties(self) -> list[list[str]]:
        return [t for t in self.tiers if len(t) > 1]

    def text(self) -> str:
        """``"a (1.0) > b = c (0.5)"``: ``<`` when lower is better."""
        sep = " > " if self.higher_is_better else " < "
        return sep.join(" = ".join(f"{v} ({self.values[v]:.{self.decimals}f})" for v in t) for t in self.tiers)


def rankings(groups: Groups, headline: pd.DataFrame | None = None) -> dict[str, Ranking]:
    """The rankings 06 reports, by key: ``original`` (the original study's criterion: lowest total val loss over
    the fine-tuned epochs), ``total``, ``final_layer``, ``layer_mean`` (the losses at the final epoch), ``AP`` (at
    the final epoch; the headline's mean over seeds when ``headline`` is given) and, with ``headline``,
    ``AP@50det``. Values are means over each variant's seeds."""
    original, final = original_study_table(groups), final_losses(groups)
    out = {"original": Ranking("the original study's criterion, the lowest total validation loss over the "
                               "fine-tuned epochs", original["best total loss"].to_dict(), False, 3,
                               "the original study's criterion"),
           "total": Ranking("total loss", final["loss_total"].to_dict(), False, 3),
           "final_layer": Ranking("final-layer loss", final["loss_final"].to_dict(), False, 3),
           "layer_mean": Ranking("per-layer mean loss", final["loss_layer_mean"].to_dict(), False, 3)}
    ap = headline["AP"] if headline is not None and "AP" in headline else original["final AP"]
    out["AP"] = Ranking("COCO AP", ap.to_dict(), True, 1)
    if headline is not None and AP_CAPPED in headline:
        out[AP_CAPPED] = Ranking(f"AP at {CAP} detections per image", headline[AP_CAPPED].to_dict(), True, 1)
    return out


def ranking_table(ranked: Mapping[str, Ranking]) -> pd.DataFrame:
    """Variants (rows) by criterion (columns): the rank, 1 the best, ties sharing it."""
    order = list(next(iter(ranked.values())).values) if ranked else []
    return pd.DataFrame({k: pd.Series(r.ranks, dtype="Int64") for k, r in ranked.items()},
                        index=order).rename_axis("variant")


def discordant(first: Ranking, second: Ranking) -> list[tuple[str, str]]:
    """Pairs ``(a, b)`` that ``first`` ranks strictly above ``b`` and ``second`` strictly below (ties are ties)."""
    r1, r2 = first.ranks, second.ranks
    return [(a, b) for a in r1 for b in r1 if b in r2 and a in r2 and r1[a] < r1[b] and r2[a] > r2[b]]


#: the pairs of rankings whose agreement 06 states
AGREEMENTS = (("total", "final_layer"), ("total", "AP"), ("original", "AP"))


def agreements(ranked: Mapping[str, Ranking]) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """For each pair of :data:`AGREEMENTS` present: the pairs of variants the two rankings order the other way
    round (empty: they agree)."""
    return {(a, b): discordant(ranked[a], ranked[b]) for a, b in AGREEMENTS if a in ranked and b in ranked}


def _agreement_sentence(first: Ranking, second: Ranking, flips: list[tuple[str, str]],
                        noise: Mapping[tuple[str, str], str] | None = None) -> str:
    """Whether two rankings agree; a flipped pair whose ``second``-ranking difference is within the noise
    (``noise[(x, y)]``: why, from :func:`_noise`) is named as such, not called a disagreement."""
    a, b, noise = first.name, second.name, noise or {}
    if not flips:
        return f"The rankings by {a} and by {b} agree (no pair of variants is ordered the other way round)."
    real = [(x, y) for x, y in flips if (x, y) not in noise]
    within = [(x, y) for x, y in flips if (x, y) in noise]
    parts = []
    if real:
        parts.append(f"The rankings by {a} and by {b} DISAGREE: "
                     + "; ".join(f"{a} puts {x} above {y}, {b} puts {y} above {x}" for x, y in real) + ".")
    if within:
        parts.append(f"{a.capitalize()} and {b} order " + "; ".join(
            f"{x} and {y} the other way round, but {noise[(x, y)]}" for x, y in within)
            + ": not a disagreement these runs can show.")
    return " ".join(parts)


def _noise(groups: Groups, criterion: str, x: str, y: str, diffs: pd.DataFrame | None) -> str | None:
    """Why the difference between ``x`` and ``y`` by ``criterion`` ("AP" or "final_layer") is within the noise,
    or None when it is not (or cannot be told): AP, the paired difference of ``diffs`` (a
    :func:`.comparison.differences_table`) does not exclude 0 after Holm's adjustment (before it, for a table
    without one); final-layer loss, the two means differ by less than the sum
    of their seeds' standard deviations (two seeds or more each)."""
    if criterion == "AP" and diffs is not None and len(diffs):
        rows = diffs[((diffs["a"] == x) & (diffs["b"] == y)) | ((diffs["a"] == y) & (diffs["b"] == x))]
        column = "excludes 0 (Holm)" if "excludes 0 (Holm)" in rows else "a - b excludes 0"
        if len(rows) and not bool(rows.iloc[0][column]):
            r = rows.iloc[0]
            held = f", p {r['p Holm']:.3f} after Holm's adjustment" if "p Holm" in rows else ""
            return (f"their {r['compared on']} difference {r['a']} - {r['b']}, {r['a - b']:+.1f} points "
                    f"[{r['a - b low']:+.1f}, {r['a - b high']:+.1f}]{held}, is not beyond sampling")
    if criterion == "final_layer":
        losses = {v: [float(r.metrics.loc[r.final_epoch, "val_loss_final"]) for r in runs_of(groups[v])]
                  for v in (x, y)}
        if all(len(v) > 1 for v in losses.values()):
            gap = abs(np.mean(losses[x]) - np.mean(losses[y]))
            spread = sum(float(np.std(v, ddof=1)) for v in losses.values())
            if gap < spread:
                return (f"their final-layer losses differ by {gap:.3f}, less than their seeds' spread "
                        f"(standard deviations summed: {spread:.3f})")
    return None


def change_words(points: float, decimals: int = 1) -> str:
    """A signed AP change in words: "gained 1.2 points", "lost 0.8 points", "did not change AP"."""
    v = round(float(points), decimals)
    if math.isnan(v):
        return "has no AP to compare"
    if v == 0:
        return "did not change AP (as printed)"
    return f"{'gained' if v > 0 else 'lost'} {abs(v):.{decimals}f} points"


def _depth_effect(groups: Groups, original: pd.DataFrame) -> list[str]:
    """How much of the deepest variant's higher total loss is its depth: its total and its final-layer loss as
    multiples of the shallowest variant's (one with the same number of queries when there is one)."""
    cfg = {n: runs_of(g)[0].config for n, g in groups.items()}
    deep = max(cfg, key=lambda n: cfg[n].dec_layers)
    shallow = min(cfg, key=lambda n: (cfg[n].dec_layers, cfg[n].num_queries != cfg[deep].num_queries))
    if cfg[deep].dec_layers == cfg[shallow].dec_layers:
        return []
    ratio = original.loc[deep] / original.loc[shallow]
    return [(f"The total sums one loss per decoder layer ({cfg[deep].dec_layers} against "
             f"{cfg[shallow].dec_layers}): {deep}'s total is {ratio['best total loss']:.2f}x {shallow}'s, its "
             f"final-layer loss {ratio['best final-layer loss']:.2f}x and its per-layer mean "
             f"{ratio['best per-layer mean']:.2f}x.")]


def _final_epoch_words(groups: Groups) -> str:
    epochs = {v: sorted({r.final_epoch for r in runs_of(g)}) for v, g in groups.items()}
    flat = {e for es in epochs.values() for e in es}
    if len(flat) == 1:
        return f"epoch {flat.pop()}"
    return "epochs " + ", ".join(f"{v} {'/'.join(map(str, es))}" for v, es in epochs.items())


def ranking_conclusion(groups: Groups, missing: Iterable[str] = (), headline: pd.DataFrame | None = None,
                       diffs: pd.DataFrame | None = None) -> str:
    """06's ranking sentences, rendered from :func:`rankings` and :func:`agreements`: the original study's
    criterion, then the primary comparison at the final epoch by the three losses, by AP (with its intervals when
    ``headline``, :func:`.comparison.headline_table`, is given) and by AP@50det, whether the rankings disagree,
    which variants tie, and how much of the total loss is depth. A pair two rankings order the other way round is
    called a disagreement only when the second ranking's difference is beyond the noise: the paired AP difference of
    ``diffs`` (:func:`.comparison.differences_table`) excludes 0 after Holm's adjustment, or the final-layer losses
    differ by more than the seeds' spread. Without ``headline`` it also gives each variant's signed AP change from
    epoch 0 (with it, :func:`uncertainty_conclusion` gives it with its interval)."""
    missing = list(missing)
    if len(groups) < 2:
        return f"Fewer than two variants to compare (found {sorted(groups) or 'none'}; missing {missing})."
    runs = [r for g in groups.values() for r in runs_of(g)]
    lines = [note] if (note := runs_note(runs)) else []
    if missing:
        lines.append(f"Missing run folders (not compared): {', '.join(missing)}.")
    ranked, original = rankings(groups, headline), original_study_table(groups)
    lines.append(f"By {ranked['original'].criterion}: {ranked['original'].text()}.")
    reported = {k: v for k, v in ORIGINAL_STUDY_LOSS.items() if k in groups}
    if len(reported) == len(groups):
        lines.append(f"The original study reported {Ranking('', reported, False, 2).text()}.")
    lines.append(f"The primary comparison, fixed before the results: the final epoch ({_final_epoch_words(groups)}). "
                 f"By total loss: {ranked['total'].text()}; by final-layer loss: {ranked['final_layer'].text()}; by "
                 f"per-layer mean loss: {ranked['layer_mean'].text()}.")
    with_ci = headline is not None and "AP low" in headline and set(ranked["AP"].values) <= set(headline.index)
    ci = (" (95% intervals: " + ", ".join(f"{v} [{headline.loc[v, 'AP low']:.1f}, {headline.loc[v, 'AP high']:.1f}]"
                                          for v in ranked["AP"].values) + ")") if with_ci else ""
    lines.append(f"By COCO AP: {ranked['AP'].text()}{ci}.")
    if AP_CAPPED in ranked:
        lines.append(f"By AP at {CAP} detections per image (each image's {CAP} highest-scoring detections, all a "
                     f"{CAP}-query model can output; variants with different numbers of queries are compared on "
                     f"it): {ranked[AP_CAPPED].text()}.")
    ap_flat = len(ranked["AP"].tiers) <= 1
    lines += [_agreement_sentence(ranked[a], ranked[b], flips,
                                  {(x, y): why for x, y in flips if (why := _noise(groups, b, x, y, diffs))})
              for (a, b), flips in agreements(ranked).items() if not (b == "AP" and ap_flat)]
    if ap_flat:
        lines.append("AP does not separate the variants, so it can neither confirm nor contradict the losses' "
                     "rankings.")
    ties = [f"{r.name}: " + "; ".join(" = ".join(t) for t in r.ties) for r in ranked.values() if r.ties]
    if ties:
        lines.append("Ties (equal as printed, so not ranked): " + " | ".join(ties) + ".")
    lines += _depth_effect(groups, original)
    if not with_ci:
        lines.append("AP change from epoch 0 to the final epoch: " + ", ".join(
            f"{v} {c:+.1f} points ({v} {change_words(c)})" for v, c in original["AP change"].items()) + ".")
    return "\n".join(lines)


# ---- the uncertainty -------------------------------------------------------------------------------------


def _interval(row: pd.Series, prefix: str, signed: bool = False) -> str:
    f = "+.1f" if signed else ".1f"
    return f"{row[prefix]:{f}} [{row[f'{prefix} low']:{f}}, {row[f'{prefix} high']:{f}}]"


def _verdict(excludes: bool, positive: bool, what: str) -> str:
    if not excludes:
        return f"its interval contains 0: no {what} beyond what sampling explains"
    return f"its interval excludes 0: a {'gain' if positive else 'LOSS'} larger than sampling explains"


def _variant_sentence(name: str, r: pd.Series) -> str:
    s = f"{name}: epoch-0 AP {_interval(r, 'epoch-0 AP')}"
    if pd.isna(r.get("AP")):
        return s + "; no AP at the final epoch (no saved detections, or no object in these images)."
    s += (f"; at the final epoch ({r['final epoch']}) AP {_interval(r, 'AP')}: fine-tuning "
          f"{change_words(r['change'])}, "
          f"change over its own epoch 0 {_interval(r, 'change', True)} "
          f"({_verdict(r['change excludes 0'], r['change'] > 0, 'change')})")
    if not pd.isna(r.get("best AP (secondary)")):
        b = "best change (secondary)"
        s += (f". Secondary, the best fine-tuned epoch (picked on these validation images, re-picked in every "
              f"resample; epochs {r['best epochs']}): AP {_interval(r, 'best AP (secondary)')}, change over epoch 0 "
              f"{_interval(r, b, True)}, {change_words(r[b])}")
    return s + "."


def interval_widths(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per interval of ``tables`` (any column ``<stat>`` with ``<stat> low`` and ``<stat> high``): ``table``,
    ``statistic``, ``row`` (the index, or ``"a - b"`` for differences), ``width``, and ``zero`` (width 0: every
    resample gave the same value, a statistic that cannot move on these images, not a certain one)."""
    rows = []
    for name, t in tables.items():
        for col in [c[:-4] for c in t.columns if c.endswith(" low") and f"{c[:-4]} high" in t.columns]:
            for idx, r in t[t[f"{col} low"].notna()].iterrows():
                label = f"{r['a']} - {r['b']}" if {"a", "b"} <= set(t.columns) else str(idx)
                width = float(r[f"{col} high"] - r[f"{col} low"])
                rows.append({"table": name, "statistic": col, "row": label, "width": width, "zero": width < 1e-9})
    return pd.DataFrame(rows, columns=["table", "statistic", "row", "width", "zero"])


def _zero_width_sentence(tables: Mapping[str, pd.DataFrame]) -> list[str]:
    widths = interval_widths(tables)
    flat = widths[widths["zero"]]
    if flat.empty:
        return []
    head = ("Zero-width intervals (every resample gave the same value: the statistic cannot move on these images, "
            "which is not certainty): ")
    if len(flat) == len(widths):
        return [f"{head}all {len(flat)} of them."]
    groups = flat.groupby(["table", "statistic"], sort=False)["row"]
    return [head + "; ".join(f"{t} {col}: {', '.join(rows)}" for (t, col), rows in groups) + "."]


def _differences_sentence(diffs: pd.DataFrame, what: str) -> list[str]:
    if diffs.empty:
        return []
    parts = [f"{d['a']} - {d['b']} on {d['compared on']} {d['a - b']:+.1f} [{d['a - b low']:+.1f}, "
             f"{d['a - b high']:+.1f}] (p {d['p']:.3f}, Holm {d['p Holm']:.3f})" for _, d in diffs.iterrows()]
    larger = [f"{d['a']} - {d['b']}" for _, d in diffs.iterrows() if d["excludes 0 (Holm)"]]
    verdict = (f"larger than sampling explains after Holm's adjustment: {', '.join(larger)}" if larger
               else "none is larger than sampling explains after Holm's adjustment")
    return [(f"{what}, Holm-adjusted over this family of {diffs.attrs.get('family', len(diffs))} (points, 95% interval, bootstrap p): "
            f"{'; '.join(parts)}. Of these, {verdict}.")]


def _coverage(gains: pd.DataFrame, n_images: int, n_resamples: int) -> list[str]:
    lines = [(f"Intervals: 95% percentile bootstrap over the {n_images} validation images ({n_resamples} resamples, "
             f"paired for differences and changes).")]
    many = list(gains.index[gains["seeds"] >= MIN_SEEDS_RESAMPLED])
    few = list(gains.index[(gains["seeds"] > 1) & (gains["seeds"] < MIN_SEEDS_RESAMPLED)])
    one = list(gains.index[gains["seeds"] == 1])
    if many:
        it = len(many) == 1
        lines.append(f"{', '.join(many)} {'has' if it else 'have'} {MIN_SEEDS_RESAMPLED} training seeds or more: "
                     f"{'its' if it else 'their'} values are means over the seeds, and each resample also redraws "
                     f"the seeds with replacement, so {'its' if it else 'their'} intervals cover both the choice of "
                     "validation images and the training seed; the seeds' own spread is given at the end.")
    if few:
        lines.append(f"{', '.join(few)} {'has' if len(few) == 1 else 'have'} fewer than {MIN_SEEDS_RESAMPLED} "
                     "training seeds: the values are means over the seeds, the intervals cover only the choice of "
                     "validation images (redrawing so few seeds would shrink their variance), and the seeds' spread "
                     "is given at the end, beside them.")
    if one:
        lines.append(f"{', '.join(one)} {'has' if len(one) == 1 else 'have'} one training seed: "
                     f"{'its' if len(one) == 1 else 'their'} intervals cover only the choice of validation images; "
                     "training noise is not measured.")
    if n_images < MIN_IMAGES:
        lines.append(f"Only {n_images} validation images, fewer than {MIN_IMAGES}: AP moves in coarse steps and the "
                     "bootstrap has too little to resample, so these intervals are degenerate; they check the "
                     "pipeline, they do not measure the variants.")
    return lines


def _equivalence_sentence(e: dict) -> str:
    """The layer-equivalence check in words: AP and each loss term, the cut model's first."""
    cut, full = f"{e['layers']}-layer model", f"{e['deep_layers']}-layer model's layer {e['layers']}"
    losses = ", ".join(f"{t} {a:.4f} / {b:.4f}" for t, (a, b) in e["losses"].items())
    zero = " AP is 0 for both, so only the losses can tell." if e["shallow_AP"] == 0 == e["deep_layer_AP"] else ""
    verdict = ("they agree: the cut decoder starts where the full one was after that layer" if e["same"] else
               "they DIFFER: the cut decoder does not reproduce that layer")
    return (f"At epoch 0, the {cut} / the {full}: AP {100 * e['shallow_AP']:.2f} / {100 * e['deep_layer_AP']:.2f} "
            f"(difference {100 * e['abs_diff']:.4f} points); loss terms {losses} (largest relative difference "
            f"{e['max_loss_rel_diff']:.1e}).{zero} On AP and losses {verdict}.")


def uncertainty_conclusion(headline: pd.DataFrame, gains: pd.DataFrame, diffs: pd.DataFrame,
                           query_diffs: pd.DataFrame, equivalence: dict, seeds: pd.DataFrame, n_images: int,
                           n_resamples: int) -> str:
    """The closing sentences with uncertainty: what the intervals cover (images; seeds where there are several;
    degenerate below :data:`MIN_IMAGES` images), each variant's epoch-0 and final AP with the signed change between
    them and, secondary, its best epoch, the zero-width intervals, the layer-equivalence check (AP and losses),
    the Holm-adjusted differences at the final epoch and the seeds' spread. Every number is read from the tables
    of :mod:`.comparison` passed in."""
    if gains.empty:
        return "No run folder with saved detections: nothing to bootstrap."
    lines = _coverage(gains, n_images, n_resamples)
    lines += [_variant_sentence(name, r) for name, r in gains.iterrows()]
    lines += _zero_width_sentence({"headline": headline, "changes": gains, "differences": diffs,
                                   "query choices": query_diffs})
    if equivalence:
        lines.append(_equivalence_sentence(equivalence))
    lines += _differences_sentence(diffs, "Differences between the variants at the final epoch (the primary "
                                          "comparison)")
    lines += _differences_sentence(query_diffs, "Which 50 queries, at the final epoch (a second family)")
    multi = seeds[seeds[("final AP", "seeds")] > 1] if not seeds.empty else seeds
    if len(multi):
        lines.append("The seeds' spread of the final AP (mean ± sample std, n; training runs only, the images held "
                     "fixed): " + ", ".join(f"{v} {r[('final AP', 'mean')]:.1f} ± {r[('final AP', 'std')]:.1f} "
                                           f"(n={int(r[('final AP', 'seeds')])})" for v, r in multi.iterrows()) + ".")
    return "\n".join(lines)
