"""The run folders of a comparison, found and grouped by what they hold, never by folder name: every folder of
``out_dir`` holding a ``config.json`` and a ``metrics.jsonl`` is a run; its variant is its config's decoder layers,
queries and query slots (:func:`variant_labels`: ``dec<layers>_q<queries>``, ``_spread`` for the evenly spread slots
of notebook 05, else the folder's name without its ``_seed<k>``), its seed the config's, its recipe arm the config's
(:func:`by_recipe`). :func:`check_comparable` refuses runs made on different split manifests, in different effective
precisions or with different recipes, naming both folders. Used by :mod:`.comparison` (06_analysis's tables), the
notebooks 03-05 through :mod:`.baseline`, and the team report.
"""
from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..training.config import RunConfig, variant_name, variant_of
from ..training.config_checks import MAX_QUERIES
from ..training.recipe import RECIPES, recipe_differences
from ..training.runs import (
    CONFIG,
    MANIFEST,
    METRICS,
    PRECISION_FIELD,
    RunRecord,
    load_run,
)
from .queries import select_queries


class IncomparableRuns(ValueError):
    """Run folders that must not be compared (another split, another precision, another recipe, the same variant and
    seed twice)."""


# ---- finding the runs by content ---------------------------------------------------------------------------


def _variant_key(cfg: RunConfig) -> tuple:
    return cfg.dec_layers, cfg.num_queries, cfg.query_indices


def _label(key: tuple, name: str, recipe: str = "original") -> str:
    layers, queries, slots = key
    base = variant_name(layers, queries)
    if slots is None:
        return base
    if list(slots) == select_queries("spread", queries, MAX_QUERIES):
        return f"{base}_spread"
    # e.g. most_matched: its slots depend on match counts the folder does not hold; a recipe arm's suffix apart
    named = variant_of(name).removesuffix(f"_{recipe}")
    return named if named.startswith(f"{base}_") else variant_name(layers, queries, slots)


def variant_labels(configs: Mapping[str, RunConfig]) -> dict[str, str]:
    """Run folder name -> its variant, from its config (layers, queries, query slots); one label per variant, taken
    from its lowest seed's folder when the slots are not recognised, made unique with the slots' hash."""
    keys = {n: _variant_key(c) for n, c in configs.items()}
    labels: dict[tuple, str] = {}
    for key in sorted(set(keys.values()), key=lambda k: (k[0], k[1], k[2] is not None, str(k[2]))):
        lowest = min((n for n in keys if keys[n] == key), key=lambda n: (configs[n].seed, n))
        label = _label(key, lowest, configs[lowest].recipe)
        labels[key] = label if label not in labels.values() else variant_name(*key)
    return {n: labels[k] for n, k in keys.items()}


def discover_runs(out_dir: str | Path) -> list[str]:
    """Every folder under ``out_dir`` holding a ``config.json`` and finished epochs (whatever its name), ordered by
    variant and seed; runs on your own dataset (07_your_dataset, :attr:`RunConfig.own_data`) are not the study's
    variants and are left out."""
    folders = [p for p in Path(out_dir).iterdir() if (p / CONFIG).is_file() and (p / METRICS).is_file()] \
        if Path(out_dir).is_dir() else []
    configs = {p.name: c for p in folders if not (c := RunConfig.from_json(p / CONFIG)).own_data}
    labels = variant_labels(configs)
    return sorted(configs, key=lambda n: (labels[n], configs[n].seed, n))


def _manifest_difference(a: dict, b: dict) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return f"they differ in {', '.join(map(str, keys))}"


