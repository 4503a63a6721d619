"""report.py and viz.py: tables and figures are written where the report expects them, the conclusion's numbers
and rankings come from the run files (and say so when the original study's ranking and AP's disagree), the progress
policy."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import pandas as pd
import pytest
from test_bootstrap import sample_gt  # noqa: F401 (fixture)

from detr_nb_utils.analysis.bootstrap import MatchedDetections
from detr_nb_utils.analysis.comparison import (
    ap_per_layer,
    comparison_table,
    original_study_table,
    reported_losses,
)
from detr_nb_utils.analysis.conclusions import (
    TINY_NOTE,
    agreements,
    depth_finding,
    ranking_finding,
    ranking_table,
    rankings,
    runs_note,
)
from detr_nb_utils.analysis.findings import Finding
from detr_nb_utils.notebook.figures import plot_ap_per_layer, plot_loss_curves, save_fig
from detr_nb_utils.notebook.setup_cell import progress_policy, report_dir_for
from detr_nb_utils.notebook.tables import markdown_table, parameter_counts, save_table
from detr_nb_utils.training.config import make_config
from detr_nb_utils.training.runs import RunRecord, best_epoch

matplotlib.use("Agg")


def _record(name: str, layers: int, queries: int, total: list[float], final: list[float], ap: list[float],
            tiny: bool = False) -> RunRecord:
    """A run folder read back, made up: per epoch 0..n the val losses and AP (fractions), AP per layer; ``tiny``:
    the demo world's tiny DETR."""
    epochs = range(len(total))
    m = pd.DataFrame({"val_loss_total": total, "val_loss_final": final,
                      "val_loss_layer_mean": [t / layers for t in total]}, index=pd.Index(epochs, name="epoch"))
    for stat in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        m[f"val_{stat}"] = ap
    for layer in range(layers):
        m[f"val_AP_layer_{layer}"] = [a * (layer + 1) / layers for a in ap]
    cfg = make_config("demo" if tiny else "study", dec_layers=layers, num_queries=queries, epochs=len(total) - 1)
    history = [{"epoch": e, "val_AP": ap[e], "val_loss_total": total[e]} for e in epochs]
    return RunRecord(run_dir=Path("runs") / name, config=cfg, metrics=m, per_category_ap=pd.DataFrame(),
                     best_epoch_ap=best_epoch(history, "val_AP", "max"),
                     best_epoch_loss=best_epoch(history, "val_loss_total", "min"), split_manifest={}, complete=True)


@pytest.fixture
def records() -> dict[str, RunRecord]:
    """The original study's situation: the 3-layer totals are lower by construction, while the 6-layer model has
    the best AP. Epochs 0, 1, 2; the final epoch (2) is not the best one."""
    return {"dec6_q100": _record("dec6_q100", 6, 100, [75.0, 71.3, 72.0], [11.0, 10.5, 10.6], [0.40, 0.43, 0.42]),
            "dec3_q100": _record("dec3_q100", 3, 100, [54.0, 52.5, 53.0], [12.0, 11.0, 11.5], [0.38, 0.41, 0.40]),
            "dec3_q50": _record("dec3_q50", 3, 50, [53.0, 51.45, 52.0], [12.2, 11.2, 11.4], [0.37, 0.40, 0.39])}


