"""The takeaways a student reads at the end of 01, 03, 04, 05 and 07: every number is the data's, the verdict follows
the interval, a loss of AP comes with why, the demo's note appears once."""
from __future__ import annotations

import math
import shutil

import numpy as np
import pandas as pd
import pytest
from test_bootstrap import perturbed_detections, sample_gt  # noqa: F401 (fixture)
from test_comparison import _write_run

from detr_nb_utils.analysis.findings import Finding
from detr_nb_utils.analysis.baseline import untrained_choice
from detr_nb_utils.analysis.own_data import run_change
from detr_nb_utils.notebook.takeaways import WIDTH, best_line, finetune_lines, sign_line, split_lines, \
    takeaway_markdown, untrained_line
from detr_nb_utils.training import runs


def test_markdown_has_the_note_once_and_wrapped_bullets():
    text = takeaway_markdown(["a " * 100, "", "b"], note="DEMO note")
    assert text.count("DEMO note") == 1 and text.startswith("*DEMO note*")
    assert text.count("\n- ") == 2  # the empty line is left out
    assert "\n\n- b" in text  # each bullet its own paragraph
    assert max(len(line) for line in text.splitlines()) <= WIDTH
    hyphens = takeaway_markdown(["fine-tuning " * 30])
    assert all(line.rstrip().endswith("fine-tuning") for line in hyphens.splitlines())  # never "fine-" / "tuning"


def _split(val_shares: dict[str, float]):
    names = list(val_shares)
    diversity = pd.DataFrame({"name": names + ["absent"], "source": [10] * len(names) + [0],
                              "source_share": [1 / len(names)] * len(names) + [0.0],
                              "val": [1] * len(names) + [0], "val_share": [*val_shares.values(), 0.0]})
    summary = pd.DataFrame({"images": [8, 2], "boxes": [80, 20], "images > 50 boxes": [1, 0]}, index=["train", "val"])
    return summary, diversity


def test_split_lines_place_the_gap_among_random_splits():
    summary, diversity = _split({"cat": 0.5 + 0.0305, "dog": 0.5 - 0.0305})
    gaps = np.linspace(0, 10, 101)  # median 5, 95th percentile 9.5; 31 of the 101 below 3.05
    lines = split_lines(summary, diversity, gaps)
    assert "3.05 points (cat)" in lines[1] and "median 5.00 and 95th percentile 9.50" in lines[1]
    assert "larger than 31% of them" in lines[1] and "as well as chance does" in lines[1]
    assert "2 of the source's 2 categories" in lines[0]  # the absent category is not one of the source's
    summary, diversity = _split({"cat": 0.5 + 0.2, "dog": 0.5 - 0.2})
    assert "worse than chance" in split_lines(summary, diversity, gaps)[1]


def _arms(original: tuple[float, float, float], others: dict | None = None):
    rows = {"original": original, **(others or {})}
    table = pd.DataFrame({arm: {"seeds": 3, "epoch-0 AP": 60.0, "final change": v, "final change low": lo,
                                "final change high": hi} for arm, (v, lo, hi) in rows.items()}).T
    findings = [Finding(f"dec6_q100, recipe {arm} (3 seeds): AP change from epoch 0 to the final epoch", v, lo, hi,
                        "100 validation images and 3 seeds", data={"label": f"{arm}: epoch 5 - epoch 0"})
                for arm, (v, lo, hi) in rows.items()]
    findings += [Finding(f"dec6_q100, recipe {arm} minus recipe original, AP at the final epoch", v - original[0],
                         v - original[0] - 1, v - original[0] + 1, "100 validation images and 3 seeds",
                         data={"label": f"{arm} - original, epoch 5"}) for arm, (v, _, _) in (others or {}).items()]
    return table, findings


def test_a_loss_is_interpreted_with_the_recipe_and_the_arms():
    table, findings = _arms((-5.5, -7.0, -4.0), {"checkpoint_rates": (-0.5, -1.5, 0.5)})
    lines = finetune_lines("dec6_q100", table, findings, "original", 1e-4, 1e-5)
    assert "-5.5 points [-7.0, -4.0]" in lines[0] and "a loss beyond sampling" in lines[0]
    assert "100 validation images and 3 seeds" in lines[0] and "(AP 60.0)" in lines[0]
    assert "not a broken setup" in lines[1] and "10x" in lines[1]
    assert "checkpoint_rates -0.5 points [-1.5, +0.5] (minus the original +5.0 points [+4.0, +6.0])" in lines[2]
    pointed = finetune_lines("dec3_q100", table, findings, "original", 1e-4, 1e-5, why="WHY")  # 04, 05: see 03
    assert pointed[0] == lines[0].replace("dec6_q100", "dec3_q100", 1) and pointed[1] == "WHY"


