"""Where does a smaller decoder lose? Each variant against the baseline on small, medium and large objects and on
crowded images, with paired intervals (06_analysis).

A group's AP is COCO AP on part of the validation data: a size range (COCOeval's area ranges, other sizes
ignored) or a set of images (crowded: at least ``min_objects`` objects; the others). Every group is scored on the
same bootstrap resamples of all the validation images as :class:`~.run_bootstrap.ApBootstrap` (an image group counts
only its images of each resample), so differences are paired: between variants, and between a group and all
objects. For each variant and group the table gives ``change`` = AP(variant) - AP(baseline) on that group, and
``beyond overall`` = that change minus the change on all objects: negative when the variant loses more on that
group than it does overall, with the interval saying whether that is more than the images' noise. Seeds are
combined as the headline combines them (mean; each resample redraws them). Variants with fewer queries than the
baseline are compared at 50 detections per image (``AP@50det``, :data:`.comparison.CAP`), as the headline does.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..training.runs import RunRecord, load_detections
from .bootstrap import MatchedDetections, per_image_max, percentile_interval, resampled_ap
from .run_bootstrap import ApBootstrap, Groups, runs_of
from .comparison import CAP

#: the groups, in the table's order: COCO's size ranges, then images by how many objects they hold
GROUPS = ("all objects", "small", "medium", "large", "crowded images", "other images")


def objects_per_image(gt, img_ids: Sequence[int]) -> np.ndarray:
    """Non-crowd objects of each image of ``img_ids`` ``[images]``."""
    return np.array([sum(1 for a in gt.imgToAnns.get(i, []) if not a.get("iscrowd", 0)) for i in img_ids])


class SubgroupAp:
    """AP of every run on each of :data:`GROUPS`, on ``bootstrap``'s images and resamples (paired with its
    headline). ``min_objects``: an image with at least this many objects is crowded (None: the 90th percentile
    of objects per image, so about the most crowded tenth; at least 2)."""

    def __init__(self, bootstrap: ApBootstrap, min_objects: int | None = None) -> None:
        self.bootstrap = bootstrap
        self.objects = objects_per_image(bootstrap.gt, bootstrap.img_ids)
        if min_objects is None:
            min_objects = max(2, math.ceil(np.percentile(self.objects, 90))) if len(self.objects) else 2
        self.min_objects = min_objects
        crowded = self.objects >= min_objects
        self.masks = {"crowded images": crowded.astype(float), "other images": (~crowded).astype(float)}
        self._cache: dict[tuple, tuple[float, np.ndarray]] = {}

    def group_sizes(self) -> dict[str, dict[str, int]]:
        """Per group: its ``objects`` and ``images`` (holding at least one of its objects, or in the group)."""
        areas = {s: [] for s in ("small", "medium", "large")}
        for img_id in self.bootstrap.img_ids:
            for a in self.bootstrap.gt.imgToAnns.get(img_id, []):
                if not a.get("iscrowd", 0):
                    size = "small" if a["area"] < 32 ** 2 else "medium" if a["area"] <= 96 ** 2 else "large"
                    areas[size].append(img_id)
        out = {"all objects": {"objects": int(self.objects.sum()), "images": len(self.objects)}}
        out |= {s: {"objects": len(v), "images": len(set(v))} for s, v in areas.items()}
        out |= {g: {"objects": int(self.objects[m > 0].sum()), "images": int(m.sum())} for g, m in self.masks.items()}
        return out

    def run_ap(self, record: RunRecord, epoch: int, group: str, max_det: int | None = None
               ) -> tuple[float, np.ndarray]:
        """AP (fraction) of one run's epoch on ``group``: on all the images, and on each resample ``[B]``."""
        key = (str(record.run_dir), epoch, group, max_det)
        if key not in self._cache:
            area = group if group in ("small", "medium", "large") else "all"
            dets = load_detections(record.run_dir, epoch)
            cap = max_det if max_det is not None and per_image_max(dets) > max_det else None
            matched = self._matched(record, epoch, area, cap, dets)
            mask = self.masks.get(group, np.ones(len(self.bootstrap.img_ids)))
            point = float(matched.accumulator.ap(mask[:, None])[0][0])
            self._cache[key] = (point, resampled_ap(matched, self.bootstrap.counts * mask[:, None]))
        return self._cache[key]

    def _matched(self, record, epoch, area, cap, dets) -> MatchedDetections:
        key = (str(record.run_dir), epoch, area, cap, "matched")
        if key not in self._cache:
            self._cache[key] = MatchedDetections(self.bootstrap.gt, dets, self.bootstrap.img_ids, cap, area)
        return self._cache[key]

    def _variant(self, variant: str, runs: Sequence[RunRecord], group: str, max_det: int | None):
        parts = [self.run_ap(r, r.final_epoch, group, max_det) if r.final_epoch is not None else None for r in runs]
        return self.bootstrap.combine_seeds(variant, parts)

    def table(self, groups: Groups, baseline: str = "dec6_q100") -> pd.DataFrame:
        """Every variant of ``groups`` but ``baseline`` against it, at the final epoch, on each of :data:`GROUPS`:
        ``objects``, ``images``, ``AP`` and ``baseline AP``, ``change`` (variant - baseline) and ``beyond overall``
        (change on the group - change on all objects), each with ``low``/``high`` (95%, paired) and
        ``excludes 0``; points. ``compared on``: AP, or ``AP@50det`` when the variant has fewer queries.
        ``attrs``: ``min_objects`` (crowded images), ``n_images``, ``n_resamples``, ``baseline``."""
        if baseline not in groups:
            raise ValueError(f"SubgroupAp.table: no runs of the baseline {baseline!r} (variants: {sorted(groups)})")
        base = runs_of(groups[baseline])
        sizes, rows = self.group_sizes(), []
        for variant, group in groups.items():
            if variant == baseline:
                continue
            runs = runs_of(group)
            fewer = runs[0].config.num_queries < base[0].config.num_queries
            cap = CAP if fewer else None
            at = {g: (self._variant(variant, runs, g, cap), self._variant(baseline, base, g, cap)) for g in GROUPS}
            if any(a is None or b is None for a, b in at.values()):
                continue
            overall = at["all objects"][0][1] - at["all objects"][1][1]
            overall_point = at["all objects"][0][0] - at["all objects"][1][0]
            for g, (a, b) in at.items():
                row = {"variant": variant, "group": g, **sizes[g], "compared on": "AP@50det" if fewer else "AP",
                       "AP": 100 * a[0], "baseline AP": 100 * b[0]}
                if sizes[g]["objects"] == 0:  # no AP to compare: the row says so with its 0 objects
                    rows.append(row)
                    continue
                change = percentile_interval(a[0] - b[0], a[1] - b[1])
                beyond = percentile_interval(a[0] - b[0] - overall_point, a[1] - b[1] - overall)
                for name, d in (("change", change), ("beyond overall", beyond)):
                    row |= {name: 100 * d["point"], f"{name} low": 100 * d["low"], f"{name} high": 100 * d["high"],
                            f"{name} excludes 0": bool(d["low"] > 0 or d["high"] < 0)}
                rows.append(row)
        # no variant beside the baseline: no rows, the columns still there
        table = pd.DataFrame(rows) if rows else pd.DataFrame(columns=["variant", "group", "objects", "images",
                                                                      "compared on", "AP", "baseline AP"])
        table.attrs.update(min_objects=self.min_objects, n_images=len(self.bootstrap.img_ids),
                           n_resamples=self.bootstrap.n_resamples, baseline=baseline,
                           units=dict.fromkeys(("AP", "baseline AP", "change", "beyond overall"), "points"))
        return table


