"""06's diagnostics said in words and tables that fit: AP by size explains an empty size, the kinds of error a
variant pays most for are named with their cost, per-class AP of several runs side by side keeps each interval in
one cell."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from detr_nb_utils.analysis.diagnostic_findings import (
    class_ap_by_variant,
    errors_by_kind,
    errors_sentence,
    sizes_sentence,
    sizes_table,
)
from detr_nb_utils.analysis.errors import ERROR_KINDS
from detr_nb_utils.notebook.table_format import display_table


def _sizes(ap_small: float, ap_medium: float) -> pd.DataFrame:
    rows = {"all": (40, 50.0), "small": (10, ap_small), "medium": (30, ap_medium), "large": (0, math.nan)}
    return pd.DataFrame({"objects": [n for n, _ in rows.values()], "AP": [a for _, a in rows.values()],
                         "AR100": [a for _, a in rows.values()]}, index=pd.Index(list(rows), name="size"))


def test_sizes_sentence_names_the_empty_size_and_every_runs_ap():
    sizes = {"dec6_q100, seed 42": _sizes(20.04, 60.0), "dec3_q50, seed 42": _sizes(15.0, 55.54)}
    text = sizes_sentence(sizes)
    assert "The validation images hold 10 small, 30 medium, 0 large objects" in text
    assert "No large object is in these images, so that size has no AP (an empty row, not a zero)." in text
    assert "dec6_q100, seed 42: small 20.0; medium 60.0" in text
    assert "dec3_q50, seed 42: small 15.0; medium 55.5" in text
    assert "large" not in text.split("AP by size")[1]  # no number for a size without objects
    assert sizes_sentence({}) == "No run to break down by object size."
    table = sizes_table(sizes)
    assert table.index.names == ["run", "size"] and table.attrs["units"] == {"AP": "points", "AR100": "points"}
    assert display_table(table).shape[1] <= 10


def _errors() -> pd.DataFrame:
    rows = {}
    for v, costs in (("dec6_q100", (0.5, 2.0, 0.1, 3.5, 0.2, 2.5)), ("dec3_q50", (1.0, 4.6, 0.5, 5.7, 0.1, 3.0))):
        rows[v] = {"AP50": 80.0, **{f"dAP50 {k}": c for k, c in zip(ERROR_KINDS, costs)},
                   **{k: int(10 * c) for k, c in zip(ERROR_KINDS, costs)}}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.attrs["min_score"] = 0.5
    return table


def test_errors_sentence_names_the_two_costliest_kinds():
    text = errors_sentence(_errors(), {"dec6_q100": 42})
    assert "dec6_q100 (AP50 80.0, seed 42): duplicate 3.5, then missed 2.5" in text
    assert "dec3_q50 (AP50 80.0): duplicate 5.7, then localisation 4.6" in text and "no interval" in text


def test_errors_by_kind_turns_the_table_to_fit():
    turned = errors_by_kind(_errors())
    assert list(turned.index) == list(ERROR_KINDS)
    assert list(turned.columns) == ["dec6_q100 dAP50", "dec6_q100 count", "dec3_q50 dAP50", "dec3_q50 count"]
    assert turned.loc["duplicate", "dec3_q50 dAP50"] == pytest.approx(5.7)
    assert turned.loc["duplicate", "dec3_q50 count"] == 57
    shown = display_table(turned, ".1f")
    assert shown.shape[1] <= 10 and shown.columns[1] == "dec6_q100 dAP50 (points)"
    assert shown.iloc[3, 1] == "3.5"  # a cost, not a signed change


def test_class_ap_by_variant_keeps_each_interval_in_one_cell():
    def classes(ap: float) -> pd.DataFrame:
        return pd.DataFrame({"category_id": [1], "objects": [12], "images": [5], "AP": [ap], "low": [ap - 5],
                             "high": [ap + 4]}, index=pd.Index(["cat"], name="class"))

    table = class_ap_by_variant({"a": classes(50.0), "b": classes(40.0)})
    shown = display_table(table, ".1f")
    assert list(shown.columns) == ["class", "objects", "a AP (points, 95% interval)", "b AP (points, 95% interval)"]
    assert shown.iloc[0].tolist() == ["cat", "12", "50.0 [45.0, 54.0]", "40.0 [35.0, 44.0]"]
