"""The sequence every training notebook runs, as a few calls: check the data (:func:`check_data`), say which runs it
will make and how long they should take (:func:`plan`), make them, one per training seed, side by side where that is
faster (:func:`~detr_nb_utils.training.side_by_side.run_all`), and show them: the loss and AP curves of every seed
and the epoch table (:func:`show_runs`), the change fine-tuning made with its interval (:func:`change_findings`) and
the comparison with 03's baseline (:func:`against_baseline`), once the runs it compares with are finished
(:func:`await_family`: ``make demo`` trains 03, 04 and 05 side by side). Used by notebooks 03, 04 and 05, which
keep their own lessons around it (the matcher and set loss, depth, which queries) and 07 (its plan).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd

from ..analysis.arms import arm_table
from ..analysis.baseline import BASELINE, versus_baseline
from ..analysis.run_bootstrap import ApBootstrap
from ..analysis.comparison import VARIANTS, by_recipe, check_comparable
from ..analysis.findings import Finding, render
from ..data.coco import CocoDetection
from ..data.split import verify_split
from ..training.config import RunConfig, seed_configs, variant_name
from ..training.data_setup import DataSetup, prepare_data
from ..training.recipe import ORIGINAL
from ..training.runs import RunRecord
from ..training.side_by_side import plan_runs, plan_text, wait_for_runs
from .figures import plot_ap_curves, plot_loss_curves, save_fig
from .tables import run_table, save_table, with_train_views


def check_data(cfg: RunConfig) -> DataSetup:
    """The split (made when missing) checked against its manifest, and every image of both sides present and of its
    annotated size (headers read, not decoded), before any training starts; prints what it found."""
    data = prepare_data(cfg)
    if not cfg.own_data:
        print(f"split {cfg.split_dir}: seed {verify_split(cfg.split_dir, data.annotation_file)['seed']}, "
              "checked against its manifest")
    found = {}
    for split in ("train", "val"):
        found[split] = CocoDetection(*data.files(split)).verify(decode=False, progress=cfg.progress)
        print(f"{data.files(split)[0].name}: {found[split]} images present, of the annotated size")
    if cfg.max_train_images is not None and cfg.max_train_images < found["train"]:
        print(f"each run trains on the first {cfg.max_train_images} of the {found['train']} training images "
              f"(max_train_images)")
    return data


def await_family(cfg: RunConfig, n_seeds: int | None, wait_s: float) -> None:
    """Before a notebook compares its variant with the others of the decoder question (03's baseline, 04's and 05's
    variants, every seed, ``cfg``'s recipe): wait, at most ``wait_s`` seconds, until their runs are finished, as
    when other notebooks train them at the same time (``make demo`` runs 03, 04 and 05 side by side, ``-p
    wait_for_runs``), so that the comparison is the same whichever notebook finishes first. Prints what it waited
    for; ``wait_s`` 0 (JupyterLab, one notebook after the other) compares what is finished."""
    if not wait_s:
        return
    family = [replace(cfg, dec_layers=layers, num_queries=queries, query_indices=None, run_name=None)
              for layers, queries, _ in VARIANTS.values()]
    dirs = [c.run_dir for c in seeded(family, n_seeds)]
    left, waited = wait_for_runs(dirs, wait_s)
    if left:
        print(f"after {waited:.0f} s, {len(left)} of the {len(dirs)} runs of the comparison are unfinished "
              f"({', '.join(d.name for d in left)}): the comparison below uses the finished ones only")
    elif waited >= 1:
        print(f"waited {waited:.0f} s until the {len(dirs)} runs of the comparison were finished")


def arm_configs(cfg: RunConfig, make, arms: Sequence[str] = ()) -> list[RunConfig]:
    """``cfg`` and one config per recipe arm of ``arms`` (``make(recipe=arm)`` builds it from the notebook's
    parameters), each arm in its own run folders."""
    return [cfg, *(make(recipe=arm) for arm in arms if arm != cfg.recipe)]


def seeded(configs: Sequence[RunConfig], n_seeds: int | None = None) -> list[RunConfig]:
    """Every config of ``configs`` with ``n_seeds`` training seeds, one run folder each
    (:func:`~detr_nb_utils.training.config.seed_configs`; None: the profile's default, three)."""
    return [c for cfg in configs for c in seed_configs(cfg, n_seeds)]


def plan(runs: Sequence[RunConfig], jobs: int | None = None) -> pd.DataFrame:
    """The plan of ``runs`` (:func:`~detr_nb_utils.training.side_by_side.plan_runs`), its sentence printed: which
    will train, resume or only be read back, and about how long the rest takes, timed on this machine."""
    table = plan_runs(runs, jobs)
    print(plan_text(table))
    return table


def show_runs(records: Mapping[str, RunRecord], prefix: str, report_dir: str | Path) -> pd.DataFrame:
    """The loss curves (three views, training dashed) and AP curves of every run of ``records``, saved as
    ``<prefix>_loss_curves`` and ``<prefix>_ap_curves``, and the epoch table of the first (``<prefix>_epochs``),
    which it returns as saved, its run named in ``attrs``."""
    curves = {name: with_train_views(r) for name, r in records.items()}
    save_fig(plot_loss_curves(curves), f"{prefix}_loss_curves", report_dir)
    save_fig(plot_ap_curves(curves), f"{prefix}_ap_curves", report_dir)
    first = next(iter(records.values()))
    print(f"The epoch table: {first.run_dir.name}, the first seed of {len(records)}.")
    table = save_table(run_table(first), f"{prefix}_epochs", report_dir, floatfmt=".2f")
    table.attrs["run"] = first.run_dir.name
    return table


def variant_of_config(cfg: RunConfig) -> str:
    """The variant a config trains, as the analysis names it (``dec<layers>_q<queries>``, recipe and seed apart)."""
    return variant_name(cfg.dec_layers, cfg.num_queries)


def change_findings(records: Mapping[str, RunRecord], variant: str, n_resamples: int = 1000
                    ) -> tuple[pd.DataFrame, list[Finding]]:
    """What fine-tuning changed for ``variant``, per recipe arm among ``records``: AP at epoch 0, its change to the
    first fine-tuned and to the final epoch, and each arm against the original (:func:`~detr_nb_utils.analysis.arms
    .arm_table`), with 95% intervals over the validation images (and the seeds, from three)."""
    check_comparable(records)
    return arm_table(ApBootstrap(records, n_resamples), by_recipe(records), variant)


def against_baseline(cfg: RunConfig, variants: Sequence[str], prefix: str, report_dir: str | Path,
                     n_resamples: int = 1000, baselines: Sequence[str] | None = None
                     ) -> tuple[pd.DataFrame, list[Finding]]:
    """Each of ``variants`` against its baseline (``baselines``, default 03's :data:`BASELINE` for all), on the runs
    of ``cfg``'s recipe under ``cfg.out_dir``: the rows of the question's Holm family, saved as
    ``<prefix>_versus_baseline``, and their findings (printed)."""
    tables, findings = [], []
    for variant, baseline in zip(variants, baselines or [BASELINE] * len(variants)):
        table, found = versus_baseline(cfg.out_dir, variant, n_resamples, baseline, cfg.recipe)
        tables.append(table)
        findings += found
    versus = pd.concat([t for t in tables if len(t)]) if any(len(t) for t in tables) else pd.DataFrame()
    print(render(findings))
    return save_table(versus, f"{prefix}_versus_baseline", report_dir, floatfmt=".2f"), findings


def choice_run_name(cfg: RunConfig, strategy: str) -> str:
    """The run name of 05's choice of queries ``strategy`` (e.g. ``dec3_q50_most_matched``), with ``_<recipe>`` for
    a recipe arm other than the original, as the analysis reads it back."""
    arm = "" if cfg.recipe == ORIGINAL else f"_{cfg.recipe}"
    return f"{variant_of_config(cfg)}_{strategy}{arm}"


def recipe_advice(recipe: str, given: bool) -> str:
    """Which recipe arm 07 fine-tunes with, and why: asked for (``given``), or the default
    :data:`~detr_nb_utils.training.recipe.RECOMMENDED_RECIPE` and the measurement behind it (benchmarks/RESULTS.md).
    It points to 03's table of the arms without reading it: ``make demo`` runs 07 beside 03."""
    if given:
        return f"Recipe arm {recipe!r}, as asked."
    return (f"Recipe arm {recipe!r}, the default for your data: on the demo's own dataset (benchmarks/RESULTS.md, "
            "\"Recipe arms\") the checkpoint's own rates kept the classes COCO has but left the fresh ones at 0 AP, "
            "and the warm-up did no better than the original rates, which learn your classes. 03 measures the arms "
            "on the demo's baseline, where every class is known (its table 03_recipe_arms).")
