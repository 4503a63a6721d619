"""06_analysis's figures of the variants side by side, every seed in them: each variant's mean over its training
seeds, with a band from its lowest to its highest seed, so a figure agrees with the tables (which are means over the
seeds) and shows how far the seeds spread. Loss and AP per epoch (:func:`plot_variant_curves`) and AP of each
decoder layer (:func:`plot_variant_layers`, the paper's Fig. 4). Each takes the variants' run folders
(``{variant: {run name: RunRecord}}``, :func:`~detr_nb_utils.analysis.comparison.by_variant`) and returns a
:class:`matplotlib.figure.Figure`; AP in points.
"""
from __future__ import annotations

import itertools

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..analysis.run_bootstrap import Groups, runs_of
from .figures import AP_VIEWS, LOSS_VIEW_TITLES, MARKERS

#: what :func:`plot_variant_curves` draws: the panels (metrics column, title), the y label and the scale
CURVES = {"loss": (LOSS_VIEW_TITLES, "validation loss", 1.0), "AP": (AP_VIEWS, "COCO AP (points)", 100.0)}


def seed_band(groups: Groups, column: str, scale: float = 1.0) -> dict[str, pd.DataFrame]:
    """Per variant, ``column`` of its runs' metrics x ``scale`` per epoch over its seeds: ``mean``, ``min``,
    ``max`` and ``seeds`` (how many runs have that epoch); a variant whose runs lack ``column`` is left out."""
    out = {}
    for v, group in groups.items():
        runs = [r for r in runs_of(group) if column in r.metrics]
        if not runs:  # not measured in these runs: no band
            continue
        per_seed = pd.concat({r.run_dir.name: scale * r.metrics[column] for r in runs}, axis=1)
        out[v] = pd.DataFrame({"mean": per_seed.mean(axis=1), "min": per_seed.min(axis=1),
                               "max": per_seed.max(axis=1), "seeds": per_seed.notna().sum(axis=1)})
    return out


def _seeds_words(groups: Groups) -> str:
    counts = {len(runs_of(g)) for g in groups.values()}
    return f"{counts.pop()} seeds each" if len(counts) == 1 else "seeds: " + ", ".join(
        f"{v} {len(runs_of(g))}" for v, g in groups.items())


def plot_variant_curves(groups: Groups, what: str = "AP") -> Figure:
    """Validation ``what`` ("AP": AP, AP50, AP75; "loss": total, final layer, per-layer mean) per epoch, one colour
    per variant: the mean over its seeds (markers), a band from its lowest to its highest seed. Epoch 0 is the
    checkpoint before fine-tuning."""
    views, ylabel, scale = CURVES[what]
    style = dict(zip(groups, zip(plt.cm.tab10.colors, itertools.cycle(MARKERS))))
    fig, axes = plt.subplots(1, len(views), figsize=(4.2 * len(views), 3.5), squeeze=False, layout="constrained")
    for ax, (col, title) in zip(axes[0], views):
        bands = seed_band(groups, f"val_{col}", scale)
        for v, band in bands.items():  # one colour and marker per variant in every panel
            colour, marker = style[v]
            n = len(runs_of(groups[v]))
            ax.plot(band.index, band["mean"], marker=marker, color=colour, markerfacecolor="none",
                    label=f"{v} (mean of {n})" if n > 1 else f"{v} (run {runs_of(groups[v])[0].run_dir.name})")
            if n > 1:
                ax.fill_between(band.index, band["min"], band["max"], color=colour, alpha=0.15, linewidth=0)
        ax.set(title=title, xlabel="epoch", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if what == "AP":
            ax.set_ylim(bottom=0)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Validation {what} per epoch: mean over each variant's seeds ({_seeds_words(groups)}), band: "
                 "lowest to highest seed", fontsize=10)
    return fig


def layer_bands(groups: Groups) -> pd.DataFrame:
    """AP (points) of each decoder layer's predictions over each variant's seeds, at epoch 0 and at the final
    epoch: one row per variant, epoch (``"epoch 0"``, ``"final epoch"``) and layer (1..L) with ``mean``, ``min``,
    ``max`` and ``seeds``."""
    rows = []
    for v, group in groups.items():
        runs = runs_of(group)
        for at, pick in (("epoch 0", lambda r: 0), ("final epoch", lambda r: r.final_epoch)):
            for layer in range(runs[0].config.dec_layers):
                values = pd.Series([100 * r.metrics.loc[pick(r), f"val_AP_layer_{layer}"] for r in runs
                                    if pick(r) in r.metrics.index])
                rows.append({"variant": v, "at": at, "layer": layer + 1, "mean": values.mean(), "min": values.min(),
                             "max": values.max(), "seeds": len(values)})
    return pd.DataFrame(rows, columns=["variant", "at", "layer", "mean", "min", "max", "seeds"])


def plot_variant_layers(groups: Groups) -> Figure:
    """AP of each decoder layer's predictions (the paper's Fig. 4), one colour per variant: at the final epoch the
    mean over its seeds with a band from lowest to highest seed (solid), at epoch 0 the mean (dashed)."""
    bands = layer_bands(groups)
    fig, ax = plt.subplots(figsize=(6.2, 3.8), layout="constrained")
    for (v, part), colour in zip(bands.groupby("variant", sort=False), plt.cm.tab10.colors):
        final, start = (part[part["at"] == at].set_index("layer") for at in ("final epoch", "epoch 0"))
        n = int(final["seeds"].max()) if len(final) else 0
        ax.plot(final.index, final["mean"], "o-", color=colour, label=f"{v}, final epoch (mean of {n})")
        if n > 1:
            ax.fill_between(final.index, final["min"], final["max"], color=colour, alpha=0.15, linewidth=0)
        ax.plot(start.index, start["mean"], "o--", color=colour, alpha=0.6, markerfacecolor="none",
                label=f"{v}, epoch 0")
    ax.set(xlabel="decoder layer", ylabel="COCO AP (points)", ylim=(0, None),
           title=f"AP of each decoder layer's predictions ({_seeds_words(groups)}; band: lowest to highest seed)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    return fig

