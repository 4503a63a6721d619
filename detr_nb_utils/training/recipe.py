"""A run's recipe, and the declared recipe arms.

A run's **recipe** is everything in its configuration that decides how it trains and how it is scored, except the
variant (decoder layers, queries, which query slots), the training seed, and where and how it runs (device, threads,
workers, progress, paths; the precision is compared by what it computed in, :attr:`.runs.RunRecord.effective_precision`).
Two runs compare only when their recipes are equal: :func:`recipe_differences` names every field that differs, and
the analysis refuses the pair with the field and both folders (:func:`detr_nb_utils.analysis.comparison.check_comparable`).

A **recipe arm** is a declared change of recipe, one named value of ``RunConfig.recipe``, stored in every
``config.json``: runs of another arm are not refused but shown as their own family, compared with the original's
runs only on what the arm changes (:data:`ARM_FIELDS`). The arms ask why fine-tuning from a converged checkpoint
loses AP. The original study restarts the checkpoint, which finished its training at 1e-5 (backbone 1e-6), at ten
times those rates with a fresh AdamW state, so every weight moves by about the learning rate at every step:

``"original"``
    the original study's recipe: AdamW 1e-4, backbone 1e-5, constant.
``"checkpoint_rates"``
    the rates the published DETR-R50 finished its training at: 1e-5, backbone 1e-6 (the demo runs the same values).
``"warmup"``
    the original rates, reached by a linear warm-up over the first :data:`WARMUP_STEPS` optimizer steps (from
    ``lr / WARMUP_STEPS``), then constant (:func:`detr_nb_utils.training.engine.build_scheduler`).

Used by :func:`.config.make_config` (``recipe=...``), the engine (the warm-up), and the analysis (families, refusals).
"""
from __future__ import annotations

from collections.abc import Mapping

#: optimizer steps of the warm-up arm: measured in the demo (benchmarks/RESULTS.md, "Recipe arms")
WARMUP_STEPS = 100
#: recipe arm -> the RunConfig fields it sets (over the profile's defaults; a value given explicitly must agree)
RECIPES: dict[str, dict] = {
    "original": {},
    "checkpoint_rates": {"lr": 1e-5, "lr_backbone": 1e-6},
    "warmup": {"warmup_steps": WARMUP_STEPS},
}
ORIGINAL = "original"
#: the arm notebook 07 fine-tunes your data with unless told otherwise: the one the demo's measurement of the arms on
#: its own dataset supports (benchmarks/RESULTS.md, "Recipe arms"): the checkpoint's rates kept the classes COCO has
#: but left the fresh ones at 0 AP, and the warm-up did no better than the original rates
RECOMMENDED_RECIPE = "original"
#: the arms 03 runs beside the original for the baseline, by profile: both in the demo, none in the study (one
#: parameter away: ``-p recipe_arms '["checkpoint_rates", "warmup"]'``, three seeds each on the GPU's budget)
DEFAULT_ARMS = {"study": (), "demo": ("checkpoint_rates", "warmup")}
#: what an arm may change: runs of different arms are compared on every other recipe field
ARM_FIELDS = ("recipe", "lr", "lr_backbone", "warmup_steps")
#: the variant a notebook trains: not part of the recipe
VARIANT_FIELDS = ("dec_layers", "num_queries", "query_indices")
#: where and how a run executes, and its seed: not part of the recipe (the split's content is compared through the
#: split manifest; the precision through what it computed in)
RUNTIME_FIELDS = ("seed", "device", "precision", "channels_last", "threads", "num_workers", "progress", "out_dir",
                  "run_name", "data_root", "image_dir", "annotation_file", "split_dir", "dataset_dir",
                  "train_annotation_file", "train_image_dir", "val_annotation_file", "val_image_dir")


def recipe_fields(config: Mapping) -> dict:
    """The recipe part of a config (``RunConfig.to_dict()``): every field but :data:`VARIANT_FIELDS` and
    :data:`RUNTIME_FIELDS`."""
    return {k: v for k, v in config.items() if k not in VARIANT_FIELDS + RUNTIME_FIELDS}


def recipe_differences(a: Mapping, b: Mapping) -> list[tuple[str, object, object]]:
    """``(field, a's value, b's value)`` for every recipe field in which two configs (``to_dict()``) differ. Runs of
    one arm must agree on every recipe field; runs of two declared arms on all but :data:`ARM_FIELDS`."""
    ra, rb = recipe_fields(a), recipe_fields(b)
    skip = ARM_FIELDS if ra.get("recipe") != rb.get("recipe") else ()
    return [(k, ra.get(k), rb.get(k)) for k in sorted(set(ra) | set(rb)) if k not in skip and ra.get(k) != rb.get(k)]


def recipe_values(recipe: str, given: Mapping[str, object]) -> dict:
    """The fields arm ``recipe`` sets, after checking that ``given`` (the values passed explicitly, None meaning
    "the default") does not contradict them. Raises ``ValueError`` naming the arm and the field."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe = {recipe!r} is invalid: must be one of {sorted(RECIPES)}")
    arm = RECIPES[recipe]
    for name, value in arm.items():
        if given.get(name) is not None and given[name] != value:
            raise ValueError(f"recipe={recipe!r} sets {name}={value!r}, but {name}={given[name]!r} was given too: "
                             f"leave {name} out, or use recipe='original' with your own {name}")
    return dict(arm)
