"""Figures of the object queries: how often each slot is matched, and where each slot puts its boxes (the paper's
Fig. 7), from numbers :mod:`detr_nb_utils.analysis.queries` computed. Exported with :func:`.figures.save_fig`.
Used by 05_reduced_queries.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .figures import figure_grid

LARGE_BOX = 0.5  # sqrt(w·h) of a box (image fractions) that gets the full "large" colour in Fig. 7


def plot_match_counts(counts: Sequence[int] | np.ndarray,
                      selections: Mapping[str, Sequence[int]] | None = None) -> Figure:
    """How often each query slot was matched to an object (from
    :func:`~detr_nb_utils.analysis.queries.query_match_counts`), one bar per slot, with the slots each named selection
    keeps (e.g. ``{"first": ..., "most_matched": ...}``) marked in a strip underneath."""
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
    :func:`~detr_nb_utils.analysis.queries.query_usage`; ``slots``: which to draw (default all, by slot id);
    ``objects_only``: only predictions that are not "no object"."""
    if objects_only:
        records = records[records["is_object"]]
    slots = sorted(records["slot"].unique()) if slots is None else list(slots)
    fig, axes = figure_grid(len(slots), cols, 1.5)
    by_slot = dict(tuple(records.groupby("slot")))
    for ax, slot in zip(axes, slots):
        r = by_slot.get(slot, records.iloc[:0])
        ax.scatter(r["cx"], r["cy"], s=7, c=box_colours(r["w"], r["h"]) if len(r) else None, linewidths=0)
        ax.set(xlim=(0, 1), ylim=(1, 0), xticks=[], yticks=[], aspect="equal")
        ax.set_title(f"slot {slot} ({len(r)})", fontsize=7)
    key = "box centres per query slot, coloured green (small), red (large and wide), blue (large and tall)"
    fig.suptitle(f"{title}: {key}" if title else key[0].upper() + key[1:], fontsize=9)
    return fig
