"""The diagnostics cell of notebooks 03-05 and 07: every figure and table saved under the notebook's prefix, from
the run folder's saved detections, the tables as the analysis computes them, and a takeaway sentence whose numbers
are the tables'."""
from __future__ import annotations

import re

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd
import pytest
from test_bootstrap import sample_gt  # noqa: F401 (fixture)
from test_diagnostics import diagnosed  # noqa: F401 (fixture)

from detr_nb_utils.analysis.diagnostics import SCORE_THRESHOLD
from detr_nb_utils.analysis.errors import ERROR_KINDS
from detr_nb_utils.notebook.diagnostics_cells import diagnostics_sentence, kinds_table, layer_sentence, show_diagnostics

matplotlib.use("Agg")

FIGURES = ("class_ap", "sizes", "pr_curves", "confusion", "errors", "layer_errors", "loss_terms")
TABLES = ("class_ap", "sizes", "confusion", "errors", "layer_errors")


@pytest.fixture(scope="module")
def shown_diagnostics(diagnosed, tmp_path_factory):  # noqa: F811
    d, _ = diagnosed
    report = tmp_path_factory.mktemp("report")
    plt.close("all")  # figures other tests left open are not this cell's
    out = show_diagnostics({d.record.run_dir.name: d.record}, "03", report, gallery=True, n_resamples=50)
    yield d, out, report
    plt.close("all")


def test_every_figure_and_table_saved_under_the_prefix(shown_diagnostics):
    _, _, report = shown_diagnostics
    for name in (*FIGURES, "false_positives", "missed"):
        assert (report / "figures" / f"03_{name}.png").is_file(), name
    for name in TABLES:
        assert (report / "tables" / f"03_{name}.csv").is_file(), name


def test_every_figure_names_the_run_it_shows(shown_diagnostics):
    _, out, _ = shown_diagnostics
    def words(f) -> str:
        legends = [t.get_text() for ax in f.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
        return " ".join([f._suptitle.get_text() if f._suptitle else "", *legends, *(ax.get_title() for ax in f.axes)])

    titles = {f: words(f) for f in map(plt.figure, plt.get_fignums())}
    named = re.compile(rf"\b{re.escape(out.run)}\b")
    shown = [t for t in titles.values() if named.search(t) or "mean of" in t]  # the loss terms show every seed
    assert len(shown) == len(titles) >= 9


def test_tables_are_the_analysis_tables(shown_diagnostics):
    d, out, report = shown_diagnostics
    assert out.run == d.record.run_dir.name and out.epoch == d.epoch
    pd.testing.assert_frame_equal(out.tables["sizes"], d.sizes())
    pd.testing.assert_frame_equal(out.tables["confusion"], d.confusion())
    assert out.tables["class_ap"]["AP"].tolist() == pytest.approx(d.classes(n_resamples=50)["AP"].tolist())
    kinds = out.tables["errors"]
    counts = d.errors(SCORE_THRESHOLD).counts()
    assert list(kinds.index) == list(ERROR_KINDS)
    assert kinds.iloc[:, 1].tolist() == [counts[k] for k in ERROR_KINDS]
    assert kinds.attrs["AP50"] == pytest.approx(d.errors().ap50())
    saved = pd.read_csv(report / "tables" / "03_layer_errors.csv", comment="#", index_col=0)
    assert list(saved.columns) == ["1", "2", "3"]  # one column per decoder layer
    layers = d.layer_errors()
    assert saved.loc["AP50 (points)"].tolist() == pytest.approx(layers["AP50"].tolist())
    assert saved.loc["missed (count)"].tolist() == layers["missed"].tolist()


def test_sentence_names_the_costliest_error_and_the_weakest_class(shown_diagnostics):
    _, out, _ = shown_diagnostics
    text = diagnostics_sentence(out)
    kinds, classes = out.tables["errors"], out.tables["class_ap"]
    costly = kinds["delta AP50 (points)"].idxmax()
    assert f"{costly} errors cost most, {kinds.loc[costly, 'delta AP50 (points)']:.1f} AP50 points" in text
    weak = classes.sort_values("AP").iloc[0]
    assert f"weakest class {weak.name} AP {weak['AP']:.1f} [{weak['low']:.1f}, {weak['high']:.1f}]" in text
    assert not re.search(r"\bnan\b", text)


def test_layer_sentence_reads_the_first_and_last_layer(shown_diagnostics):
    _, out, _ = shown_diagnostics
    layers = out.tables["layer_errors"]
    text = layer_sentence(out)
    assert text.startswith(f"{out.run}: From decoder layer 1 to layer 3")
    assert any(f"go from {layers.loc[1, k]:.0f} to {layers.loc[3, k]:.0f}" in text for k in ERROR_KINDS)


def test_an_empty_size_is_explained_in_the_sentence(shown_diagnostics):
    _, out, _ = shown_diagnostics
    sizes = out.tables["sizes"].copy()
    sizes.loc["large", "objects"] = 0
    text = diagnostics_sentence(type(out)(out.run, out.epoch, out.tables | {"sizes": sizes}))
    assert "no large objects in the validation images" in text


def test_kinds_table_is_one_row_per_kind():
    errors = pd.DataFrame([{"AP50": 40.0, **{f"dAP50 {k}": float(i) for i, k in enumerate(ERROR_KINDS)},
                            **{k: 10 * i for i, k in enumerate(ERROR_KINDS)}}], index=["run"])
    errors.attrs["min_score"] = 0.5
    table = kinds_table(errors)
    assert table.loc["duplicate"].tolist() == [3.0, 30]
    assert table.columns[1] == "count (score >= 0.5)" and table.attrs["AP50"] == 40.0


def test_no_runs_is_named():
    with pytest.raises(ValueError, match="no runs to diagnose"):
        show_diagnostics({}, "03", "unused")
