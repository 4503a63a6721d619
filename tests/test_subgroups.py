"""Each variant against the baseline on object sizes and crowded images: paired with the headline's differences,
each group's AP is COCOeval's on that part of the data, and the sentences say what the table says."""
from __future__ import annotations

import numpy as np
import pytest
from test_bootstrap import sample_gt  # noqa: F401 (fixture)
from test_comparison import analysed, quality, run_folders  # noqa: F401 (fixtures)

from detr_nb_utils.analysis.bootstrap import MatchedDetections
from detr_nb_utils.analysis.subgroups import GROUPS, SubgroupAp, objects_per_image, subgroup_sentences
from detr_nb_utils.training.runs import load_detections


@pytest.fixture(scope="module")
def subgroups(analysed):  # noqa: F811
    _, _, main, bootstrap = analysed
    sub = SubgroupAp(bootstrap)
    return sub, sub.table(main), main, bootstrap


def test_rows_and_the_overall_change_is_the_headline_difference(subgroups):
    _, table, main, bootstrap = subgroups
    assert list(table["variant"].unique()) == ["dec3_q100", "dec3_q50"]
    assert list(table[table["variant"] == "dec3_q100"]["group"]) == list(GROUPS)
    for variant, cap in (("dec3_q100", None), ("dec3_q50", 50)):
        row = table[(table["variant"] == variant) & (table["group"] == "all objects")].iloc[0]
        d = bootstrap.diff((variant, main[variant]), ("dec6_q100", main["dec6_q100"]), "final", cap)
        assert row["change"] == pytest.approx(100 * d["point"])
        assert (row["change low"], row["change high"]) == pytest.approx((100 * d["low"], 100 * d["high"]))
        assert row["beyond overall"] == row["beyond overall low"] == row["beyond overall high"] == 0
        assert row["compared on"] == ("AP@50det" if cap else "AP")


def test_group_ap_is_cocoeval_on_that_part(subgroups, sample_gt):  # noqa: F811
    sub, table, main, bootstrap = subgroups
    (record,) = main["dec3_q100"].values()
    dets = load_detections(record.run_dir, record.final_epoch)
    rows = table[table["variant"] == "dec3_q100"].set_index("group")
    small = MatchedDetections(sample_gt, dets, bootstrap.img_ids, area="small").point[0]
    assert rows.loc["small", "AP"] == pytest.approx(100 * small)
    objects = objects_per_image(sample_gt, bootstrap.img_ids)
    crowded = [i for i, n in zip(bootstrap.img_ids, objects) if n >= sub.min_objects]
    assert 0 < len(crowded) < len(bootstrap.img_ids) and sub.min_objects >= 2
    assert rows.loc["crowded images", "AP"] == pytest.approx(100 * MatchedDetections(sample_gt, dets, crowded).point[0])
    assert rows.loc["crowded images", "images"] + rows.loc["other images", "images"] == len(bootstrap.img_ids)
    assert rows.loc["crowded images", "objects"] + rows.loc["other images", "objects"] == rows.loc["all objects",
                                                                                                    "objects"]
    for name in ("change", "beyond overall"):
        ordered = rows[f"{name} low"] <= rows[f"{name} high"]
        assert ordered[rows[name].notna()].all()


def test_sentences_carry_the_table(subgroups):
    _, table, _, _ = subgroups
    lines = subgroup_sentences(table)
    assert len(lines) == len(table)
    row = table[(table["variant"] == "dec3_q100") & (table["group"] == "small")].iloc[0]
    line = lines[int(np.flatnonzero((table["variant"] == "dec3_q100") & (table["group"] == "small"))[0])]
    assert f"{row['change']:+.1f} points" in line and f"{abs(row['beyond overall']):.1f} points" in line
    assert ("beyond the noise" in line) == bool(row["beyond overall excludes 0"])


def test_the_baseline_must_be_there(subgroups):
    sub, _, main, _ = subgroups
    with pytest.raises(ValueError, match="no runs of the baseline 'dec9'"):
        sub.table(main, baseline="dec9")


def test_forest_plot_draws_each_interval_and_names_empty_groups(subgroups):
    from detr_nb_utils.notebook.figures_diagnostics import plot_subgroup_changes

    _, table, _, _ = subgroups
    empty = table.copy()
    empty.loc[empty["group"] == "large", ["objects", "change", "change low", "change high"]] = [0, np.nan, np.nan,
                                                                                                np.nan]
    fig = plot_subgroup_changes(empty)
    ax = fig.axes[0]
    drawn = sum(len(c.get_segments()) for c in ax.collections)
    assert drawn == int((empty["objects"] > 0).sum())  # one interval per variant and group with objects
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert "large (no objects)" in labels and "small" in labels
    assert f"{table.attrs['min_objects']} or more objects" in ax.get_title()


def test_only_the_baseline_gives_an_empty_table_a_figure_and_no_finding(subgroups):
    from detr_nb_utils.analysis.diagnostic_findings import subgroup_findings, subgroup_paragraph
    from detr_nb_utils.notebook.figures_diagnostics import plot_subgroup_changes

    sub, _, main, _ = subgroups
    alone = sub.table({"dec6_q100": main["dec6_q100"]})  # 06 before 04 and 05 have run
    assert alone.empty and {"variant", "group", "objects"} <= set(alone.columns)
    assert subgroup_findings(alone) == []
    assert subgroup_paragraph([]).startswith("No variant to set against the baseline")
    fig = plot_subgroup_changes(alone)
    assert "nothing to compare yet" in fig.axes[0].texts[0].get_text()


def test_subgroup_findings_carry_the_table(subgroups):
    from detr_nb_utils.analysis.diagnostic_findings import subgroup_findings, subgroup_paragraph

    _, table, _, _ = subgroups
    found = {f.key: f for f in subgroup_findings(table)}
    row = table[(table["variant"] == "dec3_q100") & (table["group"] == "all objects")].iloc[0]
    overall = found["subgroup/dec3_q100/all objects"]
    assert (overall.value, overall.low, overall.high) == (row["change"], row["change low"], row["change high"])
    small = table[(table["variant"] == "dec3_q100") & (table["group"] == "small")].iloc[0]
    if small["objects"] > 0:  # a group is measured against the variant's change on all objects
        assert found["subgroup/dec3_q100/small"].value == small["beyond overall"]
    text = subgroup_paragraph(list(found.values()), table.attrs["baseline"], table.attrs["min_objects"])
    assert f"dec3_q100 - {table.attrs['baseline']}: {overall.interval()} on all objects" in text
