"""06_analysis with error bars: runs grouped by variant and seed, zero-shot baselines and fine-tuning gains, the
differences between variants and between query choices, cost against AP, and the closing sentences, every AP
and difference with its 95% bootstrap interval (:mod:`detr_nb_utils.stats`).

Run folders are named ``<variant>_seed<seed>`` (:func:`detr_nb_utils.config.seed_configs`); a variant is
``dec<layers>_q<queries>`` with, for the 50-query choices of notebook 05, a suffix naming the strategy
(``dec3_q50_most_matched``; ``dec3_q50`` keeps the first 50). Intervals are computed on the lowest seed of each
variant (its saved detections); the seeds' spread is reported beside them. AP in percent. Nothing here trains.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
from pycocotools.coco import COCO

from .runs import METRICS, RunRecord, detection_epochs, load_detections, load_run
from .stats import Scored, common_images, difference, interval, seed_summary, variant_of

RUN_NAME = re.compile(r"^(dec\d+_q\d+(?:_[a-z_]+?)?)_seed(\d+)$")
#: the 50-query choices of notebook 05: variant name -> strategy of detr_nb_utils.queries.select_queries
QUERY_CHOICES = {"dec3_q50": "first", "dec3_q50_most_matched": "most_matched", "dec3_q50_spread": "spread"}


def discover_runs(out_dir: str | Path) -> list[str]:
    """The run folders under ``out_dir`` named ``<variant>_seed<seed>`` that hold finished epochs, by variant
    and seed."""
    found = [(m[1], int(m[2]), p.name) for p in Path(out_dir).glob("*_seed*")
             if (m := RUN_NAME.match(p.name)) and (p / METRICS).is_file()]
    return [name for *_, name in sorted(found)]


def by_variant(records: Mapping[str, RunRecord]) -> dict[str, dict[str, RunRecord]]:
    """``{variant: {run name: record}}``, seeds in ascending order."""
    out: dict[str, dict[str, RunRecord]] = {}
    for name in sorted(records, key=lambda n: (variant_of(n), records[n].config.seed)):
        out.setdefault(variant_of(name), {})[name] = records[name]
    return out


def first_seeds(records: Mapping[str, RunRecord]) -> dict[str, RunRecord]:
    """One record per variant (its lowest seed), keyed by variant: what the single-run tables show."""
    return {v: next(iter(runs.values())) for v, runs in by_variant(records).items()}


def seeds_table(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """Per variant, over its seeds: epoch-0 AP and best AP (percent), mean, spread, min and max."""
    best = seed_summary({n: 100 * r.metrics["val_AP"].loc[r.best_epoch_ap] for n, r in records.items()})
    zero = seed_summary({n: 100 * r.metrics.loc[0, "val_AP"] for n, r in records.items()})
    return pd.concat({"best AP": best, "epoch-0 AP": zero}, axis=1)


class Scorer:
    """Matches each (run, epoch)'s saved detections once, on the validation images every run of ``records`` was
    evaluated on; ``ap`` and ``diff`` take run records (any of those runs) and epochs."""

    def __init__(self, records: Mapping[str, RunRecord], n_resamples: int = 1000, seed: int = 0) -> None:
        self.records, self.n_resamples, self.seed = dict(records), n_resamples, seed
        if not self.records:
            self.img_ids, self.gt = [], None
            return
        first = next(iter(self.records.values()))
        with contextlib.redirect_stdout(io.StringIO()):
            self.gt = COCO(str(Path(first.config.split_dir) / "val.json"))
        self.img_ids = common_images(*(load_detections(r.run_dir, 0) for r in self.records.values()))
        self._cache: dict[tuple[str, int], Scored] = {}

    def has(self, record: RunRecord, epoch: int | None) -> bool:
        return epoch is not None and epoch in detection_epochs(record.run_dir)

    def scored(self, record: RunRecord, epoch: int) -> Scored:
        key = (str(record.run_dir), epoch)
        if key not in self._cache:
            self._cache[key] = Scored(self.gt, load_detections(record.run_dir, epoch), self.img_ids)
        return self._cache[key]

    def ap(self, record: RunRecord, epoch: int) -> dict:
        return interval(self.scored(record, epoch), self.n_resamples, self.seed)["AP"]

    def diff(self, a: tuple[RunRecord, int], b: tuple[RunRecord, int]) -> dict:
        return difference(self.scored(*a), self.scored(*b), self.n_resamples, self.seed)["AP"]


def _pct(d: dict, prefix: str) -> dict:
    out = {prefix: 100 * d["point"], f"{prefix} low": 100 * d["low"], f"{prefix} high": 100 * d["high"]}
    if "excludes_zero" in d:
        out[f"{prefix} excludes 0"] = d["excludes_zero"]
    return out


def zero_shot_table(scorer: Scorer, records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """Per variant (one record each): epoch-0 AP, best fine-tuned AP and the gain over its own epoch 0, each with
    its 95% interval (the gain from paired resamples), and whether the gain's interval excludes 0."""
    rows = {}
    for name, r in records.items():
        row = {"best epoch": r.best_epoch_ap, **_pct(scorer.ap(r, 0), "epoch-0 AP")}
        if r.best_epoch_ap and scorer.has(r, r.best_epoch_ap):
            row |= _pct(scorer.ap(r, r.best_epoch_ap), "best AP")
            row |= _pct(scorer.diff((r, r.best_epoch_ap), (r, 0)), "gain")
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("variant")


