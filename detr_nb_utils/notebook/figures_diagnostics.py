"""Figures of the diagnostics: AP per class with intervals, AP by object size, precision-recall curves, the
confusion matrix, the error breakdown (by variant and by decoder layer) and the loss term by term and layer by
layer. Each takes a table already computed by :mod:`detr_nb_utils.analysis` (:class:`~detr_nb_utils.analysis.
diagnostics.RunDiagnostics`, :func:`~detr_nb_utils.analysis.loss_terms.loss_terms`) and returns a
:class:`matplotlib.figure.Figure`; export with :func:`.figures.save_fig`. AP in points. Used by notebooks 03-07.
"""
from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ..analysis.errors import ERROR_KINDS
from ..analysis.loss_terms import TERMS

#: one colour per error kind, the same in every figure
KIND_COLOURS = dict(zip(ERROR_KINDS, ("tab:purple", "tab:orange", "tab:brown", "tab:pink", "tab:gray", "tab:red")))


def plot_class_ap(table: pd.DataFrame, title: str = "") -> Figure:
    """AP per class (points) with its 95% interval over the validation images, highest first; each class's
    object count beside its name. ``table``: :func:`~detr_nb_utils.analysis.ap_breakdown.class_ap_table`."""
    t = table.sort_values("AP")
    fig, ax = plt.subplots(figsize=(6.2, 0.9 + 0.32 * max(len(t), 1)), layout="constrained")
    y = np.arange(len(t))
    ax.barh(y, t["AP"], color="tab:blue", alpha=0.7)
    # the interval drawn from its ends: a percentile interval need not hold the point (a skewed statistic)
    ax.hlines(y, t["low"], t["high"], color="black", lw=1.2)
    ax.plot(t["low"], y, "|", t["high"], y, "|", color="black", ms=8)
    ax.set_yticks(y, [f"{name} ({n} objects)" for name, n in zip(t.index, t["objects"])])
    ax.set_xlim(0, 100)
    n = table.attrs.get("n_images", "?")
    ax.set(xlabel="AP (points), IoU .50:.95", title=title or f"AP per class, 95% interval over the {n} validation images")
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_ap_by_size(tables: Mapping[str, pd.DataFrame], stat: str = "AP") -> Figure:
    """``stat`` (AP, AR100, ...) by object size, one bar per run or variant (``tables``: name ->
    :func:`~detr_nb_utils.analysis.ap_breakdown.size_table`); each size labelled with its object count, and a size
    without objects says so instead of showing an empty slot."""
    first = next(iter(tables.values()))
    sizes = list(first.index)
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(sizes), 3.4), layout="constrained")
    width = 0.8 / max(len(tables), 1)
    for k, (name, t) in enumerate(tables.items()):
        ax.bar(np.arange(len(sizes)) + (k - (len(tables) - 1) / 2) * width, t.loc[sizes, stat].fillna(0), width,
               label=name)
    for x, size in enumerate(sizes):
        if first.loc[size, "objects"] == 0:
            ax.text(x, 2, f"no {size}\nobjects", ha="center", va="bottom", fontsize=8, color="0.3")
    ax.set_xticks(np.arange(len(sizes)), [f"{s}\n({first.loc[s, 'objects']} objects)" for s in sizes])
    ax.set(ylabel=f"{stat} (points)", ylim=(0, 100), title=f"{stat} by object size (COCO's areas: small < 32², large > 96²)")
    ax.legend(fontsize=8)
    return fig


def plot_pr_curves(curves: pd.DataFrame, title: str = "") -> Figure:
    """COCOeval's precision-recall curves, one panel per IoU threshold: every class thin, all classes (their
    mean, whose area is AP) thick black; AP in the legend. ``curves``:
    :func:`~detr_nb_utils.analysis.ap_breakdown.pr_curves`."""
    ious = sorted(curves["iou"].unique())
    fig, axes = plt.subplots(1, len(ious), figsize=(4.6 * len(ious), 4.0), squeeze=False, layout="constrained")
    ap = curves.attrs.get("ap", {})
    classes = [c for c in dict.fromkeys(curves["class"]) if c != "all classes"]
    colours = dict(zip(classes, (plt.cm.tab10.colors if len(classes) <= 10 else plt.cm.tab20.colors) * 10))
    for ax, iou in zip(axes[0], ious):
        here = curves[curves["iou"] == iou]
        for name, c in here.groupby("class", sort=False):
            overall = name == "all classes"
            ax.plot(c["recall"], c["precision"], color="black" if overall else colours[name], lw=2.5 if overall else 1,
                    alpha=1 if overall else 0.75, label=f"{name} (AP {ap.get((iou, name), np.nan):.1f})",
                    zorder=3 if overall else 2)
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=f"IoU {iou:g}")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower left", bbox_to_anchor=(1.02, 0))
    fig.suptitle(title or "Precision-recall curves (COCOeval's interpolated precision, 100 detections per image)",
                 fontsize=10)
    return fig