def test_a_gain_or_no_change_is_said_so_and_without_arms_the_way_to_measure():
    table, findings = _arms((2.0, 0.5, 3.5))
    lines = finetune_lines("dec6_q100", table, findings, "original", 1e-4, 1e-5)
    assert "a gain beyond sampling" in lines[0] and len(lines) == 1
    table, findings = _arms((-1.0, -2.5, 0.5))
    lines = finetune_lines("dec6_q100", table, findings, "original", 1e-4, 1e-5)
    assert "cannot be told from no change" in lines[0] and "recipe_arms" in lines[-1]
    assert "no fine-tuned epoch" in finetune_lines("x", table, findings, "warmup", 1e-4, 1e-5)[0]


def test_sign_line_names_the_order():
    assert sign_line("dec3_q100", "dec6_q100", "the 3-layer model minus the 6-layer one it was cut from") \
        .startswith("Differences are signed dec3_q100 - dec6_q100")


@pytest.fixture(scope="module")
def choice_runs(sample_gt, coco_sample, tmp_path_factory):  # noqa: F811
    """A choice of queries good at epoch 0, and three fine-tuned runs that end worse."""
    tmp = tmp_path_factory.mktemp("choice")
    split = tmp / "split"
    split.mkdir()
    shutil.copyfile(coco_sample / "annotations" / "instances_val2017_sample.json", split / "val.json")
    good = perturbed_detections(sample_gt, 0.02, seed=1, drop=0.05, n_false=20)
    bad = [perturbed_detections(sample_gt, 0.25, seed=s, drop=0.4, n_false=20) for s in (2, 3, 4)]
    _write_run(tmp / "runs", "dec3_q50_most_matched_seed42", split, 3, 50, 42, {0: good, 1: bad[0]}, sample_gt)
    for k, s in enumerate((42, 43, 44)):
        _write_run(tmp / "runs", f"dec3_q50_seed{s}", split, 3, 50, s, {0: bad[k], 1: bad[k]}, sample_gt)
    return {p.name: runs.load_run(p) for p in sorted((tmp / "runs").iterdir()) if p.is_dir()}


def test_untrained_choice_against_fine_tuning(choice_runs):
    untrained = choice_runs["dec3_q50_most_matched_seed42"]
    trained = {k: r for k, r in choice_runs.items() if r is not untrained}
    f = untrained_choice(untrained, trained, n_resamples=200)
    assert f.value == pytest.approx(f.data["untrained"] - f.data["trained"])
    assert f.data["untrained"] == pytest.approx(100 * untrained.metrics.loc[0, "val_AP"])
    mean = np.mean([100 * r.metrics.loc[r.final_epoch, "val_AP"] for r in trained.values()])
    assert f.data["trained"] == pytest.approx(mean)
    assert f.verdict == "beyond sampling" and f.low > 0 and "3 training seeds" in f.covers
    line = untrained_line(f, "most_matched")
    assert "untrained beat fine-tuning beyond sampling" in line and f"AP {f.data['untrained']:.1f}" in line
    assert not math.isnan(f.value)


def test_run_change_on_a_validation_set_of_its_own(choice_runs, sample_gt):  # noqa: F811
    """07's change: one run, its own validation annotations, paired over the images; a loss gets the hint."""
    record = choice_runs["dec3_q50_most_matched_seed42"]
    table, findings = run_change(record, sample_gt, n_resamples=200)
    expected = 100 * (record.metrics.loc[1, "val_AP"] - record.metrics.loc[0, "val_AP"])
    assert table.loc["original", "final change"] == pytest.approx(expected)
    assert table.loc["original", "final change high"] < 0 and findings[0].covers == "the 24 validation images (one run)"
    lines = finetune_lines(record.run_dir.name, table, findings, "original", 1e-4, 1e-5, hint="HINT")
    assert "a loss beyond sampling" in lines[0] and "not a broken setup" in lines[1] and lines[2] == "HINT"
    same = choice_runs["dec3_q50_seed42"]  # the same detections at both epochs
    table, _ = run_change(same, sample_gt, n_resamples=50)
    assert table.loc["original", ["final change", "final change low", "final change high"]].tolist() == [0, 0, 0]


def test_best_line_names_the_leader_and_whether_it_is_told_apart():
    best = Finding("the highest final AP of a, b, c: a", 60.1, signed=False, unit="AP",
                   data={"leader": "a", "tied": ["c"], "final AP": {"a": 60.1, "b": 54.7, "c": 59.0}})
    line = best_line(best)
    assert line.startswith("Fine-tuned, a ends highest with AP 60.1") and "b 54.7, c 59.0" in line
    assert "tied with c" in line
    alone = Finding(best.claim, 60.1, data={"leader": "a", "tied": [], "final AP": {"a": 60.1, "b": 50.0}})
    assert "ahead of every other choice beyond sampling" in best_line(alone)
    assert best_line(Finding("the best of a, b", math.nan, why="nothing to rank")) == "the best of a, b: nothing to rank."