def test_rankings_are_data_and_flag_the_disagreement(records):
    ranked = rankings(records)
    assert ranked["original"].tiers == [["dec3_q50"], ["dec3_q100"], ["dec6_q100"]]  # 51.45 < 52.5 < 71.3
    assert ranked["original"].values["dec6_q100"] == 71.3  # best over the fine-tuned epochs
    assert ranked["total"].values == {"dec6_q100": 72.0, "dec3_q100": 53.0, "dec3_q50": 52.0}  # the final epoch
    assert ranked["final_layer"].tiers == [["dec6_q100"], ["dec3_q50"], ["dec3_q100"]]  # 10.6 < 11.4 < 11.5
    assert ranked["AP"].tiers == [["dec6_q100"], ["dec3_q100"], ["dec3_q50"]]  # 42 > 40 > 39 at the final epoch
    assert ranked["AP"].values["dec6_q100"] == pytest.approx(42.0)
    flips = agreements(ranked)
    assert set(flips[("total", "final_layer")]) == {("dec3_q50", "dec6_q100"), ("dec3_q100", "dec6_q100")}
    assert set(flips[("original", "AP")]) == {("dec3_q50", "dec6_q100"), ("dec3_q100", "dec6_q100"),
                                              ("dec3_q50", "dec3_q100")}
    assert ranking_table(ranked).loc["dec6_q100"].to_dict() == {
        "the original study's criterion": 3, "total loss": 3, "final-layer loss": 1, "per-layer mean loss": 1,
        "COCO AP": 1}
    # the original study's reported ranking against AP: a paired difference beyond sampling overturns a pair
    diffs = [Finding("", -2.0, -3.0, -1.0, verdict="beyond sampling", key="diff/dec3_q100 - dec6_q100"),
             Finding("", -3.0, -4.0, -2.0, verdict="beyond sampling", key="diff/dec3_q50 - dec6_q100"),
             Finding("", -1.0, -2.5, 0.5, verdict="within sampling", key="diff/dec3_q50 - dec3_q100")]
    fate = ranking_finding(ranked, diffs)
    assert fate.data["loss order"] == "dec3_q50 < dec3_q100 < dec6_q100"  # 51.45 < 52.5 < 71.3, as reported
    assert fate.data["verdict"] == "overturned" and fate.data["AP order"] == ranked["AP"].order()
    assert set(fate.data["overturned"]) == {"dec3_q50 < dec6_q100", "dec3_q100 < dec6_q100"}
    assert fate.data["undecided"] == ["dec3_q50 ~ dec3_q100"]
    depth = depth_finding(records)
    assert depth.value == pytest.approx(71.3 / 52.5) and depth.data["shallow"] == "dec3_q100"
    assert depth.data["final-layer ratio"] == pytest.approx(10.5 / 11.0)
    assert runs_note(records.values()) == ""


def test_conclusion_with_intervals(records):
    """Given the headline table, each final AP carries its interval and the changes are left to the interval part."""
    head = pd.DataFrame({"AP": [42.0, 40.0, 39.0], "AP low": [41.5, 39.0, 38.2], "AP high": [44.4, 42.9, 41.7],
                         "AP@50det": [41.0, 39.5, 39.0]}, index=["dec6_q100", "dec3_q100", "dec3_q50"])
    ranked = rankings(records, head)
    assert ranked["AP@50det"].tiers == [["dec6_q100"], ["dec3_q100"], ["dec3_q50"]]


def test_ties_demo_and_missing(records):
    flat = {n: _record(n, r.config.dec_layers, r.config.num_queries, [50.0, 40.0], [9.0, 8.0], [0.0, 0.0], True)
            for n, r in records.items()}
    ranked = rankings(flat)
    assert ranked["AP"].tiers == [["dec6_q100", "dec3_q100", "dec3_q50"]]  # ties are ties, not a ranking
    assert set(ranked["AP"].ranks.values()) == {1}
    assert runs_note(flat.values()) == TINY_NOTE  # the demo world says so
    same = {n: _record(n, 3, 100, [t, t - 1], [9.0, 8.0], [a, a + 0.01]) for n, t, a in
            (("a", 50.0, 0.30), ("b", 51.0, 0.20), ("c", 52.0, 0.20))}
    ranked = rankings(same)
    assert ranked["AP"].tiers == [["a"], ["b", "c"]] and agreements(ranked)[("total", "AP")] == []


