"""What the runs cannot tell, computed from the run folders (the team report's Limitations section (:func:`study_limitations`), and its
Method's seeds and arms): which world the numbers come from (the demo's tiny DETR or DETR-R50 on COCO), how many
training seeds and validation images the intervals rest on, how many epochs, one split, and what the recipe
confounds with fine-tuning (the variants whose change from epoch 0 no recipe arm separates from the restart). Every
number is read from the runs' ``config.json`` and metrics; nothing is typed by hand.
"""
from __future__ import annotations

from collections.abc import Mapping

from ..training.recipe import ORIGINAL, RECIPES
from ..training.runs import RunRecord
from .run_bootstrap import MIN_SEEDS_RESAMPLED
from .conclusions import MIN_IMAGES
from .run_sets import by_variant

Families = Mapping[str, Mapping[str, RunRecord]]


def _seeds(runs: Mapping[str, RunRecord]) -> dict[str, list[int]]:
    return {v: sorted(r.config.seed for r in g.values()) for v, g in by_variant(runs).items()}


def _n_images(records: list[RunRecord]) -> int | None:
    counts = [int(r.metrics["val_num_images"].dropna().iloc[-1]) for r in records
              if "val_num_images" in r.metrics and r.metrics["val_num_images"].notna().any()]
    return min(counts) if counts else None


def seeds_sentence(families: Families) -> str:
    """How many training seeds each variant of the original recipe has, and which."""
    seeds = _seeds(families.get(ORIGINAL, {}))
    same = {tuple(s) for s in seeds.values()}
    if len(same) == 1:
        s = next(iter(same))
        return f"{len(s)} training seed{'s' * (len(s) != 1)} per variant ({', '.join(map(str, s))})"
    return "training seeds per variant: " + "; ".join(f"{v} {len(s)} ({', '.join(map(str, s))})"
                                                      for v, s in seeds.items())


def arms_sentence(families: Families) -> str:
    """Which recipe arms ran, for which variants and with how many seeds."""
    arms = {arm: _seeds(runs) for arm, runs in families.items() if arm != ORIGINAL}
    if not arms:
        return "no recipe arm beside the original"
    return "; ".join(f"{arm} for {', '.join(f'{v} ({len(s)} seeds)' for v, s in seeds.items())}"
                     for arm, seeds in arms.items())


def study_limitations(families: Families) -> list[str]:
    """The Limitations, one item each: the world, the seeds, the validation images, the epochs and the split, what
    the recipe confounds, and what the published numbers can be compared with."""
    everything = [r for runs in families.values() for r in runs.values()]
    if not everything:
        return ["No run folder: nothing is measured yet."]
    cfg = next(iter(families.get(ORIGINAL, {}).values()), everything[0]).config
    out = []
    if cfg.backbone == "tiny":
        out.append("**Demo or study.** These are the demo's runs: the method at full length on a tiny DETR and "
                   "synthetic shapes, so the numbers check the pipeline and show how to read it; no number here is a "
                   "claim about DETR-R50 on COCO (`make study` on a GPU makes those).")
    else:
        out.append("**One model, one dataset.** DETR-R50 fine-tuned on one split of COCO val2017; another detector "
                   "or another dataset may rank the decoders differently.")
    seeds = _seeds(families.get(ORIGINAL, {}))
    few = [v for v, s in seeds.items() if len(s) < MIN_SEEDS_RESAMPLED]
    out.append(f"**Seeds.** {seeds_sentence(families).capitalize()}. "
               + (f"With fewer than {MIN_SEEDS_RESAMPLED} ({', '.join(few)}) the intervals cover the images only and "
                  "the seeds' spread is given beside them." if few else
                  "Each interval redraws the seeds, but a handful of seeds bounds the training noise only roughly."))
    n = _n_images(everything)
    if n is not None:
        coarse = (f" Fewer than {MIN_IMAGES}: AP moves in coarse steps and small differences say little."
                  if n < MIN_IMAGES else "")
        out.append(f"**Images.** {n} validation images carry every interval; the best fine-tuned epoch (secondary) "
                   f"is picked on the same images it is scored on.{coarse}")
    out.append(f"**Epochs and split.** {cfg.epochs} epochs of fine-tuning, one split (seed {cfg.split_seed}: "
               f"{cfg.n_train} training, {cfg.n_val} validation images); a longer schedule or another split is not "
               "measured.")
    arms = {v for arm, runs in families.items() if arm != ORIGINAL for v in _seeds(runs)}
    variants = list(seeds)
    bare = [v for v in variants if v not in arms]
    declared = [a for a in RECIPES if a != ORIGINAL]
    out.append("**What the recipe confounds.** Every variant is fine-tuned with the original study's recipe (a "
               f"restart at learning rate {cfg.lr:g}, backbone {cfg.lr_backbone:g}, with a fresh optimizer state), so "
               "its change from epoch 0 is the variant and the restart together. "
               + (f"The recipe arms ({arms_sentence(families)}) separate the two for "
                  f"{', '.join(sorted(arms))} only" + (f"; for {', '.join(bare)} they are not separated."
                                                       if bare else ".") if arms else
                  f"No recipe arm ran ({', '.join(declared)} are declared), so the two are not separated."))
    out.append("**Published numbers.** The paper's AP (500 epochs on all of COCO) and the original study's losses "
               "come from other images and carry no interval: they are set beside ours, never subtracted.")
    return out
