"""Figures of the set loss on one batch: the matcher's cost matrix term by term with the assignment it picks, and the
loss of each decoder layer, from numbers :mod:`detr_nb_utils.analysis.matching` computed. Exported with
:func:`.figures.save_fig`. Used by 03_baseline.
"""
from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..analysis.matching import COST_TERMS
from ..models.loss import TERMS


def plot_cost_terms(terms: Mapping[str, np.ndarray], assignment: pd.DataFrame) -> Figure:
    """One heat map per cost term (:func:`~detr_nb_utils.analysis.matching.cost_terms`), targets in rows and
    queries in columns, each with its colour bar (lower is cheaper), the query the assignment gives each target
    ringed in white (:func:`~detr_nb_utils.analysis.matching.assignment_table`)."""
    n_targets, n_queries = terms["total"].T.shape
    fig, axes = plt.subplots(len(COST_TERMS), 1, figsize=(10, 1.2 + len(COST_TERMS) * (0.6 + 0.3 * n_targets)),
                             layout="constrained", sharex=True)
    labels = [f"{t}: {c}" for t, c in zip(assignment.index, assignment["class"])]
    for ax, name in zip(axes, COST_TERMS):
        image = ax.imshow(terms[name].T, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.scatter(assignment["query"], assignment.index, s=90, facecolors="none", edgecolors="white", linewidths=1.5)
        ax.set_yticks(range(n_targets), labels)
        ax.set_title(f"cost {name}" + (" = class + L1 + GIoU (ringed: the assignment)" if name == "total" else ""),
                     loc="left")
        fig.colorbar(image, ax=ax, pad=0.01, label="cost")
    axes[-1].set_xlabel(f"query (0 … {n_queries - 1})")
    return fig


def plot_layer_losses(table: pd.DataFrame) -> Figure:
    """The weighted loss of each decoder layer (:func:`~detr_nb_utils.analysis.matching.layer_loss_table`) as stacked
    bars of its three weighted terms (weights from ``table.attrs["weights"]``), with the total, their sum over the
    layers, in the title."""
    layers, weights = table.drop(index="total"), table.attrs["weights"]
    fig, ax = plt.subplots(figsize=(6.5, 3.2), layout="constrained")
    bottom = np.zeros(len(layers))
    for term in TERMS:
        part = (weights[term] * layers[term]).to_numpy()
        ax.bar(layers.index, part, bottom=bottom, label=f"{weights[term]:g} x {term}")
        bottom += part
    ax.set(ylabel="weighted loss", ylim=(0, None),
           title=f"Loss per decoder layer; the total sums them: {table.loc['total', 'weighted']:.2f}")
    ax.legend(loc="upper right")
    return fig
