"""Figures of attention maps over an image (the paper's Figs. 3 and 6), from what
:mod:`detr_nb_utils.analysis.attention` recorded, and :func:`interactive_attention`, a widget version for
JupyterLab. Images are uint8 ``[3,H,W]`` tensors as from ``CocoDetection.read_image`` (or ``[H,W,3]`` arrays).
Exported with :func:`.figures.save_fig`. Used by 02_checkpoint_inspection.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..analysis.attention import AttentionRecord, decoder_attention_of, encoder_attention_at, map_extent
from .figures import figure_grid, image_hwc

CMAP = "inferno"


def _overlay(ax, image: np.ndarray, amap: torch.Tensor, extent: tuple[float, ...], title: str) -> None:
    """``image`` with the attention map ``amap`` ``[h_i,w_i]`` drawn over the pixels it covers, from its own
    minimum (dark) to its maximum (bright)."""
    ax.imshow(image)
    ax.imshow(amap.numpy(), extent=extent, cmap=CMAP, alpha=0.6, interpolation="bilinear")
    ax.set(xlim=(0, image.shape[1]), ylim=(image.shape[0], 0), title=title)
    ax.axis("off")


def _colour_key(fig: Figure, axes) -> None:
    """One colour bar for the figure's maps: each is drawn from its own minimum to its own maximum weight."""
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), CMAP), ax=list(axes), shrink=0.7, ticks=[0, 1])
    bar.ax.set_yticklabels(["least", "most"])
    bar.set_label("attention weight (each map on its own scale)", fontsize=8)


def plot_encoder_attention(image, record: AttentionRecord, points_yx: Sequence[tuple[float, float]],
                           layer: int = -1, image_index: int = 0, cols: int = 4) -> Figure:
    """Encoder self-attention (paper Fig. 3): for each point ``(y, x)`` (pixels of ``image``, row then column),
    where its feature cell attends to in encoder ``layer`` (default the last), drawn over the image; the point is a
    cyan cross."""
    image = image_hwc(image)
    size, extent = image.shape[:2], map_extent(record, image_index, image.shape[:2])
    fig, axes = figure_grid(len(points_yx), cols, 3.2)
    axes = list(axes)
    for ax, (y, x) in zip(axes, points_yx):
        amap = encoder_attention_at(record, layer, image_index, (y, x), size)
        _overlay(ax, image, amap, extent, f"point at x={x:.0f}, y={y:.0f} px")
        ax.plot([x], [y], "x", color="cyan", ms=9, mew=2)
    _colour_key(fig, axes[:len(points_yx)])
    n = len(record.encoder)
    fig.suptitle(f"Encoder self-attention, layer {layer % n + 1} of {n}: where the feature cell under each cyan "
                 f"cross looks", fontsize=9)
    return fig


def plot_decoder_attention(image, record: AttentionRecord, objects: pd.DataFrame,
                           names: Mapping[int, str] | None = None, layer: int = -1, image_index: int = 0,
                           cols: int = 4, detected: bool = True) -> Figure:
    """Decoder cross-attention (paper Fig. 6): for each detected object (rows of
    :func:`~detr_nb_utils.analysis.attention.detected_objects`), where its query looks in decoder ``layer`` (default the
    last), drawn over the image with the object's box. ``detected=False``: the rows are the best-scoring queries,
    none above the threshold, and the title says so."""
    image = image_hwc(image)
    (hh, ww), names = image.shape[:2], names or {}
    extent = map_extent(record, image_index, (hh, ww))
    fig, axes = figure_grid(len(objects), cols, 3.2)
    axes = list(axes)
    for ax, obj in zip(axes, objects.itertuples()):
        amap = decoder_attention_of(record, layer, image_index, int(obj.query))
        label = names.get(int(obj.label), int(obj.label))
        _overlay(ax, image, amap, extent, f"query {obj.query}: {label} {obj.score:.2f}")
        ax.add_patch(Rectangle(((obj.cx - obj.w / 2) * ww, (obj.cy - obj.h / 2) * hh), obj.w * ww, obj.h * hh,
                               fill=False, ec="cyan", lw=1.5))
    if len(objects) == 0:
        axes[0].set_title("no detection above the threshold")
    else:
        _colour_key(fig, axes[:len(objects)])
    n = len(record.decoder)
    what = "each detected object" if detected else "the best-scoring queries (no detection above the threshold)"
    fig.suptitle(f"Decoder cross-attention, layer {layer % n + 1} of {n}, of {what}; its box in cyan", fontsize=9)
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
