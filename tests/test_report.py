"""report.py and viz.py: tables and figures are written where the report expects them, the conclusion's numbers
and rankings come from the run files (and say so when the original study's ranking and AP's disagree), the progress
policy."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

from detr_nb_utils.analysis.comparison import ap_per_layer, comparison_table, original_study_table
from detr_nb_utils.analysis.conclusions import DEMO_NOTE, ranking_conclusion
from detr_nb_utils.notebook.figures import plot_ap_per_layer, plot_loss_curves, save_fig
from detr_nb_utils.notebook.setup_cell import progress_policy, report_dir_for
from detr_nb_utils.notebook.tables import markdown_table, parameter_counts, save_table
from detr_nb_utils.training.config import make_config
from detr_nb_utils.training.runs import RunRecord

matplotlib.use("Agg")


def _record(name: str, layers: int, queries: int, total: list[float], final: list[float], ap: list[float],
            random_weights: bool = False) -> RunRecord:
    """A run folder read back, made up: per epoch 0..n the val losses and AP (fractions), AP per layer."""
    epochs = range(len(total))
    m = pd.DataFrame({"val_loss_total": total, "val_loss_final": final,
                      "val_loss_layer_mean": [t / layers for t in total], "random_weights": random_weights},
                     index=pd.Index(epochs, name="epoch"))
    for stat in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        m[f"val_{stat}"] = ap
    for layer in range(layers):
        m[f"val_AP_layer_{layer}"] = [a * (layer + 1) / layers for a in ap]
    cfg = make_config("study", dec_layers=layers, num_queries=queries, epochs=len(total) - 1)
    best_ap = max(epochs, key=lambda e: (ap[e], -e))
    return RunRecord(run_dir=Path("runs") / name, config=cfg, metrics=m, per_category_ap=pd.DataFrame(),
                     best_epoch_ap=best_ap, best_epoch_loss=min(epochs, key=lambda e: total[e]),
                     split_manifest={}, complete=True)


@pytest.fixture
def records() -> dict[str, RunRecord]:
    """The original study's situation: the 3-layer totals are lower by construction, while the 6-layer model has
    the best AP."""
    return {"dec6_q100": _record("dec6_q100", 6, 100, [75.0, 71.3, 72.0], [11.0, 10.5, 10.6], [0.40, 0.43, 0.42]),
            "dec3_q100": _record("dec3_q100", 3, 100, [54.0, 52.5, 53.0], [12.0, 11.0, 11.5], [0.38, 0.41, 0.40]),
            "dec3_q50": _record("dec3_q50", 3, 50, [53.0, 51.45, 52.0], [12.2, 11.2, 11.4], [0.37, 0.40, 0.39])}


def test_conclusion_computes_rankings_and_flags_the_disagreement(records):
    text = ranking_conclusion(records)
    assert "lowest total validation loss: dec3_q50 (51.450) < dec3_q100 (52.500) < dec6_q100 (71.300)" in text
    assert "By COCO AP (best epoch): dec6_q100 (43.0) > dec3_q100 (41.0) > dec3_q50 (40.0)" in text
    assert "The rankings by total loss and by AP DISAGREE: total loss puts dec3_q100 above dec6_q100, AP puts " \
           "dec6_q100 above dec3_q100; total loss puts dec3_q50 above dec6_q100" in text
    assert "by total loss and by final-layer loss DISAGREE: total loss puts dec3_q100 above dec6_q100, " \
           "final-layer loss puts dec6_q100 above dec3_q100" in text
    assert "dec3_q50 above dec3_q100" in text  # 51.45 < 52.5 in total loss, 40.0 < 41.0 in AP
    assert "The original study reported dec3_q50 (51.45) < dec3_q100 (52.50) < dec6_q100 (71.30)" in text
    assert f"(6 against 3): dec6_q100's total is {71.3 / 52.5:.2f}x dec3_q100's, its final-layer loss " \
           f"{10.5 / 11.0:.2f}x" in text
    assert "dec6_q100 +3.0" in text  # AP gained over epoch 0, in points
    assert DEMO_NOTE not in text


def test_conclusion_with_intervals(records):
    """Given the bootstrap table, each best AP carries its interval and the gains are left to the interval part."""
    table = pd.DataFrame({"best AP low": [41.5, 39.0, 38.2], "best AP high": [44.4, 42.9, 41.7]},
                         index=["dec6_q100", "dec3_q100", "dec3_q50"])
    text = ranking_conclusion(records, intervals=table)
    assert "dec6_q100 (43.0) > dec3_q100 (41.0) > dec3_q50 (40.0) (95% intervals: dec6_q100 [41.5, 44.4], " \
           "dec3_q100 [39.0, 42.9], dec3_q50 [38.2, 41.7])." in text
    assert "AP gained by fine-tuning" not in text and "AP gained by fine-tuning" in ranking_conclusion(records)


def test_conclusion_agreement_ties_demo_and_missing(records):
    flat = {n: _record(n, r.config.dec_layers, r.config.num_queries, [50.0, 40.0], [9.0, 8.0], [0.0, 0.0], True)
            for n, r in records.items()}
    text = ranking_conclusion(flat, missing=["dec9_q1"])
    assert text.startswith(DEMO_NOTE) and "Missing run folders (not compared): dec9_q1." in text
    assert "dec6_q100 (0.0) = dec3_q100 (0.0) = dec3_q50 (0.0)" in text  # ties are ties, not a ranking
    assert "AP does not separate the runs" in text and "DISAGREE" not in text
    same = {n: _record(n, 3, 100, [t, t - 1], [9.0, 8.0], [a, a + 0.01]) for n, t, a in
            (("a", 50.0, 0.30), ("b", 51.0, 0.20), ("c", 52.0, 0.20))}
    assert "The rankings by total loss and by AP agree (no pair of runs" in ranking_conclusion(same)
    one = ranking_conclusion({"dec6_q100": records["dec6_q100"]}, missing=["dec3_q100"])
    assert "Fewer than two runs" in one and "dec3_q100" in one


def test_tables_from_runs(records, tmp_path):
    original = original_study_table(records)
    assert original.loc["dec3_q50", "original study"] == 51.45
    assert original.loc["dec6_q100", "best AP"] == pytest.approx(43.0)
    comp = comparison_table(records)
    assert comp.loc[("dec6_q100", "epoch 0"), "AP"] == pytest.approx(40.0)
    assert comp.loc[("dec6_q100", "lowest total loss (original study)"), "epoch"] == 1
    assert comp.loc[("dec3_q50", "highest AP"), "loss_final"] == 11.2
    layers = ap_per_layer(records)
    assert list(layers.columns) == [1, 2, 3, 4, 5, 6] and math.isnan(layers.loc["dec3_q50", 4])
    assert layers.loc["dec6_q100", 6] == pytest.approx(0.43)
    save_table(comp, "comparison", tmp_path)
    md = (tmp_path / "tables" / "comparison.md").read_text().splitlines()
    assert md[0].startswith("| run | at | layers |") and len(md) == 2 + len(comp)
    assert pd.read_csv(tmp_path / "tables" / "comparison.csv", index_col=[0, 1]).shape == comp.shape


def test_markdown_table_escapes_and_blanks():
    text = markdown_table(pd.DataFrame({"a|b": [1.23456, math.nan]}, index=pd.Index(["x", "y"], name="k")), ".2f")
    assert text.splitlines() == ["| k | a\\|b |", "| --- | --- |", "| x | 1.23 |", "| y |  |"]


def test_parameter_counts_match_the_reference():
    params = parameter_counts()
    assert params.loc["total"].tolist() == [41_524_768, 36_788_512, 36_775_712]  # ../shared/reference/README.md


def test_save_fig_writes_png_and_pdf(records, tmp_path):
    save_fig(plot_loss_curves({n: r.metrics for n, r in records.items()}), "loss", tmp_path)
    save_fig(plot_ap_per_layer(ap_per_layer(records)), "layers", tmp_path)
    for name in ("loss", "layers"):
        assert (tmp_path / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert (tmp_path / "figures" / f"{name}.pdf").read_bytes()[:4] == b"%PDF"


def test_progress_policy(monkeypatch):
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    assert progress_policy(None) is False and progress_policy(True) is True
    monkeypatch.setenv("JPY_SESSION_NAME", "notebooks/03_baseline.ipynb")  # what a Jupyter server sets
    assert progress_policy(None) is True and progress_policy(False) is False


def test_demo_figures_stay_out_of_the_report_unless_asked():
    assert report_dir_for(make_config("study"), None) == Path("report")
    assert report_dir_for(make_config("demo"), None) == Path("runs/demo/report")
    assert report_dir_for(make_config("demo"), "report") == Path("report")


def test_report_embeds_only_what_the_notebooks_export():
    """Every figure and table report/report.md links is one a notebook saves (03-05 name theirs
    ``<nb>_<variant>_<what>``), and every figure the analysis of issue 7 adds is embedded."""
    import re

    root = Path(__file__).resolve().parents[1]
    source = "\n".join(p.read_text() for p in sorted((root / "notebooks").glob("0*.py")))
    assert "save_fig" in source, "the notebooks' py:percent sources are missing"
    saved = set(re.findall(r'save_(?:fig|table|takeaway)\([^,]+, "([^"]+)"', source))
    per_run = set(re.findall(r'save_(?:fig|table|takeaway)\([^,]+, f"\{\{?prefix\}\}?_([a-z_]+)"', source))
    report = (root / "report" / "report.md").read_text()
    linked = set(re.findall(r"\((?:figures|tables)/([0-9a-z_]+)\.(?:png|md|csv)\)", report))
    for name in linked:
        m = re.fullmatch(r"0[345]_dec\d+_q\d+_([a-z_]+)", name)
        assert name in saved or (m and m[1] in per_run), f"report.md links {name}, which no notebook saves"
    for new in ("02_decoder_attention", "02_encoder_attention", "05_query_match_counts", "05_query_usage_before",
                "05_query_usage_after", "06_finetuning_gain", "06_differences", "06_seeds", "06_cost_vs_ap",
                "06_ap_intervals", "06_query_choices", "06_query_differences", "06_conclusion"):
        assert new in saved and new in linked, new