def test_best_never_counts_epoch_0_and_losses_stay_losses():
    """Epoch 0 scores best on every criterion and fine-tuning only loses: the tables pick fine-tuned epochs and the
    changes are negative, called losses."""
    worse = {"dec6_q100": _record("dec6_q100", 6, 100, [70.0, 72.0, 71.0], [10.0, 10.8, 10.6], [0.42, 0.40, 0.39]),
             "dec3_q100": _record("dec3_q100", 3, 100, [50.0, 53.0, 52.0], [11.0, 11.5, 11.2], [0.40, 0.37, 0.38])}
    original = original_study_table(worse)
    assert original.loc["dec6_q100", "best total loss"] == 71.0  # not epoch 0's 70.0
    assert original.loc["dec6_q100", "AP change"] == pytest.approx(-3.0)
    comp = comparison_table(worse)
    assert comp.loc[("dec6_q100", "highest AP (secondary)"), "epoch"] == 1
    assert comp.loc[("dec3_q100", "lowest total loss (original study)"), "epoch"] == 2


def test_tables_from_runs(records, tmp_path):
    original = original_study_table(records)
    reported = reported_losses(list(records))  # the original study's COCO losses: a table of their own
    assert reported.loc["dec3_q50"].tolist() == [51.45] and reported.shape == (3, 1)
    assert not any("original study" in c or "reported" in c for c in original.columns)
    assert original.loc["dec6_q100", "final AP"] == pytest.approx(42.0)
    assert original.loc["dec6_q100", "AP change"] == pytest.approx(2.0)
    comp = comparison_table(records)
    assert comp.loc[("dec6_q100", "epoch 0"), "AP"] == pytest.approx(40.0)
    assert comp.loc[("dec6_q100", "final epoch"), "epoch"] == 2
    assert comp.loc[("dec6_q100", "lowest total loss (original study)"), "epoch"] == 1
    assert comp.loc[("dec3_q50", "highest AP (secondary)"), "loss_final"] == 11.2
    layers = ap_per_layer(records)  # at the final epoch
    assert list(layers.columns) == [1, 2, 3, 4, 5, 6] and math.isnan(layers.loc["dec3_q50", 4])
    assert layers.loc["dec6_q100", 6] == pytest.approx(0.42) and ap_per_layer(records, "best").loc["dec6_q100", 6] \
        == pytest.approx(0.43)
    save_table(comp, "comparison", tmp_path)
    md = (tmp_path / "tables" / "comparison.md").read_text().splitlines()
    assert md[0].startswith("| run | at | layers |") and len(md) == 2 + len(comp)
    assert "| 2 |" in md[3]  # the final epoch, an integer
    back = pd.read_csv(tmp_path / "tables" / "comparison.csv")  # plainly
    assert back.shape == (len(comp), 2 + comp.shape[1]) and list(back.columns[:2]) == ["run", "at"]


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


def test_a_stamped_demo_figure_is_saved_as_png_only(records, tmp_path):
    """The demo's figures carry its stamp and are not for a report: no PDF (the HTML report inlines the PNG)."""
    from detr_nb_utils.notebook.figures import set_stamp

    set_stamp("DEMO")
    try:
        save_fig(plot_loss_curves({n: r.metrics for n, r in records.items()}), "loss", tmp_path)
    finally:
        set_stamp(None)
    assert (tmp_path / "figures" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "figures" / "loss.pdf").exists()


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
    """Every figure and table report/report.md embeds is one a notebook saves (03-05 name theirs
    ``<nb>_<variant>_<what>``), and the attention maps, the query figures and 06's gains, differences, seeds, cost and
    intervals are all embedded."""
    import re

    root = Path(__file__).resolve().parents[1]
    # the notebooks, and the sequence 03-05 share (its figures and tables are named after the notebook's prefix)
    source = "\n".join(p.read_text() for p in [*sorted((root / "notebooks").glob("0*.py")),
                                                root / "detr_nb_utils" / "notebook" / "fine_tune.py"])
    assert "save_fig" in source, "the notebooks' py:percent sources are missing"
    saved = set(re.findall(r'(?:save|show)_(?:fig|table|takeaway|findings)\(.*?, "(0\d_[a-z0-9_]+)"', source, re.S))
    saved |= set(re.findall(r'\(\w+, "(0\d_[a-z0-9_]+)"\)', source))  # names a loop hands to save_fig
    per_run = set(re.findall(r'(?:save|show)_(?:fig|table|takeaway)\([^,]+, f"\{\{?prefix\}\}?_([a-z_]+)"', source))
    report = (root / "report" / "report.md").read_text()
    linked = set(re.findall(r"\{\{(?:figure|table|csv):([0-9a-z_]+)", report))
    assert len(linked) > 30
    for name in linked:
        m = re.fullmatch(r"0[345]_dec\d+_q\d+_([a-z_]+)", name)
        assert name in saved or (m and m[1] in per_run), f"report.md links {name}, which no notebook saves"
    for new in ("02_decoder_attention", "02_encoder_attention", "05_query_match_counts", "06_finetuning_gain",
                "06_differences", "06_seeds", "06_cost_vs_ap", "06_changes_and_differences", "06_query_choices",
                "06_query_differences", "06_original_study", "06_losses", "06_class_ap", "06_pr_curves",
                "06_confusion", "06_errors", "06_layer_errors", "06_sizes", "06_subgroups", "07_takeaway"):
        assert new in saved and new in linked, new
    assert "06_findings" in source and "{{findings:answer}}" in report and "{{limitations}}" in report


