"""Galleries of what the detector gets wrong: its highest-scoring false positives and its largest missed objects,
each case as two panels side by side, the ground truth on the left and the prediction on the right.

Both read an :class:`~detr_nb_utils.analysis.errors.ErrorAnalysis` (which detection is which kind of error, which
object was missed) and the validation images (:meth:`~detr_nb_utils.analysis.diagnostics.RunDiagnostics.dataset`,
original pixels). Ground truth is drawn in white with its class; the case's object (the one a false positive
concerns, or the missed one) is drawn thick on the left and dashed on the right. The case's own false positive is
drawn thick in cyan with "name score"; the image's other detections thin in orange, unlabelled (a crowded image's
labels would hide the case). Used by notebooks 03 and 07; export with :func:`.figures.save_fig`.
"""
from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.patheffects import withStroke
from pycocotools import mask as mask_utils

from ..analysis.errors import ErrorAnalysis
from ..data.coco import CocoDetection
from .figures import image_hwc

GT_COLOUR, DET_COLOUR, CASE_COLOUR = "white", "orange", "cyan"


def _box(ax, x, y, w, h, colour, text: str = "", lw: float = 1.2, dashed: bool = False) -> None:
    ax.add_patch(Rectangle((x, y), w, h, fill=False, ec=colour, lw=lw, ls="--" if dashed else "-",
                           path_effects=[withStroke(linewidth=lw + 1.2, foreground="black")]))
    if text:
        ax.text(x, y, text, fontsize=6.5, color="black", va="bottom",
                bbox={"facecolor": colour, "alpha": 0.8, "pad": 0.8, "lw": 0})


def _pair(axes, image, objects: pd.DataFrame, shown: pd.DataFrame, names: Mapping[int, str], case_gt: int,
          case_det: int | None, left: str, right: str) -> None:
    """Ground truth (left) and predictions (right) of one image; ``case_gt``/``case_det`` drawn thick."""
    for ax in axes:
        ax.imshow(image_hwc(image))
        ax.set_xticks([]), ax.set_yticks([])
    for o in objects.itertuples():
        thick = o.gt_id == case_gt
        _box(axes[0], o.x, o.y, o.w, o.h, GT_COLOUR, names.get(o.category_id, str(o.category_id)),
             lw=2.5 if thick else 1.0)
    for d in shown.sort_values("score").itertuples():
        case = d.Index == case_det
        _box(axes[1], d.x, d.y, d.w, d.h, CASE_COLOUR if case else DET_COLOUR,
             f"{names.get(d.category_id, d.category_id)} {d.score:.2f}" if case else "", lw=2.5 if case else 0.8)
    if case_gt >= 0:  # where the object is, dashed, so the prediction can be read against it
        o = objects[objects["gt_id"] == case_gt].iloc[0]
        _box(axes[1], o.x, o.y, o.w, o.h, GT_COLOUR, lw=1.0, dashed=True)
    axes[0].set_title(left, fontsize=8)
    axes[1].set_title(right, fontsize=8)


def _grid(n: int, cols: int) -> tuple[Figure, list]:
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(3.0 * 2 * cols, 3.1 * rows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    return fig, [axes[k // cols, 2 * (k % cols):2 * (k % cols) + 2] for k in range(n)]


def _image(dataset: CocoDetection, image_id: int):
    return dataset.read_image(dataset.ids.index(int(image_id)))


def plot_false_positives(errors: ErrorAnalysis, dataset: CocoDetection, names: Mapping[int, str], n: int = 8,
                         cols: int = 2, min_score: float = 0.5) -> Figure:
    """The ``n`` highest-scoring false positives (scoring at least ``min_score``), each with its kind of error
    and the IoU with the object it concerns; left the image's ground truth, right its detections scoring at least
    ``min_score`` (the case in red)."""
    d = errors.detections
    shown_all = d[d["score"] >= min_score]
    cases = shown_all[~shown_all["kind"].isin(["true positive", "ignored"])].nlargest(n, "score")
    fig, pairs = _grid(max(len(cases), 1), cols)
    for axes, (index, case) in zip(pairs, cases.iterrows()):
        objects = errors.objects[errors.objects["image_id"] == case["image_id"]]
        about = f", IoU {case['iou']:.2f} with a {names.get(case['gt_category'], '?')}" if case["gt_id"] >= 0 else ""
        _pair(axes, _image(dataset, case["image_id"]), objects, shown_all[shown_all["image_id"] == case["image_id"]],
              names, int(case["gt_id"]), index, f"image {case['image_id']}: ground truth",
              f"{names.get(case['category_id'], '?')} {case['score']:.2f}: {case['kind']}{about}")
    if not len(cases):
        pairs[0][0].set_title(f"no false positive scores {min_score:g} or more", fontsize=9)
    fig.suptitle(f"The {len(cases)} highest-scoring false positives (score >= {min_score:g}); left: ground truth "
                 f"(white), right: the false positive (cyan), the object it concerns (dashed white) and the image's "
                 f"other detections >= {min_score:g} (thin orange)", fontsize=9)
    return fig


def plot_missed(errors: ErrorAnalysis, dataset: CocoDetection, names: Mapping[int, str], n: int = 8, cols: int = 2,
                min_score: float = 0.5) -> Figure:
    """The ``n`` largest objects no detection found (kind "missed": not even a wrong class or a loose box
    explains them), each beside the image's detections scoring at least ``min_score``. ``errors``: analysed at
    ``min_score`` (what a user of that threshold misses) or at 0 (what AP misses)."""
    missed = errors.objects[errors.objects["kind"] == "missed"].nlargest(n, "area")
    d = errors.detections
    fig, pairs = _grid(max(len(missed), 1), cols)
    for axes, case in zip(pairs, missed.itertuples()):
        objects = errors.objects[errors.objects["image_id"] == case.image_id]
        shown = d[(d["image_id"] == case.image_id) & (d["score"] >= min_score)]
        iou = np.asarray(mask_utils.iou(shown[["x", "y", "w", "h"]].to_numpy().tolist(),
                                        [[case.x, case.y, case.w, case.h]], [0])).reshape(-1)
        nearest = shown.index[int(iou.argmax())] if len(iou) and iou.max() > 0 else None
        near = "no detection touches it" if nearest is None else \
            f"nearest: {names.get(shown.loc[nearest, 'category_id'], '?')} {shown.loc[nearest, 'score']:.2f}, " \
            f"IoU {iou.max():.2f}"
        _pair(axes, _image(dataset, case.image_id), objects, shown, names, int(case.gt_id), nearest,
              f"image {case.image_id}: a {names.get(case.category_id, '?')} of {case.area:.0f} px² missed",
              f"{len(shown)} detections >= {min_score:g}; {near}")
    if not len(missed):
        pairs[0][0].set_title("no object missed", fontsize=9)
    fig.suptitle(f"The {len(missed)} largest missed objects; left: ground truth (white, the missed one thick), "
                 f"right: the missed object (dashed white), the detections scoring >= {min_score:g} (orange) and "
                 f"the nearest of them (cyan)",
                 fontsize=9)
    return fig
