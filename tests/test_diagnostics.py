"""A run folder's diagnostics from its saved detections (every layer's too), the loss terms reshaped from its metrics,
and the figures drawing what the tables say: counts in the confusion matrix, an empty size named, one pair of
panels per gallery case, one line per error kind over the decoder layers."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from test_bootstrap import perturbed_detections, sample_gt  # noqa: F401 (fixture)
from test_comparison import _write_run

from detr_nb_utils.analysis.ap_breakdown import evaluate_detections
from detr_nb_utils.analysis.diagnostics import RunDiagnostics, validation_files, variant_errors
from detr_nb_utils.analysis.errors import ERROR_KINDS, analyse_errors
from detr_nb_utils.analysis.loss_terms import decoder_layers, loss_terms, runs_loss_terms
from detr_nb_utils.notebook.figures_diagnostics import (
    plot_ap_by_size,
    plot_class_ap,
    plot_confusion,
    plot_error_breakdown,
    plot_layer_errors,
    plot_loss_terms,
    plot_pr_curves,
)
from detr_nb_utils.notebook.figures_gallery import plot_false_positives, plot_missed
from detr_nb_utils.training import runs

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def diagnosed(sample_gt, coco_sample, tmp_path_factory):  # noqa: F811
    """A 3-layer run on the real sample whose layers get better, with every layer's detections at its last epoch;
    its config points at the sample's images."""
    tmp = tmp_path_factory.mktemp("diagnostics")
    split = tmp / "split"
    split.mkdir()
    (split / "val.json").write_text((coco_sample / "annotations" / "instances_val2017_sample.json").read_text())
    layers = [perturbed_detections(sample_gt, noise, seed=k, drop=drop, n_false=30)
              for k, (noise, drop) in enumerate(((0.3, 0.4), (0.15, 0.2), (0.05, 0.1)))]
    _write_run(tmp / "runs", "run", split, 3, 100, 42, {0: layers[0], 1: layers[-1]}, sample_gt)
    run_dir = tmp / "runs" / "run"
    cfg = json.loads((run_dir / runs.CONFIG).read_text())
    (run_dir / runs.CONFIG).write_text(json.dumps(cfg | {"image_dir": str(coco_sample / "images"),
                                                         "annotation_file": str(split / "val.json")}))
    runs.save_layer_detections(run_dir, 1, layers[:-1])
    yield RunDiagnostics(runs.load_run(run_dir)), layers
    plt.close("all")


def test_run_diagnostics_read_the_saved_detections(diagnosed, sample_gt):  # noqa: F811
    d, layers = diagnosed
    assert d.epoch == 1 and d.img_ids == sorted(sample_gt.getImgIds())
    ev = evaluate_detections(sample_gt, layers[-1])
    assert d.sizes().loc["all", "AP"] == pytest.approx(100 * ev.stats[0])
    assert d.classes(n_resamples=50)["AP"].mean() == pytest.approx(100 * ev.stats[0])
    assert d.errors().ap50() == pytest.approx(100 * ev.stats[1])
    assert d.confusion(0.4).attrs["score_threshold"] == 0.4
    assert len(d.dataset()) == len(sample_gt.getImgIds())
    with pytest.raises(FileNotFoundError, match="epochs \\[1\\]"):
        d.layer_errors(epoch=0)


def test_layer_errors_are_each_layers_own(diagnosed, sample_gt):  # noqa: F811
    d, layers = diagnosed
    table = d.layer_errors()
    assert list(table.index) == [1, 2, 3] and table.attrs["epoch"] == 1
    for k, dets in enumerate(layers):
        assert table.loc[k + 1, "AP50"] == pytest.approx(analyse_errors(sample_gt, dets).ap50())
        assert table.loc[k + 1, "missed"] == analyse_errors(sample_gt, dets, min_score=0.5).counts()["missed"]
    assert table["AP50"].is_monotonic_increasing  # the layers were made better and better
    fig = plot_layer_errors(table)
    left = fig.axes[0]
    assert len(left.lines) == len(ERROR_KINDS) and list(left.get_xticks()) == [1, 2, 3]
    assert "score >= 0.5" in left.get_title()


