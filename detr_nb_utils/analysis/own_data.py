"""Does class-head surgery by name help? AP of the classes that start from a matching COCO row against those that
start fresh, before and after fine-tuning, and against the whole head re-initialised
(notebook 07_your_dataset). And what fine-tuning did to one run on your validation images (:func:`run_change`), which
are not the split's.

A class group's AP is COCO AP on the ground truth and detections of those categories only (:func:`subset_coco`), so
it is the mean of the group's per-category APs with COCO's own matching; its interval comes from the bootstrap of
:mod:`.bootstrap` over validation images, and the difference between two runs (same images, paired resamples) from
:func:`~.bootstrap.ap_difference`. One training seed per run: the intervals cover the images, not the seeds.
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from pycocotools.coco import COCO

from ..data.label_map import LabelMap
from ..training.runs import CATEGORIES, CLASS_HEAD, RunRecord, load_detections
from .bootstrap import MatchedDetections, ap_difference, ap_interval, common_images
from .findings import Finding, interval_verdict

#: the groups of classes by where their class-head row started (``class_head.csv``'s ``from``)
GROUPS = ("matched", "fresh")


def subset_coco(coco_gt: COCO, cat_ids: Sequence[int]) -> COCO:
    """A copy of ``coco_gt`` with only the categories ``cat_ids`` and their annotations (every image kept)."""
    keep = set(int(c) for c in cat_ids)
    sub = COCO()
    sub.dataset = {"images": coco_gt.dataset["images"],
                   "categories": [c for c in coco_gt.dataset["categories"] if c["id"] in keep],
                   "annotations": [a for a in coco_gt.dataset["annotations"] if a["category_id"] in keep]}
    with contextlib.redirect_stdout(io.StringIO()):
        sub.createIndex()
    return sub


def class_groups(record: RunRecord) -> dict[str, list[int]]:
    """The category ids of the classes a run (``class_head="match"``) started from a COCO row ("matched") and from a
    fresh row ("fresh"), read from its ``class_head.csv`` and ``categories.json``."""
    sources = pd.read_csv(record.run_dir / CLASS_HEAD, index_col=0)
    sources = sources[sources["name"] != "no object"]
    labels = LabelMap.load(record.run_dir / CATEGORIES)
    fresh = (sources["from"] == "fresh").to_numpy()
    return {group: labels.to_id(sources.index[keep]).tolist()
            for group, keep in (("matched", ~fresh), ("fresh", fresh))}


def _matched(coco_gt: COCO, record: RunRecord, epoch: int, cat_ids: Sequence[int]) -> MatchedDetections:
    dets = load_detections(record.run_dir, epoch)
    keep = np.isin(dets["category_id"], np.asarray(cat_ids))
    img_ids = common_images(dets)
    return MatchedDetections(subset_coco(coco_gt, cat_ids), {k: v[keep] for k, v in dets.items()}, img_ids)


def group_ap_table(coco_gt: COCO, records: Mapping[str, RunRecord], groups: Mapping[str, Sequence[int]],
                   n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """AP (in points) of each class group, for each run (``records``: label -> run, e.g. "match", "reinit"), at
    epoch 0 and at the run's final epoch, with its 95% interval over validation images. Index (run, group),
    columns (epoch 0, final) x (AP, low, high)."""
    rows = {}
    for label, record in records.items():
        for group, cats in groups.items():
            for when, epoch in (("epoch 0", 0), ("final", record.final_epoch)):
                ci = ap_interval(_matched(coco_gt, record, epoch, cats), n_resamples, seed)["AP"]
                rows[(label, group, when)] = {k: 100 * ci[v] for k, v in (("AP", "point"), ("low", "low"),
                                                                          ("high", "high"))}
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis(["run", "group", "when"])
    return table.unstack("when").swaplevel(axis=1).sort_index(axis=1, level=0, sort_remaining=False)


def group_difference(coco_gt: COCO, a: RunRecord, b: RunRecord, cats: Sequence[int], epoch_a: int | None = None,
                     epoch_b: int | None = None, n_resamples: int = 1000, seed: int = 0) -> dict:
    """AP(a) - AP(b) in points on the classes ``cats`` (default epochs: each run's final), paired over the same
    resampled validation images: ``{"AP", "low", "high", "excludes_zero"}``."""
    ea, eb = a.final_epoch if epoch_a is None else epoch_a, b.final_epoch if epoch_b is None else epoch_b
    d = ap_difference(_matched(coco_gt, a, ea, cats), _matched(coco_gt, b, eb, cats), n_resamples, seed)["AP"]
    return {"AP": 100 * d["point"], "low": 100 * d["low"], "high": 100 * d["high"],
            "excludes_zero": d["excludes_zero"]}


def _ci(d: Mapping) -> str:
    return f"{d['AP']:+.1f} points (95% interval {d['low']:+.1f} to {d['high']:+.1f})"


def surgery_takeaway(table: pd.DataFrame, diffs: Mapping[str, Mapping], n_images: int, epochs: int) -> str:
    """The measurement in sentences, every number from ``table`` (:func:`group_ap_table`, runs "match" and
    "reinit") and ``diffs`` (:func:`group_difference` of match - reinit at the final epoch, per group)."""
    m, r = table.loc["match"], table.loc["reinit"]
    ap = {(run, group, when): t.loc[group, (when, "AP")] for run, t in (("match", m), ("reinit", r))
          for group in GROUPS for when in ("epoch 0", "final")}
    verdict = {True: "beyond", False: "within"}
    lines = [
        f"Before any training, the classes that start from their COCO row score "
        f"{ap['match', 'matched', 'epoch 0']:.1f} AP and the fresh ones {ap['match', 'fresh', 'epoch 0']:.1f}; "
        f"with the whole head re-initialised they start at {ap['reinit', 'matched', 'epoch 0']:.1f} and "
        f"{ap['reinit', 'fresh', 'epoch 0']:.1f}.",
        f"After {epochs} epochs: matched classes {ap['match', 'matched', 'final']:.1f} with the surgery against "
        f"{ap['reinit', 'matched', 'final']:.1f} re-initialised, a difference of {_ci(diffs['matched'])}, "
        f"{verdict[diffs['matched']['excludes_zero']]} the noise of the {n_images} validation images; fresh classes "
        f"{ap['match', 'fresh', 'final']:.1f} against {ap['reinit', 'fresh', 'final']:.1f}, "
        f"{_ci(diffs['fresh'])}, {verdict[diffs['fresh']['excludes_zero']]} it.",
        "One training seed per run: the intervals cover the validation images, not the training seed.",
    ]
    return " ".join(lines)


def run_change(record: RunRecord, gt: COCO, n_resamples: int = 1000) -> tuple[pd.DataFrame, list[Finding]]:
    """One run's AP change from epoch 0 to its final epoch on the validation set ``gt`` (07: your data, which is not
    the split's), paired over ``n_resamples`` resamples of the images: a table and findings shaped as
    :func:`~detr_nb_utils.notebook.fine_tune.change_findings`' (one recipe, one seed), for
    :func:`~detr_nb_utils.notebook.takeaways.finetune_lines`."""
    recipe, final = record.config.recipe, record.final_epoch
    if not final:
        return pd.DataFrame(columns=["seeds", "epoch-0 AP", "final change"]), []
    zero, last = load_detections(record.run_dir, 0), load_detections(record.run_dir, final)
    img_ids = common_images(zero, last)
    before, after = MatchedDetections(gt, zero, img_ids), MatchedDetections(gt, last, img_ids)
    d = ap_difference(after, before, n_resamples)["AP"]
    table = pd.DataFrame({"seeds": 1, "epoch-0 AP": 100 * before.point[0], "final change": 100 * d["point"],
                          "final change low": 100 * d["low"], "final change high": 100 * d["high"]},
                         index=pd.Index([recipe], name="recipe"))
    finding = Finding(f"{record.run_dir.name}, recipe {recipe} (1 seed): AP change from epoch 0 to the final epoch",
                      100 * d["point"], 100 * d["low"], 100 * d["high"],
                      f"the {len(img_ids)} validation images (one run)",
                      interval_verdict(d["low"], d["high"]), data={"label": f"{recipe}: epoch {final} - epoch 0"})
    return table, [finding]
