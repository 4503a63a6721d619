"""What 06_analysis concludes, as findings.

The rankings (:func:`rankings`, one :class:`Ranking` per criterion: the original study's lowest total loss, the three
losses, AP and AP@50det at the final epoch) and the pairs two rankings order the other way round
(:func:`agreements`) are data; :func:`study_findings` turns 06's tables (:mod:`.comparison`) into
:class:`~.findings.Finding` s with stable keys: ``variant/<v>`` (final AP), ``change/<v>`` (final minus epoch 0),
``best change/<v>`` (secondary), ``diff/<a> - <b>`` and ``query/<a> - <b>`` (paired differences, Holm-adjusted over
their family; one sign convention, the pair as :data:`.comparison.VARIANT_PAIRS` orders it), ``best``,
``ranking``, ``depth``, ``equivalence``, the recipe arms' ``arm/...`` and ``missing``. The short templates of
:mod:`.templates` (the answer of at most :data:`ANSWER_WORDS` words, and one short paragraph per result) render
those findings, in 06's takeaway and in the team report alike; every number in them is a finding's. Nothing here
is typed by hand.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from .run_bootstrap import Groups, covers, runs_of
from .comparison import (
    AP_CAPPED,
    CAP,
    ORIGINAL_STUDY_LOSS,
    final_losses,
    original_study_table,
)
from .findings import Finding, by_key

TINY_NOTE = ("These runs are the demo world: a tiny DETR pre-trained on synthetic shapes, fine-tuned and compared on "
             "a synthetic mini-COCO as the study does DETR-R50 on COCO. The numbers measure that small detector; they "
             "say nothing about DETR-R50 on COCO.")
#: below this many validation images AP moves in coarse steps and its intervals are degenerate
MIN_IMAGES = 100
#: the answer's length, at most
ANSWER_WORDS = 150


def world_note(backbone: str) -> str:
    """The sentence that opens a takeaway whose numbers are not the study's: :data:`TINY_NOTE` for the demo world's
    tiny DETR (``backbone == "tiny"``), else ``""``."""
    return TINY_NOTE if backbone == "tiny" else ""


def runs_note(records: Iterable) -> str:
    """:func:`world_note` of the first run folder (:class:`~detr_nb_utils.training.runs.RunRecord`) that needs one."""
    notes = (world_note(r.config.backbone) for r in records)
    return next((n for n in notes if n), "")


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

    def order(self) -> str:
        """``"a > b = c"`` (``<`` when lower is better), without the values."""
        return (" > " if self.higher_is_better else " < ").join(" = ".join(t) for t in self.tiers)

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
    """Variants (rows) by criterion (columns, named as the sentences name them: :attr:`Ranking.name`): the rank, 1
    the best, ties sharing it."""
    order = list(next(iter(ranked.values())).values) if ranked else []
    return pd.DataFrame({r.name: pd.Series(r.ranks, dtype="Int64") for r in ranked.values()},
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


# ---- 06's tables as findings ---------------------------------------------------------------------------------


def _seeds(table: pd.DataFrame, v: str) -> int:
    return int(table.loc[v, "seeds"]) if "seeds" in table and v in table.index else 1


def _stat(claim: str, row: pd.Series, col: str, n_images: int, seeds: int | Mapping[str, int], key: str,
          label: str, signed: bool, verdict: str | None = None, **extra) -> Finding:
    low, high = float(row.get(f"{col} low", math.nan)), float(row.get(f"{col} high", math.nan))
    if verdict is None:
        verdict = "no interval" if not signed or math.isnan(low) else \
            "beyond sampling" if bool(row.get(f"{col} excludes 0", low > 0 or high < 0)) else "within sampling"
    return Finding(claim, float(row[col]), low, high, covers(n_images, seeds), verdict, signed=signed, key=key,
                   data={"label": label} | extra.pop("data", {}), **extra)


def table_findings(headline: pd.DataFrame, gains: pd.DataFrame) -> list[Finding]:
    """Each variant's final AP (``variant/<v>``, with its seeds' values), its change from its own epoch 0
    (``change/<v>``) and, secondary, from epoch 0 to its best fine-tuned epoch (``best change/<v>``)."""
    n, out = int(headline.attrs.get("n_images", 0)), []
    for v, row in headline.iterrows():
        out.append(_stat(f"{v}, AP at the final epoch", row, "AP", n, _seeds(headline, v), f"variant/{v}", v, False,
                         data={"seed std": float(row.get("seed std", math.nan))}))
    for v, row in gains.iterrows():
        if pd.isna(row.get("change")):
            continue
        out.append(_stat(f"{v}, AP change from epoch 0 ({row['epoch-0 AP']:.1f}) to the final epoch", row, "change",
                         n, _seeds(gains, v), f"change/{v}", v, True,
                         data={"epoch 0": float(row["epoch-0 AP"]), "final": float(row["AP"])}))
        if not pd.isna(row.get("best change (secondary)")):
            out.append(_stat(f"{v}, AP change from epoch 0 to the best fine-tuned epoch (secondary: picked on these "
                             "images, re-picked in every resample)", row, "best change (secondary)", n,
                             _seeds(gains, v), f"best change/{v}", f"{v}, best epoch", True))
    return out


def difference_findings(diffs: pd.DataFrame, seeds: Mapping[str, int], family: str = "diff") -> list[Finding]:
    """One finding per row of a :func:`.comparison.differences_table` (``<family>/<a> - <b>``), its verdict after
    Holm's adjustment over the family (the interval itself is the pair's own 95%)."""
    out, n = [], int(diffs.attrs.get("n_images", 0))
    for _, r in diffs.iterrows():
        on = "" if r["compared on"] == "AP" else f" on {r['compared on']}"
        pair = f"{r['a']} - {r['b']}"
        out.append(_stat(f"{pair}, final AP{on}", r, "a - b", n, {v: seeds.get(v, 1) for v in (r["a"], r["b"])},
                         f"{family}/{pair}", pair + on, True,
                         "beyond sampling" if r["excludes 0 (Holm)"] else "within sampling",
                         why=f"Holm-adjusted p {r['p Holm']:.3f} over {diffs.attrs.get('family', len(diffs))} pairs",
                         data={"p": float(r["p"]), "p Holm": float(r["p Holm"]), "compared on": r["compared on"]}))
    return out


def _pair(findings: Mapping[str, Finding], x: str, y: str) -> float:
    """The AP difference ``x - y`` when it is beyond sampling (Holm), else 0; NaN when no finding holds the pair."""
    for (a, b), sign in (((x, y), 1), ((y, x), -1)):
        f = findings.get(f"{a} - {b}")
        if f is not None:
            return sign * f.value if f.verdict == "beyond sampling" else 0.0
    return math.nan


def ranking_finding(ranked: Mapping[str, Ranking], diffs: Sequence[Finding]) -> Finding:
    """Does the original study's total-loss ranking survive COCO AP? For every pair it orders, the paired AP
    difference after Holm's adjustment confirms it, overturns it, or cannot tell (``data``: ``verdict`` one of
    "survives", "overturned", "not confirmed"; the orders; the pairs overturned and undecided)."""
    reported = {v: x for v, x in ORIGINAL_STUDY_LOSS.items() if v in ranked["AP"].values}
    original = Ranking("the original study's reported best total loss", reported, False, 2) \
        if len(reported) == len(ranked["AP"].values) else ranked["original"]
    pairs = by_key(diffs, "diff")
    ranks = original.ranks
    ordered = [(x, y) for x in ranks for y in ranks if ranks[x] < ranks[y]]
    gaps = {(x, y): _pair(pairs, x, y) for x, y in ordered}
    overturned = [f"{x} < {y}" for (x, y), d in gaps.items() if d < 0]
    undecided = [f"{x} ~ {y}" for (x, y), d in gaps.items() if d == 0 or math.isnan(d)]
    verdict = "overturned" if overturned else "not confirmed" if undecided else "survives"
    return Finding("the original study's ranking by total validation loss, measured by COCO AP", math.nan,
                   key="ranking", why=f"{original.order()} by total loss; {ranked['AP'].order()} by AP",
                   data={"verdict": verdict, "loss order": original.order(), "AP order": ranked["AP"].order(),
                         "overturned": overturned, "undecided": undecided,
                         "orders": {r.name: r.text() for r in ranked.values()},
                         "runs agree": discordant(original, ranked["original"]) == []})


def depth_finding(groups: Groups) -> Finding | None:
    """How much of the deepest variant's total loss is its depth: its lowest total loss as a multiple of the
    shallowest variant's (one with the same queries when there is one), and its final-layer loss's (``data``)."""
    cfg = {n: runs_of(g)[0].config for n, g in groups.items()}
    deep = max(cfg, key=lambda n: cfg[n].dec_layers)
    shallow = min(cfg, key=lambda n: (cfg[n].dec_layers, cfg[n].num_queries != cfg[deep].num_queries))
    if cfg[deep].dec_layers == cfg[shallow].dec_layers:
        return None
    ratio = original_study_table(groups).pipe(lambda t: t.loc[deep] / t.loc[shallow])
    return Finding(f"{deep}'s lowest total validation loss as a multiple of {shallow}'s", float(ratio["best total loss"]),
                   unit="x", signed=False, decimals=2, key="depth",
                   why=f"the total sums one loss per decoder layer ({cfg[deep].dec_layers} against "
                       f"{cfg[shallow].dec_layers})",
                   data={"deep": deep, "shallow": shallow, "final-layer ratio": float(ratio["best final-layer loss"])})


def equivalence_finding(e: Mapping) -> Finding | None:
    """The cut decoder at epoch 0 against the full one's layer (:func:`.comparison.layer_equivalence`): the AP
    difference, and whether AP and the loss terms agree."""
    if not e:
        return None
    return Finding(f"at epoch 0, the {e['layers']}-layer model minus layer {e['layers']} of the {e['deep_layers']}-layer "
                   "model", 100 * (e["shallow_AP"] - e["deep_layer_AP"]), decimals=2, key="equivalence",
                   why=("they agree, loss terms too (largest relative difference " if e["same"] else
                        "they DIFFER (largest relative loss difference ") + f"{e['max_loss_rel_diff']:.1e})",
                   data={"same": bool(e["same"]), "layers": e["layers"], "deep layers": e["deep_layers"]})


def study_findings(groups: Groups, headline: pd.DataFrame, gains: pd.DataFrame, diffs: pd.DataFrame,
                   query_diffs: pd.DataFrame | None = None, query_groups: Groups | None = None,
                   arms: Sequence[Finding] = (), equivalence: Mapping | None = None,
                   missing: Sequence[str] = ()) -> list[Finding]:
    """Everything 06 concludes, as findings (keys in the module docstring), from its tables: the headline, the
    changes from epoch 0, the differences of the decoder family and of the query family (the choices' runs:
    ``query_groups``), the recipe arms' findings (:func:`.arms.arm_table`'s, keyed ``arm/<label>``) and the
    layer-equivalence check; ``missing``: the variants without runs (``missing``, said in the answer)."""
    seeds = {v: len(runs_of(g)) for v, g in {**(query_groups or {}), **groups}.items()}
    out = table_findings(headline, gains)
    out += difference_findings(diffs, seeds)
    if query_diffs is not None and len(query_diffs):
        out += difference_findings(query_diffs, seeds, "query")
    if len(headline):
        best = headline["AP"].idxmax()
        f = by_key(out, "variant")[best]
        out.append(Finding(f"the highest final AP: {best}", f.value, f.low, f.high, f.covers, signed=False,
                           key="best", data={"variant": best, "layers": int(headline.loc[best, "layers"]),
                                             "queries": int(headline.loc[best, "queries"])}))
    out.append(ranking_finding(rankings(groups, headline), out))
    out += [f for f in (depth_finding(groups), equivalence_finding(equivalence or {})) if f is not None]
    out += [Finding(**{**a.__dict__, "key": f"arm/{a.label}"}) for a in arms]
    if missing:
        out.append(Finding("variants without a run folder, not compared", math.nan, key="missing",
                           why=", ".join(missing), data={"variants": list(missing)}))
    return out
