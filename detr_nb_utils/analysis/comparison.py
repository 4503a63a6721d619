"""06_analysis's tables: the runs grouped by variant and seed, each variant's losses and AP at its chosen epochs
beside the original study's numbers, the AP of each decoder layer, the fine-tuning gains and the differences between
variants with their 95% bootstrap intervals (:mod:`.bootstrap`), and cost against AP.

Run folders are named ``<variant>_seed<seed>`` (:func:`detr_nb_utils.training.config.seed_configs`); a variant is
``dec<layers>_q<queries>`` with, for the 50-query choices of notebook 05, a suffix naming the strategy
(``dec3_q50_most_matched``; ``dec3_q50`` keeps the first 50). Intervals are computed on the lowest seed of each
variant (its saved detections); the seeds' spread is reported beside them. AP in percent (COCOeval's fractions
x 100, as the paper prints them). Nothing here trains. The closing sentences are :mod:`.conclusions`.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
from pycocotools.coco import COCO

from ..models.loss import LOSS_VIEWS
from ..training.config import SEEDED_RUN, variant_name, variant_of
from ..training.runs import METRICS, RunRecord, detection_epochs, load_detections, load_run
from .bootstrap import MatchedDetections, ap_difference, ap_interval, common_images, seed_summary

#: run name (``RunConfig.run_dir``'s default) -> (decoder layers, queries, label): the three variants compared
VARIANTS = {variant_name(layers, queries): (layers, queries, label)
            for layers, queries, label in ((6, 100, "baseline"), (3, 100, "shallow decoder"),
                                           (3, 50, "shallow + 50 queries"))}
#: what the original study reported as "best validation loss" (its section 5), to set beside our runs
ORIGINAL_STUDY_LOSS = {"dec6_q100": 71.3, "dec3_q100": 52.5, "dec3_q50": 51.45}
#: DETR-R50 on COCO val2017, the paper's Table 1 (500 epochs), in percent (../shared/reference/README.md)
PAPER_AP = {"AP": 42.0, "AP50": 62.4, "AP75": 44.2, "APs": 20.5, "APm": 45.8, "APl": 61.1}
AP_STATS = tuple(PAPER_AP)
#: the 50-query choices of notebook 05: variant name -> strategy of detr_nb_utils.analysis.queries.select_queries
QUERY_CHOICES = {"dec3_q50": "first", "dec3_q50_most_matched": "most_matched", "dec3_q50_spread": "spread"}


def discover_runs(out_dir: str | Path) -> list[str]:
    """The run folders under ``out_dir`` named ``<variant>_seed<seed>`` that hold finished epochs, by variant
    and seed."""
    found = [(m["variant"], int(m["seed"]), p.name) for p in Path(out_dir).glob("*_seed*")
             if (m := SEEDED_RUN.match(p.name)) and (p / METRICS).is_file()]
    return [name for *_, name in sorted(found)]


def by_variant(records: Mapping[str, RunRecord]) -> dict[str, dict[str, RunRecord]]:
    """``{variant: {run name: record}}``, seeds in ascending order."""
    out: dict[str, dict[str, RunRecord]] = {}
    for name in sorted(records, key=lambda n: (variant_of(n), records[n].config.seed)):
        out.setdefault(variant_of(name), {})[name] = records[name]
    return out


def first_seed_runs(records: Mapping[str, RunRecord]) -> dict[str, RunRecord]:
    """One record per variant (its lowest seed), keyed by variant: what the single-run tables show."""
    return {v: next(iter(runs.values())) for v, runs in by_variant(records).items()}


def seeds_table(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """Per variant, over its seeds: epoch-0 AP and best AP (percent), mean, spread, min and max."""
    best = seed_summary({n: 100 * r.metrics["val_AP"].loc[r.best_epoch_ap] for n, r in records.items()})
    zero = seed_summary({n: 100 * r.metrics.loc[0, "val_AP"] for n, r in records.items()})
    return pd.concat({"best AP": best, "epoch-0 AP": zero}, axis=1)


class ApBootstrap:
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
        self._cache: dict[tuple[str, int], MatchedDetections] = {}

    def has(self, record: RunRecord, epoch: int | None) -> bool:
        return epoch is not None and epoch in detection_epochs(record.run_dir)

    def matched(self, record: RunRecord, epoch: int) -> MatchedDetections:
        key = (str(record.run_dir), epoch)
        if key not in self._cache:
            self._cache[key] = MatchedDetections(self.gt, load_detections(record.run_dir, epoch), self.img_ids)
        return self._cache[key]

    def ap(self, record: RunRecord, epoch: int) -> dict:
        return ap_interval(self.matched(record, epoch), self.n_resamples, self.seed)["AP"]

    def diff(self, a: tuple[RunRecord, int], b: tuple[RunRecord, int]) -> dict:
        return ap_difference(self.matched(*a), self.matched(*b), self.n_resamples, self.seed)["AP"]


def _pct(d: dict, prefix: str) -> dict:
    out = {prefix: 100 * d["point"], f"{prefix} low": 100 * d["low"], f"{prefix} high": 100 * d["high"]}
    if "excludes_zero" in d:
        out[f"{prefix} excludes 0"] = d["excludes_zero"]
    return out


def finetuning_gain_table(bootstrap: ApBootstrap, records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """Per variant (one record each): epoch-0 AP, best fine-tuned AP and the gain over its own epoch 0, each with
    its 95% interval (the gain from paired resamples), and whether the gain's interval excludes 0."""
    rows = {}
    for name, r in records.items():
        row = {"best epoch": r.best_epoch_ap, **_pct(bootstrap.ap(r, 0), "epoch-0 AP")}
        if r.best_epoch_ap and bootstrap.has(r, r.best_epoch_ap):
            row |= _pct(bootstrap.ap(r, r.best_epoch_ap), "best AP")
            row |= _pct(bootstrap.diff((r, r.best_epoch_ap), (r, 0)), "gain")
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("variant")


