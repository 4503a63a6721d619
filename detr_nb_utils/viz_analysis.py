"""Figures of the analysis (issue 7): query match counts, query usage (the paper's Fig. 7) and attention maps
over an image (Figs. 3 and 6), plus :func:`interactive_attention`, a widget version for JupyterLab.

Like :mod:`detr_nb_utils.viz`, every function takes numbers already computed (by :mod:`detr_nb_utils.queries`
and :mod:`detr_nb_utils.attention`) and returns a :class:`matplotlib.figure.Figure`, exported with
``viz.save_fig``. Images are uint8 ``[3,H,W]`` tensors as from ``CocoDetection.read_image`` (or ``[H,W,3]``
arrays). Used by 02_checkpoint_inspection (attention), 05_reduced_queries and 06_analysis.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .attention import AttentionRecord, decoder_attention_of, encoder_attention_at, map_extent

LARGE_BOX = 0.5  # sqrt(w·h) of a box (image fractions) that gets the full "large" colour in Fig. 7


def _hwc(image) -> np.ndarray:
    """``[3,H,W]`` tensor or ``[H,W,3]`` array -> ``[H,W,3]`` array."""
    if isinstance(image, torch.Tensor):
        return image.permute(1, 2, 0).cpu().numpy() if image.shape[0] == 3 else image.cpu().numpy()
    return np.asarray(image)


def _grid(n: int, cols: int, size: float) -> tuple[Figure, np.ndarray]:
    rows = max(1, -(-n // cols))
    cols = min(cols, max(n, 1))
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes.flat


def plot_match_counts(counts: Sequence[int] | np.ndarray,
                      selections: Mapping[str, Sequence[int]] | None = None) -> Figure:
    """How often each query slot was matched to an object (from :func:`~detr_nb_utils.queries.query_match_counts`),
    one bar per slot, with the slots each named selection keeps (e.g. ``{"first": ..., "most_matched": ...}``)
    marked in a strip underneath."""
    counts = np.asarray(counts)
    selections = dict(selections or {})
    fig, (ax, strip) = plt.subplots(2, 1, figsize=(10, 3.2 + 0.25 * len(selections)), sharex=True,
                                    height_ratios=[4, max(len(selections), 0.01)], layout="constrained")
    ax.bar(np.arange(len(counts)), counts, width=0.85, color="tab:blue")
    ax.set(ylabel="matches", title=f"Matches per query slot (Hungarian matcher, final layer; "
                                   f"{int(counts.sum())} objects)")
    for row, (name, slots) in enumerate(selections.items()):
        strip.scatter(list(slots), [row] * len(slots), marker="|", s=60, color=plt.cm.tab10(row + 1))
    strip.set_yticks(range(len(selections)), list(selections))
    strip.set_ylim(-0.5, len(selections) - 0.5)
    strip.set_xlabel("query slot")
    return fig


def box_colours(w: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Fig. 7's colour code, ``[n,3]`` RGB: green for small boxes, red for large wide ones, blue for large tall
    ones (``w, h``: box size as fractions of the image)."""
    w, h = np.asarray(w, dtype=float), np.asarray(h, dtype=float)
    large = np.clip(np.sqrt(w * h) / LARGE_BOX, 0, 1)
    wide = w / np.maximum(w + h, 1e-9)
    return np.stack([large * wide, 1 - large, large * (1 - wide)], axis=1)


def plot_query_usage(records: pd.DataFrame, slots: Sequence[int] | None = None, cols: int = 10,
                     objects_only: bool = False, title: str = "") -> Figure:
    """The paper's Fig. 7: per query slot, the centres of its predicted boxes in the unit square (each box
    normalised to its image), coloured by :func:`box_colours`. ``records``: from
    :func:`~detr_nb_utils.queries.query_usage`; ``slots``: which to draw (default all, by slot id);
    ``objects_only``: only predictions that are not "no object"."""
    if objects_only:
        records = records[records["is_object"]]
    slots = sorted(records["slot"].unique()) if slots is None else list(slots)
    fig, axes = _grid(len(slots), cols, 1.5)
    by_slot = dict(tuple(records.groupby("slot")))
    for ax, slot in zip(axes, slots):
        r = by_slot.get(slot, records.iloc[:0])
        ax.scatter(r["cx"], r["cy"], s=3, c=box_colours(r["w"], r["h"]) if len(r) else None, linewidths=0)
        ax.set(xlim=(0, 1), ylim=(1, 0), xticks=[], yticks=[], aspect="equal")
        ax.set_title(f"slot {slot} ({len(r)})", fontsize=7)
    fig.suptitle(title or "Box centres per query slot (green small, red large wide, blue large tall)", fontsize=9)
    return fig


def _overlay(ax, image: np.ndarray, amap: torch.Tensor, extent: tuple[float, ...], title: str) -> None:
    """``image`` with the attention map ``amap`` ``[h_i,w_i]`` drawn over the pixels it covers."""
    ax.imshow(image)
    ax.imshow(amap.numpy(), extent=extent, cmap="inferno", alpha=0.6, interpolation="bilinear")
    ax.set(xlim=(0, image.shape[1]), ylim=(image.shape[0], 0), title=title)
    ax.axis("off")