def test_a_flip_within_the_noise_is_not_called_a_disagreement():
    from detr_nb_utils.analysis.conclusions import Ranking, discordant

    first = Ranking("total loss", {"a": 1.0, "b": 2.0}, False, 2)  # a above b
    second = Ranking("COCO AP", {"a": 40.0, "b": 41.0}, True, 1)  # b above a
    assert discordant(first, second) == [("a", "b")]
    ranked = {"original": first, "AP": second}
    within = Finding("", 1.0, -0.5, 2.5, verdict="within sampling", key="diff/b - a")
    fate = ranking_finding(ranked, [within])
    assert fate.data["verdict"] == "not confirmed" and fate.data["overturned"] == []
    assert fate.data["undecided"] == ["a ~ b"]
    beyond = Finding("", 1.0, 0.5, 2.5, verdict="beyond sampling", key="diff/b - a")
    assert ranking_finding(ranked, [beyond]).data["overturned"] == ["a < b"]
    agree = Finding("", -1.0, -2.5, -0.5, verdict="beyond sampling", key="diff/b - a")  # AP agrees: a above b
    assert ranking_finding(ranked, [agree]).data["verdict"] == "survives"


def test_epoch0_ap_beside_the_paper_carries_its_interval_and_says_why_the_paper_has_none(sample_gt):  # noqa: F811
    """02's comparison with the paper's 42.0: this split's AP with its interval over the validation images, the
    reference without one, set side by side and never subtracted."""
    from test_bootstrap import perturbed_detections

    from detr_nb_utils.notebook.tables import ap_vs_paper, checkpoint_takeaway

    detections = perturbed_detections(sample_gt, 0.1, seed=1)
    matched = MatchedDetections(sample_gt, detections, sorted(sample_gt.getImgIds()))
    metrics = {k: matched.point[0] if k == "AP" else matched.point[1] if k == "AP50" else 0.3
               for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")} | {"detections": detections}
    table = ap_vs_paper(metrics, None, sample_gt, n_resamples=200)
    assert table.loc["AP", "low"] <= table.loc["AP", "this split, epoch 0"] <= table.loc["AP", "high"]
    assert table.attrs["n_images"] == len(sample_gt.getImgIds()) and table.loc["AP", "paper"] == 42.0
    params = pd.DataFrame({"dec6_q100": [10, 100]}, index=["backbone", "total"])
    text = checkpoint_takeaway(params, pd.DataFrame(), table)
    low, high = table.loc["AP", "low"], table.loc["AP", "high"]
    assert f"[{low:.1f}, {high:.1f}] (95% interval over its {table.attrs['n_images']} validation images)" in text
    assert "published without an interval" in text and f"42.0 lies {'inside' if low <= 42 <= high else 'outside'}" \
        in text