def differences_table(scorer: Scorer, records: Mapping[str, RunRecord],
                      pairs: Sequence[tuple[str, str]] | None = None, epoch: str = "best") -> pd.DataFrame:
    """AP(a) - AP(b) in points with the 95% paired interval, for each pair (default: every pair of ``records``),
    at each run's best-AP epoch (``epoch="best"``) or at epoch 0 (``epoch=0``)."""
    pairs = list(pairs or itertools.combinations(records, 2))
    rows = []
    for a, b in pairs:
        ea, eb = (records[a].best_epoch_ap, records[b].best_epoch_ap) if epoch == "best" else (epoch, epoch)
        ra, rb = records[a], records[b]
        if scorer.has(ra, ea) and scorer.has(rb, eb):
            rows.append({"a": a, "b": b, "epoch a": ea, "epoch b": eb,
                         **_pct(scorer.diff((ra, ea), (rb, eb)), "AP a - b")})
    columns = ["a", "b", "epoch a", "epoch b", "AP a - b", "AP a - b low", "AP a - b high", "AP a - b excludes 0"]
    return pd.DataFrame(rows, columns=columns)


def layer_equivalence(records: Mapping[str, RunRecord], deep: str = "dec6_q100", shallow: str = "dec3_q100") -> dict:
    """The shallow model at epoch 0 is the deep model's layer ``L`` (same weights, same final norm): its epoch-0
    AP against the deep run's epoch-0 ``AP_layer_{L-1}``, fractions, with their absolute difference."""
    if deep not in records or shallow not in records:
        return {}
    layers = records[shallow].config.dec_layers
    a = float(records[shallow].metrics.loc[0, "val_AP"])
    b = float(records[deep].metrics.loc[0, f"val_AP_layer_{layers - 1}"])
    return {"layers": layers, "shallow_AP": a, "deep_layer_AP": b, "abs_diff": abs(a - b)}


def cost_vs_ap(cost: pd.DataFrame, zero_shot: pd.DataFrame) -> pd.DataFrame:
    """The cost table (:func:`detr_nb_utils.cost.cost_table`) joined with each variant's AP and interval."""
    keep = [c for c in zero_shot.columns if c.startswith(("best AP", "epoch-0 AP")) or c == "best epoch"]
    return cost.join(zero_shot[keep], how="left")


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


def interval_conclusion(zero_shot: pd.DataFrame, diffs: pd.DataFrame, query_diffs: pd.DataFrame,
                        equivalence: dict, seeds: pd.DataFrame, n_images: int, n_resamples: int) -> str:
    """The analysis' closing sentences with uncertainty: each variant's epoch-0 and best AP and its gain with
    their intervals, the layer-equivalence check, which differences exceed their interval, and the seeds' spread.
    Every number is read from the tables passed in."""
    if zero_shot.empty:
        return "No run folder with saved detections: nothing to bootstrap."
    lines = [f"Intervals: 95% percentile bootstrap over the {n_images} validation images ({n_resamples} "
             "resamples, paired for differences)."]
    for name, r in zero_shot.iterrows():
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


def load_seeded_runs(out_dir: str | Path, names: Sequence[str] | None = None) -> dict[str, RunRecord]:
    """The run folders ``names`` (default: :func:`discover_runs`) under ``out_dir``, read back."""
    return {n: load_run(Path(out_dir) / n) for n in (names or discover_runs(out_dir))
            if (Path(out_dir) / n / METRICS).is_file()}


def missing_variants(records: Mapping[str, RunRecord], wanted: Sequence[str]) -> list[str]:
    """The ``wanted`` variants without any run folder."""
    have = set(by_variant(records))
    return [v for v in wanted if v not in have]



def query_choice_table(counts, choices: Mapping[str, Sequence[int]], epoch0: Mapping[str, Mapping] | None = None
                       ) -> pd.DataFrame:
    """Per strategy of 05: how many of the train split's matches its 50 slots held in the original model, the
    slots themselves, and (``epoch0``: strategy -> :func:`detr_nb_utils.engine.evaluate_checkpoint` metrics)
    AP and AP50 at epoch 0, percent."""
    total = max(int(sum(counts)), 1)
    rows = {}
    for s, slots in choices.items():
        rows[s] = {"slots": len(slots), "matches kept": int(sum(counts[i] for i in slots)),
                   "share of matches": sum(counts[i] for i in slots) / total,
                   "query slots": " ".join(map(str, slots))}
        if epoch0 and s in epoch0:
            rows[s] |= {"epoch-0 AP": 100 * epoch0[s]["AP"], "epoch-0 AP50": 100 * epoch0[s]["AP50"]}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("strategy")


def variant_costs(variants: Mapping[str, tuple], latency_size: tuple[int, int], device) -> pd.DataFrame:
    """:func:`detr_nb_utils.cost.cost_table` of each variant (name -> (decoder layers, queries, ...)): parameters,
    GFLOPs at 800x1066 (meta device), CPU latency at ``latency_size``, and GPU latency (``latency_ms_gpu``, bf16
    autocast as the engine uses) when ``device`` is a CUDA device. Weights are random: cost does not depend on
    them."""
    import torch

    from .cost import cost_table
    from .model import build_detr

    models = {name: build_detr(dec_layers=v[0], num_queries=v[1]).eval() for name, v in variants.items()}
    table = cost_table(models, device="cpu", latency_size=tuple(latency_size))
    if torch.device(device).type == "cuda":
        gpu = cost_table({n: m.to(device) for n, m in models.items()}, device=device,
                         latency_size=tuple(latency_size), amp_dtype=torch.bfloat16, repeats=10)
        table["latency_ms_gpu"] = gpu["latency_ms"]
    return table