def test_variant_errors_side_by_side(diagnosed):
    d, _ = diagnosed
    table = variant_errors({"a": d, "b": d})
    assert list(table.index) == ["a", "b"] and table.attrs["min_score"] == 0.5
    assert (table.loc["a"] == table.loc["b"]).all()
    fig = plot_error_breakdown(table)
    assert len(fig.axes[0].patches) == 2 * len(ERROR_KINDS)


def test_own_data_validation_files_come_from_the_manifest(diagnosed, tmp_path):
    d, _ = diagnosed
    record = dataclasses.replace(d.record, config=dataclasses.replace(d.record.config, dataset_dir=str(tmp_path)),
                                 split_manifest={"dataset": {"val": {"annotation_file": "x/val.json",
                                                                     "image_dir": "x/images"}}})
    assert validation_files(record) == (Path("x/val.json"), Path("x/images"))


def test_figures_say_what_the_tables_say(diagnosed):
    d, _ = diagnosed
    sizes = d.sizes()
    empty = sizes.copy()
    empty.loc["large", ["objects", "AP"]] = [0, np.nan]
    fig = plot_ap_by_size({"run": sizes, "other": empty} if sizes.loc["large", "objects"] else {"run": sizes})
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels[1] == f"small\n({sizes.loc['small', 'objects']} objects)"
    fig = plot_ap_by_size({"run": empty})
    assert any(t.get_text() == "no large\nobjects" for t in fig.axes[0].texts)
    matrix = d.confusion()
    fig = plot_confusion(matrix)
    written = {t.get_text() for t in fig.axes[0].texts}
    assert {str(v) for v in matrix.to_numpy().ravel() if v > 0} == written
    assert "score >= 0.5" in fig.axes[0].get_title() and "IoU >= 0.5" in fig.axes[0].get_title()
    classes = d.classes(n_resamples=50)
    fig = plot_class_ap(classes)
    assert len(fig.axes[0].patches) == len(classes)
    fig = plot_pr_curves(d.pr_curves())
    assert [ax.get_title() for ax in fig.axes] == ["IoU 0.5", "IoU 0.75"]
    assert len(fig.axes[0].lines) == len(classes) + 1  # every class and all classes


def test_galleries_one_pair_of_panels_per_case(diagnosed):
    d, _ = diagnosed
    errors = d.errors(0.5)
    fig = plot_false_positives(errors, d.dataset(), d.names, n=3)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 6 and all("ground truth" in t for t in titles[::2])
    top = errors.detections[~errors.detections["kind"].isin(["true positive", "ignored"])].nlargest(3, "score")
    assert all(kind in t for kind, t in zip(top["kind"], titles[1::2]))
    fig = plot_missed(errors, d.dataset(), d.names, n=2)
    biggest = errors.objects[errors.objects["kind"] == "missed"].nlargest(2, "area")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert [f"{a:.0f} px²" in t for a, t in zip(biggest["area"], titles[::2])] == [True] * len(biggest)


def test_loss_terms_long_table():
    metrics = pd.DataFrame({"val_loss_ce_0": [0.5, 0.4], "val_loss_ce": [0.3, 0.2], "train_loss_ce_0": [np.nan, 0.6],
                            "train_loss_ce": [np.nan, 0.35], "val_loss_giou": [0.1, 0.09]},
                           index=pd.Index([0, 1], name="epoch"))
    assert decoder_layers(metrics) == 2
    t = loss_terms(metrics, "r").set_index(["split", "term", "layer", "epoch"])["value"]
    assert t[("val", "loss_ce", 1, 0)] == 0.5 and t[("val", "loss_ce", 2, 1)] == 0.2
    assert t[("train", "loss_ce", 2, 1)] == 0.35 and ("train", "loss_ce", 2, 0) not in t.index
    assert t[("val", "loss_giou", 2, 0)] == 0.1
    both = runs_loss_terms({"a": metrics, "b": metrics * 2})
    assert set(both["run"]) == {"a", "b"}
    fig = plot_loss_terms(both)
    assert "mean of 2 runs" in fig._suptitle.get_text()
    assert len(fig.axes[0].collections) == 4  # a band per split and layer of the class term
