"""One call that shows what a variant's detector gets wrong, for the training notebooks: :func:`show_diagnostics`
computes every diagnostic from the runs' saved detections (nothing retrains, nothing re-runs the model), draws it,
saves each figure and table under the notebook's prefix, and returns the tables and one computed sentence for the
takeaway (:func:`diagnostics_sentence`, :func:`layer_sentence`).

What it shows, for the first seed's final epoch (named in every title; the loss terms show every seed): AP per class
with its 95% interval over the validation images (``<prefix>_class_ap``), AP and AR@1/10/100 by object size with the
objects of each size (``_sizes``; the figure draws every seed), COCOeval's precision-recall curves at IoU 0.5 and
0.75 (``_pr_curves``), the confusion matrix at IoU >= 0.5 (``_confusion``), the TIDE error breakdown (``_errors``),
the errors of every decoder layer (``_layer_errors``), the loss term by term and layer by layer (``_loss_terms``),
and, with ``gallery``, the highest-scoring false positives (``_false_positives``) and the largest misses
(``_missed``). Used by notebooks 03, 04, 05 and 07.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..analysis.diagnostics import SCORE_THRESHOLD, RunDiagnostics
from ..analysis.errors import ERROR_KINDS, error_table, layer_change_sentence, layer_changes
from ..analysis.loss_terms import runs_loss_terms
from ..training.runs import RunRecord
from .figures import save_fig
from .figures_diagnostics import (
    plot_ap_by_size,
    plot_class_ap,
    plot_confusion,
    plot_error_breakdown,
    plot_layer_errors,
    plot_loss_terms,
    plot_pr_curves,
)
from .figures_gallery import plot_false_positives, plot_missed
from .tables import save_table

#: cases per gallery
GALLERY_CASES = 6


@dataclass
class Diagnosed:
    """What :func:`show_diagnostics` computed: the run it diagnosed (``run``, ``epoch``) and its tables by name
    (``class_ap``, ``sizes``, ``confusion``, ``errors``, ``layer_errors``), as computed (not rounded)."""

    run: str
    epoch: int
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)


def kinds_table(errors: pd.DataFrame) -> pd.DataFrame:
    """One run's row of :func:`~detr_nb_utils.analysis.errors.error_table` turned into one row per kind of error:
    ``delta AP50`` (points gained by fixing it alone) and ``count`` (above the score threshold; missed: objects),
    so it fits a page. ``attrs``: ``AP50``, ``min_score``."""
    row = errors.iloc[0]
    table = pd.DataFrame({"delta AP50 (points)": [row[f"dAP50 {k}"] for k in ERROR_KINDS],
                          f"count (score >= {errors.attrs['min_score']:g})": [int(row[k]) for k in ERROR_KINDS]},
                         index=pd.Index(ERROR_KINDS, name="kind"))
    table.attrs.update(AP50=float(row["AP50"]), min_score=errors.attrs["min_score"])
    return table


def _layers_long(layers: pd.DataFrame) -> pd.DataFrame:
    """Per-layer errors with the layers as columns (a 6-layer decoder fits a page; the kinds run down), AP50 and
    delta AP50 in points, the counts as whole numbers."""
    table = layers.T.astype(object).rename_axis(index="measure", columns="decoder layer")
    for kind in ERROR_KINDS:
        if kind in layers:
            table.loc[kind] = layers[kind].astype(int).tolist()
    return table.rename(index=lambda m: f"{m} (points)" if m.startswith(("AP50", "dAP50")) else f"{m} (count)")


def _named(fig, run: str) -> None:
    """Put the run the figure shows at the head of its title (the galleries' titles say what, not whose)."""
    title = getattr(fig, "_suptitle", None)  # Figure.get_suptitle is matplotlib 3.8+
    fig.suptitle(f"{run}. {title.get_text() if title is not None else ''}", fontsize=9)


def _save(fig, name: str, report_dir: str | Path) -> None:
    save_fig(fig, name, report_dir)  # left open: a notebook shows it when the cell ends


def show_diagnostics(records: Mapping[str, RunRecord], prefix: str, report_dir: str | Path,
                     gallery: bool = False, n_resamples: int = 1000) -> Diagnosed:
    """Draw and save the diagnostics of a variant's runs ``records`` (its seeds, one recipe; the first is
    diagnosed at its final epoch, the loss terms show them all) as ``<prefix>_<name>`` figures and tables (see the
    module); ``gallery``: also the false positives and misses, when the validation images are found here.
    ``n_resamples``: bootstrap resamples of the images for the per-class intervals."""
    if not records:
        raise ValueError(f"show_diagnostics({prefix!r}): no runs to diagnose; run the training cell first")
    first = next(iter(records.values()))
    d = RunDiagnostics(first)
    run = f"{first.run_dir.name}, epoch {d.epoch}"
    out = Diagnosed(first.run_dir.name, d.epoch)

    classes = d.classes(n_resamples)
    out.tables["class_ap"] = classes
    save_table(classes.rename(columns={"AP": "AP (points)", "low": "95% low", "high": "95% high"}),
               f"{prefix}_class_ap", report_dir, floatfmt=".1f")
    _save(plot_class_ap(classes, f"AP per class ({run}), 95% interval over the {classes.attrs['n_images']} "
                                  "validation images"), f"{prefix}_class_ap", report_dir)

    sizes = {r.run_dir.name: (d if r is first else RunDiagnostics(r)).sizes() for r in records.values()}
    out.tables["sizes"] = sizes[first.run_dir.name]
    save_table(out.tables["sizes"], f"{prefix}_sizes", report_dir, floatfmt=".1f")
    _save(plot_ap_by_size(sizes), f"{prefix}_sizes", report_dir)

    _save(plot_pr_curves(d.pr_curves(), f"Precision-recall curves of {run} (COCOeval's interpolated precision)"),
           f"{prefix}_pr_curves", report_dir)

    confusion = d.confusion()
    out.tables["confusion"] = confusion
    save_table(confusion, f"{prefix}_confusion", report_dir, floatfmt=".0f")
    a = confusion.attrs
    _save(plot_confusion(confusion, f"Confusion matrix of {run}: IoU >= {a['iou_threshold']:g}, score >= "
                                    f"{a['score_threshold']:g}, {a['n_images']} images\n(background row: detections "
                                    "of no object; background column: objects not detected)"),
          f"{prefix}_confusion", report_dir)

    every, above = d.errors(), d.errors(SCORE_THRESHOLD)
    errors = error_table({first.run_dir.name: every}, {first.run_dir.name: above})
    out.tables["errors"] = kinds_table(errors)
    save_table(out.tables["errors"], f"{prefix}_errors", report_dir, floatfmt=".1f")
    _save(plot_error_breakdown(errors, f"Errors by kind of {run} (TIDE, Bolya et al. 2020; COCOeval's matches at "
                                        "IoU 0.5)"), f"{prefix}_errors", report_dir)

    layers = d.layer_errors()
    out.tables["layer_errors"] = layers
    save_table(_layers_long(layers), f"{prefix}_layer_errors", report_dir, floatfmt=".1f")
    _save(plot_layer_errors(layers), f"{prefix}_layer_errors", report_dir)

    terms = runs_loss_terms({name: r.metrics for name, r in records.items()})
    _save(plot_loss_terms(terms), f"{prefix}_loss_terms", report_dir)

    if gallery:
        if d.image_dir is None:
            print(f"No galleries: the validation images of {first.run_dir.name} are not found here.")
        else:
            dataset = d.dataset()
            for plot, name in ((plot_false_positives, "false_positives"), (plot_missed, "missed")):
                fig = plot(above, dataset, d.names, GALLERY_CASES, min_score=SCORE_THRESHOLD)
                _named(fig, run)
                _save(fig, f"{prefix}_{name}", report_dir)
    return out


def diagnostics_sentence(diagnosed: Diagnosed) -> str:
    """One sentence from :func:`show_diagnostics`' tables: the kind of error that costs most AP50, the weakest and
    the strongest class with their intervals, and the sizes without objects."""
    kinds = diagnosed.tables["errors"]
    costly = kinds["delta AP50 (points)"].idxmax()
    count = kinds.iloc[:, 1]
    classes = diagnosed.tables["class_ap"].sort_values("AP")
    weak, strong = classes.iloc[0], classes.iloc[-1]
    sizes = diagnosed.tables["sizes"]
    empty = [s for s in sizes.index if s != "all" and sizes.loc[s, "objects"] == 0]
    tail = f"; no {' or '.join(empty)} objects in the validation images, so no AP there" if empty else ""
    classes_text = (f"weakest class {weak.name} AP {weak['AP']:.1f} [{weak['low']:.1f}, {weak['high']:.1f}], "
                    f"strongest {strong.name} {strong['AP']:.1f} [{strong['low']:.1f}, {strong['high']:.1f}]"
                    if len(classes) > 1 else f"its one class {weak.name} AP {weak['AP']:.1f}")
    return (f"Diagnostics of {diagnosed.run} (epoch {diagnosed.epoch}): {costly} errors cost most, "
            f"{kinds.loc[costly, 'delta AP50 (points)']:.1f} AP50 points ({count[costly]:.0f} at score >= "
            f"{kinds.attrs['min_score']:g}); {classes_text} (95% intervals){tail}.")


def layer_sentence(diagnosed: Diagnosed) -> str:
    """Which kinds of error the decoder layers after the first remove most, in the diagnosed run (the paper's
    Fig. 4, measured: :func:`~detr_nb_utils.analysis.errors.layer_change_sentence`)."""
    layers = diagnosed.tables["layer_errors"]
    if len(layers) < 2:
        return f"{diagnosed.run} has one decoder layer: no layer to compare."
    return f"{diagnosed.run}: " + layer_change_sentence(layer_changes(layers))