def differences_table(bootstrap: ApBootstrap, records: Mapping[str, RunRecord],
                      pairs: Sequence[tuple[str, str]] | None = None, epoch: str = "best") -> pd.DataFrame:
    """AP(a) - AP(b) in points with the 95% paired interval, for each pair (default: every pair of ``records``),
    at each run's best-AP epoch (``epoch="best"``) or at epoch 0 (``epoch=0``)."""
    pairs = list(pairs or itertools.combinations(records, 2))
    rows = []
    for a, b in pairs:
        ea, eb = (records[a].best_epoch_ap, records[b].best_epoch_ap) if epoch == "best" else (epoch, epoch)
        ra, rb = records[a], records[b]
        if bootstrap.has(ra, ea) and bootstrap.has(rb, eb):
            rows.append({"a": a, "b": b, "epoch a": ea, "epoch b": eb,
                         **_pct(bootstrap.diff((ra, ea), (rb, eb)), "AP a - b")})
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


def cost_vs_ap(cost: pd.DataFrame, gains: pd.DataFrame) -> pd.DataFrame:
    """The cost table (:func:`detr_nb_utils.cost.cost_table`) joined with each variant's AP and interval."""
    keep = [c for c in gains.columns if c.startswith(("best AP", "epoch-0 AP")) or c == "best epoch"]
    return cost.join(gains[keep], how="left")


def load_runs(out_dir: str | Path, names: Sequence[str] | None = None) -> dict[str, RunRecord]:
    """The run folders ``names`` (default: :func:`discover_runs`) under ``out_dir``, read back."""
    return {n: load_run(Path(out_dir) / n) for n in (names or discover_runs(out_dir))
            if (Path(out_dir) / n / METRICS).is_file()}


def missing_variants(records: Mapping[str, RunRecord], wanted: Sequence[str]) -> list[str]:
    """The ``wanted`` variants without any run folder."""
    have = set(by_variant(records))
    return [v for v in wanted if v not in have]



def _row(record: RunRecord, epoch: int | None, at: str) -> dict:
    m = record.metrics
    row = {"run": record.run_dir.name, "layers": record.config.dec_layers, "queries": record.config.num_queries,
           "at": at, "epoch": epoch}
    ok = epoch is not None and epoch in m.index
    row.update({k: m.loc[epoch, f"val_{k}"] if ok else math.nan for k in LOSS_VIEWS})
    row.update({k: 100 * m.loc[epoch, f"val_{k}"] if ok else math.nan for k in AP_STATS})
    return row


def comparison_table(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """Per run, three rows: epoch 0 (the checkpoint, before fine-tuning), the original study's pick (the epoch of lowest
    total val loss) and the epoch of highest val AP; each with the three val losses and AP..APl (percent)."""
    rows = []
    for r in records.values():
        rows += [_row(r, 0, "epoch 0"), _row(r, r.best_epoch_loss, "lowest total loss (original study)"),
                 _row(r, r.best_epoch_ap, "highest AP")]
    columns = ["run", "layers", "queries", "at", "epoch", *LOSS_VIEWS, *AP_STATS]
    return pd.DataFrame(rows, columns=columns).set_index(["run", "at"])


def original_study_table(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """The original study's table (best total validation loss per variant) with what our runs measure beside it."""
    rows = {}
    for name, r in records.items():
        m = r.metrics
        rows[name] = {"original study": ORIGINAL_STUDY_LOSS.get(name, math.nan),
                      "best total loss": m["val_loss_total"].min(), "best final-layer loss": m["val_loss_final"].min(),
                      "best per-layer mean": m["val_loss_layer_mean"].min(), "best AP": 100 * m["val_AP"].max()}
    columns = ["original study", "best total loss", "best final-layer loss", "best per-layer mean", "best AP"]
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns).rename_axis("run")


def ap_per_layer(records: Mapping[str, RunRecord], epoch: str | int = "best") -> pd.DataFrame:
    """AP (fraction) of each decoder layer's predictions (columns 1..L) per run, at the best-AP epoch or ``epoch``."""
    rows = {}
    for name, r in records.items():
        e = r.best_epoch_ap if epoch == "best" else epoch
        rows[name] = {layer + 1: r.metrics.loc[e, f"val_AP_layer_{layer}"] for layer in range(r.config.dec_layers)}
    return pd.DataFrame(rows).T