def _ci(row: pd.Series, name: str) -> str:
    return f"{row[name]:+.1f} points (95% interval {row[f'{name} low']:+.1f} to {row[f'{name} high']:+.1f})"


def subgroup_sentences(table: pd.DataFrame) -> list[str]:
    """One sentence per variant and group of :meth:`SubgroupAp.table` (every number from it): its change against
    the baseline there and whether it loses more there than overall, beyond the images' noise or within it."""
    out = []
    for _, r in table.iterrows():
        if r["objects"] == 0 or np.isnan(r["change"]):
            out.append(f"{r['variant']}, {r['group']}: no AP ({r['objects']} objects in these images).")
            continue
        if r["group"] == "all objects":
            out.append(f"{r['variant']} against {table.attrs.get('baseline', 'the baseline')}, all objects: "
                       f"{_ci(r, 'change')} ({r['compared on']}).")
            continue
        side = "worse" if r["beyond overall"] < 0 else "better"
        verdict = "beyond" if r["beyond overall excludes 0"] else "within"
        group = r["group"] + (f" (at least {table.attrs['min_objects']} objects each)"
                              if r["group"] == "crowded images" and "min_objects" in table.attrs else "")
        out.append(f"{r['variant']}, {group} ({r['objects']} objects in {r['images']} images): "
                   f"{_ci(r, 'change')}; that is {abs(r['beyond overall']):.1f} points {side} than its change on all "
                   f"objects (95% interval {r['beyond overall low']:+.1f} to {r['beyond overall high']:+.1f}), "
                   f"{verdict} the noise of the images.")
    return out