def plot_confusion(matrix: pd.DataFrame, title: str = "") -> Figure:
    """The confusion matrix (:func:`~detr_nb_utils.analysis.confusion.confusion_matrix`): counts written in each
    cell, colour on a log scale; the score and IoU thresholds in the title."""
    n = len(matrix)
    fig, ax = plt.subplots(figsize=(2.2 + 0.55 * n, 1.8 + 0.5 * n), layout="constrained")
    values = matrix.to_numpy().astype(float)
    shown = np.where(values > 0, values, np.nan)
    im = ax.imshow(shown, cmap="Blues", norm=LogNorm(vmin=1, vmax=max(2.0, np.nanmax(values) if values.any() else 2)))
    for i, j in np.ndindex(values.shape):
        if values[i, j] > 0:
            dark = values[i, j] > np.sqrt(max(values.max(), 1))
            ax.text(j, i, f"{int(values[i, j])}", ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")
    ax.set_xticks(range(n), matrix.columns, rotation=45, ha="right")
    ax.set_yticks(range(n), matrix.index)
    ax.set(xlabel="detected as", ylabel="true class")
    a = matrix.attrs
    ax.set_title(title or f"Confusion matrix: IoU >= {a.get('iou_threshold', 0.5):g}, score >= "
                 f"{a.get('score_threshold', 0.5):g}, {a.get('n_images', '?')} images\n(background row: detections "
                 f"of no object; background column: objects not detected)", fontsize=9)
    fig.colorbar(im, ax=ax, label="count (log scale)", shrink=0.8)
    return fig


def plot_error_breakdown(table: pd.DataFrame, title: str = "") -> Figure:
    """The error breakdown of each row of ``table`` (:func:`~detr_nb_utils.analysis.errors.error_table`: variants
    or runs): left, the AP50 points each kind of error costs (TIDE's delta AP50: what fixing it alone would gain);
    right, how many errors of each kind are made above the score threshold."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.9 + 0.35 * len(ERROR_KINDS) * max(len(table), 1) ** 0.5 + 1.2),
                             layout="constrained")
    y = np.arange(len(ERROR_KINDS))
    height = 0.8 / max(len(table), 1)
    for k, (name, row) in enumerate(table.iterrows()):
        offset = k - (len(table) - 1) / 2  # the first row's bars on top (the axis is inverted below)
        axes[0].barh(y + offset * height, [row[f"dAP50 {kind}"] for kind in ERROR_KINDS], height,
                     label=f"{name} (AP50 {row['AP50']:.1f})")
        if all(kind in row for kind in ERROR_KINDS):
            axes[1].barh(y + offset * height, [row[kind] for kind in ERROR_KINDS], height, label=str(name))
    for ax in axes:
        ax.set_yticks(y, ERROR_KINDS)
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    axes[0].set(xlabel="AP50 points gained by fixing it (delta AP50)", title="What each kind of error costs")
    threshold = table.attrs.get("min_score")
    axes[1].set(xlabel="errors (missed: objects)", title="How many" + (f" (score >= {threshold:g})" if threshold
                                                                       is not None else ""))
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=min(len(table), 4),
               fontsize=8)
    fig.suptitle(title or "Errors by kind (TIDE, Bolya et al. 2020), on COCOeval's matches at IoU 0.5", fontsize=10)
    return fig


def plot_layer_errors(table: pd.DataFrame, title: str = "") -> Figure:
    """Which errors each decoder layer removes (the paper's Fig. 4, measured): per decoder layer (x), the count of
    each kind of error above the score threshold (left) and what it costs in AP50 (right). ``table``:
    :meth:`~detr_nb_utils.analysis.diagnostics.RunDiagnostics.layer_errors`."""
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.8), layout="constrained")
    x = np.asarray(table.index)
    for kind in ERROR_KINDS:
        style = {"color": KIND_COLOURS[kind], "marker": "o", "label": kind, "lw": 2.5 if kind == "duplicate" else 1.5}
        axes[0].plot(x, table[kind], **style)
        axes[1].plot(x, table[f"dAP50 {kind}"], **style)
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xlabel("decoder layer")
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    threshold = table.attrs.get("min_score")
    axes[0].set(ylabel="errors (missed: objects)", title="How many" + (f" (score >= {threshold:g})"
                                                                       if threshold is not None else ""))
    axes[1].set(ylabel="AP50 points (delta AP50)", title="What they cost")
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    where = ", ".join(str(table.attrs[k]) for k in ("run",) if k in table.attrs)
    epoch = f", epoch {table.attrs['epoch']}" if "epoch" in table.attrs else ""
    fig.suptitle(title or f"Errors of each decoder layer's predictions{' (' + where + epoch + ')' if where else ''}",
                 fontsize=10)
    return fig


def plot_loss_terms(terms: pd.DataFrame, title: str = "") -> Figure:
    """The loss term by term (class, L1, GIoU; one panel each), one line per decoder layer (light: first, dark:
    final), validation solid and training dashed, per epoch. Several runs (seeds) are drawn as their mean with a
    band from the lowest to the highest. ``terms``: :func:`~detr_nb_utils.analysis.loss_terms.runs_loss_terms`."""
    fig, axes = plt.subplots(1, len(TERMS), figsize=(4.3 * len(TERMS), 3.6), layout="constrained")
    layers = int(terms["layer"].max()) if len(terms) else 1
    colours = plt.cm.viridis(np.linspace(0.85, 0.0, layers))
    runs = terms["run"].nunique()
    for ax, (term, label) in zip(axes, TERMS.items()):
        for (split, layer), part in terms[terms["term"] == term].groupby(["split", "layer"]):
            stats = part.groupby("epoch")["value"].agg(["mean", "min", "max"])
            ls = "-" if split == "val" else "--"
            ax.plot(stats.index, stats["mean"], ls, color=colours[layer - 1], marker="o" if split == "val" else "x",
                    ms=4)
            if runs > 1:
                ax.fill_between(stats.index, stats["min"], stats["max"], color=colours[layer - 1], alpha=0.12)
        ax.set(title=label, xlabel="epoch", ylabel="loss (unweighted)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colours[k], label=f"layer {k + 1}" + (" (final)" if k == layers - 1 else ""))
               for k in range(layers)]
    handles += [Line2D([], [], color="black", ls="-", marker="o", ms=4, label="validation"),
                Line2D([], [], color="black", ls="--", marker="x", ms=4, label="training")]
    axes[-1].legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    seeds = f"mean of {runs} runs, band: lowest to highest" if runs > 1 else f"run {terms['run'].iloc[0]}" \
        if len(terms) else ""
    fig.suptitle(title or f"Loss terms per decoder layer ({seeds}); epoch 0: the checkpoint, validation only",
                 fontsize=10)
    return fig


def plot_subgroup_changes(table: pd.DataFrame, title: str = "") -> Figure:
    """Each variant's change against the baseline on every group (a forest plot: point and 95% paired interval,
    points of AP), one colour per variant, its change on all objects dashed: a group to the left of its dashed line
    loses more than the variant does overall (whether beyond the images' noise is the table's ``beyond overall``
    interval, which :func:`~detr_nb_utils.analysis.subgroups.subgroup_sentences` states). ``table``:
    :meth:`~detr_nb_utils.analysis.subgroups.SubgroupAp.table`; a group without objects is named, not drawn."""
    groups = list(dict.fromkeys(table["group"]))
    variants = list(dict.fromkeys(table["variant"]))
    fig, ax = plt.subplots(figsize=(7.0, 1.2 + 0.45 * len(groups) * max(len(variants), 1) ** 0.5),
                           layout="constrained")
    if not variants:  # only the baseline has runs
        ax.text(0.5, 0.5, f"No variant beside {table.attrs.get('baseline', 'the baseline')} has runs: nothing to "
                "compare yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    step = 0.6 / max(len(variants), 1)
    for k, (variant, colour) in enumerate(zip(variants, plt.cm.tab10.colors)):
        rows = table[table["variant"] == variant].set_index("group").reindex(groups)
        y = np.arange(len(groups)) + (k - (len(variants) - 1) / 2) * step
        ok = rows["objects"].fillna(0).to_numpy() > 0
        ax.hlines(y[ok], rows["change low"][ok], rows["change high"][ok], color=colour, lw=1.5)
        ax.plot(rows["change"][ok], y[ok], "o", color=colour,
                label=f"{variant} ({rows['compared on'].iloc[0]})")
        ax.axvline(rows.loc[groups[0], "change"], color=colour, ls="--", lw=1)
    ax.axvline(0, color="black", lw=0.8)
    empty = set(table.loc[table["objects"] == 0, "group"])
    ax.set_yticks(range(len(groups)), [f"{g} (no objects)" if g in empty else g for g in groups])
    ax.invert_yaxis()
    a = table.attrs
    ax.set(xlabel=f"change against {a.get('baseline', 'the baseline')} (AP points, 95% paired interval over the "
                  f"{a.get('n_images', '?')} images)",
           title=title or f"Where each variant loses (crowded: {a.get('min_objects', '?')} or more objects; dashed: "
                          f"its change on all objects)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8)
    return fig