def check_comparable(records: Mapping[str, RunRecord]) -> None:
    """Raise :class:`IncomparableRuns`, naming both folders, when two runs were trained on different split manifests,
    computed in different effective precisions (:attr:`RunRecord.effective_precision`; unknown counts as
    different), were made with different recipes (:func:`~detr_nb_utils.training.recipe.recipe_differences`, each
    field named with both values; runs of two declared recipe arms differ only in what the arms set), or are the
    same variant and recipe with the same seed."""
    items = list(records.items())
    fix = "pass run_names to compare only runs made alike, or re-run the odd one out"
    for (_, a), (_, b) in itertools.combinations(items, 2):
        if a.split_manifest != b.split_manifest:
            raise IncomparableRuns(f"{a.run_dir} and {b.run_dir} were trained on different splits (their {MANIFEST}: "
                                   f"{_manifest_difference(a.split_manifest, b.split_manifest)}); AP on different "
                                   f"validation images does not compare: {fix}.")
    for (_, a), (_, b) in itertools.combinations(items, 2):
        pa, pb = a.effective_precision, b.effective_precision
        if pa is None or pb is None or pa != pb or "+" in pa:
            say = {r.run_dir: p or f"unknown (precision 'auto', no {PRECISION_FIELD} recorded)"
                   for r, p in ((a, pa), (b, pb))}
            raise IncomparableRuns(f"{a.run_dir} computed in {say[a.run_dir]} and {b.run_dir} in {say[b.run_dir]}: "
                                   f"runs of one comparison must compute in one precision; {fix}.")
    for (_, a), (_, b) in itertools.combinations(items, 2):
        diff = recipe_differences(a.config.to_dict(), b.config.to_dict())
        if diff:
            fields = "; ".join(f"{k}: {va!r} in {a.run_dir.name}, {vb!r} in {b.run_dir.name}" for k, va, vb in diff)
            arms = f" (recipe arms {a.config.recipe!r} and {b.config.recipe!r})" if a.config.recipe != \
                b.config.recipe else ""
            raise IncomparableRuns(f"{a.run_dir} and {b.run_dir} were made with different recipes{arms}, which "
                                   f"differ in {', '.join(k for k, _, _ in diff)} ({fields}): a difference between "
                                   f"them would mix the variant with the recipe; {fix}.")
    labels = variant_labels({n: r.config for n, r in items})
    for (na, a), (nb, b) in itertools.combinations(items, 2):
        if labels[na] == labels[nb] and a.config.seed == b.config.seed and a.config.recipe == b.config.recipe:
            raise IncomparableRuns(f"{a.run_dir} and {b.run_dir} both hold {labels[na]} with seed {a.config.seed}: "
                                   f"counted twice they would shrink the seeds' spread; {fix}.")


def load_runs(out_dir: str | Path, names: Sequence[str] | None = None) -> dict[str, RunRecord]:
    """The run folders ``names`` (default: :func:`discover_runs`) under ``out_dir``, read back and checked by
    :func:`check_comparable`."""
    records = {n: load_run(Path(out_dir) / n) for n in (names or discover_runs(out_dir))
               if (Path(out_dir) / n / METRICS).is_file()}
    check_comparable(records)
    return records


def by_recipe(records: Mapping[str, RunRecord]) -> dict[str, dict[str, RunRecord]]:
    """``{recipe arm: {run name: record}}``: each declared recipe arm (``RunConfig.recipe``) is its own family,
    the original first, then the others as :data:`~detr_nb_utils.training.recipe.RECIPES` lists them."""
    order = list(RECIPES)
    out: dict[str, dict[str, RunRecord]] = {}
    for name in sorted(records, key=lambda n: order.index(records[n].config.recipe)):
        out.setdefault(records[name].config.recipe, {})[name] = records[name]
    return out


def by_variant(records: Mapping[str, RunRecord]) -> dict[str, dict[str, RunRecord]]:
    """``{variant: {run name: record}}`` (variants by content, :func:`variant_labels`), seeds in ascending order."""
    labels = variant_labels({n: r.config for n, r in records.items()})
    out: dict[str, dict[str, RunRecord]] = {}
    for name in sorted(records, key=lambda n: (labels[n], records[n].config.seed, n)):
        out.setdefault(labels[name], {})[name] = records[name]
    return out


def first_seed_runs(records: Mapping[str, RunRecord]) -> dict[str, RunRecord]:
    """One record per variant (its lowest seed), keyed by variant: what the single-run tables show."""
    return {v: next(iter(runs.values())) for v, runs in by_variant(records).items()}


def missing_variants(records: Mapping[str, RunRecord], wanted: Sequence[str]) -> list[str]:
    """The ``wanted`` variants without any run folder."""
    have = set(by_variant(records))
    return [v for v in wanted if v not in have]