def plot_encoder_attention(image, record: AttentionRecord, points_yx: Sequence[tuple[float, float]],
                           layer: int = -1, image_index: int = 0, cols: int = 4) -> Figure:
    """Encoder self-attention (paper Fig. 3): for each point ``(y, x)`` (pixels of ``image``), where its feature
    cell attends to in encoder ``layer`` (default the last), drawn over the image; the point is a cyan cross."""
    image = _hwc(image)
    size, extent = image.shape[:2], map_extent(record, image_index, image.shape[:2])
    fig, axes = _grid(len(points_yx), cols, 3.2)
    for ax, (y, x) in zip(axes, points_yx):
        amap = encoder_attention_at(record, layer, image_index, (y, x), size)
        _overlay(ax, image, amap, extent, f"point ({y:.0f}, {x:.0f})")
        ax.plot([x], [y], "x", color="cyan", ms=9, mew=2)
    n = len(record.encoder)
    fig.suptitle(f"Encoder self-attention, layer {layer % n + 1} of {n}, at chosen points", fontsize=9)
    return fig


def plot_decoder_attention(image, record: AttentionRecord, objects: pd.DataFrame,
                           names: Mapping[int, str] | None = None, layer: int = -1, image_index: int = 0,
                           cols: int = 4) -> Figure:
    """Decoder cross-attention (paper Fig. 6): for each detected object (rows of
    :func:`~detr_nb_utils.attention.detected_objects`), where its query looks in decoder ``layer`` (default the
    last), drawn over the image with the object's box."""
    image = _hwc(image)
    (hh, ww), names = image.shape[:2], names or {}
    extent = map_extent(record, image_index, (hh, ww))
    fig, axes = _grid(len(objects), cols, 3.2)
    for ax, obj in zip(axes, objects.itertuples()):
        amap = decoder_attention_of(record, layer, image_index, int(obj.query))
        label = names.get(int(obj.label), int(obj.label))
        _overlay(ax, image, amap, extent, f"query {obj.query}: {label} {obj.score:.2f}")
        ax.add_patch(Rectangle(((obj.cx - obj.w / 2) * ww, (obj.cy - obj.h / 2) * hh), obj.w * ww, obj.h * hh,
                               fill=False, ec="cyan", lw=1.5))
    if len(objects) == 0:
        axes[0].set_title("no detection above the threshold")
    n = len(record.decoder)
    fig.suptitle(f"Decoder cross-attention, layer {layer % n + 1} of {n}, of each detected object", fontsize=9)
    return fig


def interactive_attention(image, record: AttentionRecord, objects: pd.DataFrame,
                          points_yx: Sequence[tuple[float, float]], names: Mapping[int, str] | None = None,
                          image_index: int = 0, interactive: bool = False):
    """Attention maps to explore: a slider over the detected ``objects`` (decoder cross-attention, last layer)
    and a dropdown over ``points_yx`` (encoder self-attention, last layer).

    ``interactive=True`` (a live JupyterLab kernel; the notebooks pass their ``progress`` policy) returns an
    ipywidgets box to display. ``interactive=False`` (headless papermill / nbval runs, where widgets would
    leave only state behind) returns the plain figures ``[decoder figure, encoder figure]``.
    """
    if not interactive:
        return [plot_decoder_attention(image, record, objects, names, image_index=image_index),
                plot_encoder_attention(image, record, points_yx, image_index=image_index)]
    import ipywidgets as widgets
    from IPython.display import display

    def show(fig: Figure) -> None:
        display(fig)
        plt.close(fig)

    def one_object(i: int) -> None:
        show(plot_decoder_attention(image, record, objects.iloc[[i]], names, image_index=image_index, cols=1))

    def one_point(i: int) -> None:
        show(plot_encoder_attention(image, record, [points_yx[i]], image_index=image_index, cols=1))

    slider = widgets.IntSlider(0, 0, max(len(objects) - 1, 0), description="object")
    menu = widgets.Dropdown(options=[(f"({y:.0f}, {x:.0f})", i) for i, (y, x) in enumerate(points_yx)],
                            description="point")
    left = widgets.VBox([slider, widgets.interactive_output(one_object, {"i": slider})]) if len(objects) else \
        widgets.HTML("no detection above the threshold")
    right = widgets.VBox([menu, widgets.interactive_output(one_point, {"i": menu})])
    return widgets.HBox([left, right])


def plot_ap_intervals(table: pd.DataFrame, columns: Sequence[str] = ("epoch-0 AP", "best AP")) -> Figure:
    """AP per variant with its 95% bootstrap interval as error bars, one marker per column of ``table`` (from
    :func:`detr_nb_utils.intervals.zero_shot_table`: ``<column>``, ``<column> low``, ``<column> high``, percent)."""
    fig, ax = plt.subplots(figsize=(1.2 + 1.3 * max(len(table), 1), 3.2), layout="constrained")
    x = np.arange(len(table))
    columns = [c for c in columns if c in table.columns]
    for i, col in enumerate(columns):
        mid, lo, hi = (table[c].to_numpy(float) for c in (col, f"{col} low", f"{col} high"))
        ax.errorbar(x + 0.15 * (i - (len(columns) - 1) / 2), mid, yerr=[mid - lo, hi - mid], fmt="o", capsize=4,
                    label=col)
    ax.set_xticks(x, list(table.index), rotation=20, ha="right")
    ax.set(ylabel="AP (%)", title="AP with 95% bootstrap interval over validation images")
    if columns and len(table):
        ax.legend()
    return fig
