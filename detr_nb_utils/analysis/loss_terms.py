"""The loss, term by term and decoder layer by decoder layer, train and validation, from a run's metrics.

The engine logs every unweighted term of the set loss for every decoder layer (``train_loss_ce``, ``val_loss_ce``
for the final layer, ``_0``, ``_1``, ... for the auxiliary ones, the paper's auxiliary decoding losses). This
module turns those columns into one long table, so curves of the class term (cross-entropy), the L1 box term and
the GIoU term can be drawn per layer (:func:`detr_nb_utils.notebook.figures_diagnostics.plot_loss_terms`). Used by
notebooks 03-05.
"""
from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

#: the set loss's terms, with their names in the paper and their weights in the total
TERMS = {"loss_ce": "class (cross-entropy, weight 1)", "loss_bbox": "L1 box (weight 5)",
         "loss_giou": "GIoU (weight 2)"}


def decoder_layers(metrics: pd.DataFrame) -> int:
    """The decoder layers a run's metrics hold terms for (auxiliary ones + the final one)."""
    aux = {int(c.rsplit("_", 1)[1]) for c in metrics.columns
           if c.startswith(("val_loss_ce_", "train_loss_ce_")) and c.rsplit("_", 1)[1].isdigit()}
    return max(aux, default=-1) + 2


def loss_terms(metrics: pd.DataFrame, run: str = "") -> pd.DataFrame:
    """Long table of a run's metrics (indexed by epoch, as :attr:`~detr_nb_utils.training.runs.RunRecord.metrics`):
    ``run``, ``epoch``, ``split`` (train, val), ``term`` (a key of :data:`TERMS`), ``layer`` (1..L, L the final
    one), ``value`` (unweighted, mean over the epoch's batches). Epoch 0 has validation values only."""
    layers = decoder_layers(metrics)
    rows = []
    for split in ("train", "val"):
        for term in TERMS:
            for layer in range(layers):
                column = f"{split}_{term}" + (f"_{layer}" if layer < layers - 1 else "")
                if column not in metrics:
                    continue
                values = metrics[column].dropna()
                rows += [{"run": run, "epoch": int(e), "split": split, "term": term, "layer": layer + 1,
                          "value": float(v)} for e, v in values.items()]
    return pd.DataFrame(rows, columns=["run", "epoch", "split", "term", "layer", "value"])


def runs_loss_terms(metrics: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """:func:`loss_terms` of several runs (e.g. a variant's seeds), ``run`` their keys."""
    parts = [loss_terms(m, name) for name, m in metrics.items()]
    return pd.concat(parts, ignore_index=True) if parts else loss_terms(pd.DataFrame())
