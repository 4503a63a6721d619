"""How a table reads: flat headers (never a Python tuple), no "index" column, counts such as epochs as integers,
intervals in one cell with the unit in the header, and CSVs that ``pandas.read_csv`` reads plainly (the demo's
stamp in a sidecar file, not in the data)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from detr_nb_utils.notebook.figures import set_stamp
from detr_nb_utils.notebook.table_format import display_table, flat, markdown_table
from detr_nb_utils.notebook.tables import STAMP_SUFFIX, save_table


@pytest.fixture
def stamped():
    set_stamp("DEMO: a stamp")
    yield "DEMO: a stamp"
    set_stamp(None)


def _two_level() -> pd.DataFrame:
    columns = pd.MultiIndex.from_tuples([("final AP", "seeds"), ("final AP", "mean"), ("epoch-0 AP", "mean")])
    return pd.DataFrame([[3, 61.234, 66.5], [1, 58.0, 66.5]], columns=columns,
                        index=pd.Index(["dec6_q100", "dec3_q100"], name="variant"))


def test_headers_are_flat_and_the_index_is_a_named_column():
    shown = display_table(_two_level(), ".1f")
    assert list(shown.columns) == ["variant", "final AP seeds", "final AP mean", "epoch-0 AP mean"]
    assert not any(c.startswith("(") for c in shown.columns)
    md = markdown_table(_two_level(), ".1f").splitlines()
    assert md[0] == "| variant | final AP seeds | final AP mean | epoch-0 AP mean |"
    assert md[2] == "| dec6_q100 | 3 | 61.2 | 66.5 |"
    plain = display_table(pd.DataFrame({"x": [1.5, 2.5]}), ".1f")  # a 0..n-1 index is dropped, never "index"
    assert list(plain.columns) == ["x"] and "index" not in markdown_table(pd.DataFrame({"x": [1.0]}))


def test_epochs_and_counts_print_as_integers_other_floats_as_asked():
    table = pd.DataFrame({"AP": [66.55, 61.0], "seeds": [3.0, math.nan], "loss_total": [3.9, 4.4]},
                         index=pd.Index([0.0, 1.0], name="epoch"))
    shown = display_table(table, ".2f")
    assert shown["epoch"].tolist() == ["0", "1"]  # not 0.00 / 1.00
    assert shown["seeds"].tolist() == ["3", ""]  # a missing count is an empty cell, not NaN
    assert shown["AP"].tolist() == ["66.55", "61.00"] and shown["loss_total"].tolist() == ["3.90", "4.40"]
    fractional = display_table(pd.DataFrame({"epochs": [1.5]}), ".1f")  # not whole numbers: left as they are
    assert fractional["epochs"].tolist() == ["1.5"]


def test_an_interval_is_one_cell_with_its_unit_and_sign():
    table = pd.DataFrame({"change": [-5.31, 0.4], "change low": [-7.02, -1.0], "change high": [-3.6, 1.9],
                          "change excludes 0": [True, False], "AP": [61.0, 66.0]},
                         index=pd.Index(["a", "b"], name="variant"))
    table.attrs["units"] = {"change": "points", "AP": "points"}
    shown = display_table(table, ".1f")
    assert list(shown.columns) == ["variant", "change (points, 95% interval)", "AP (points)"]
    assert shown.iloc[0, 1] == "-5.3 [-7.0, -3.6]" and shown.iloc[1, 1] == "+0.4 [-1.0, +1.9]"
    assert shown.iloc[0, 2] == "61.0"  # not a change: no sign


def test_save_table_writes_a_plain_csv_and_the_stamp_beside_it(tmp_path, stamped):
    df = _two_level()
    shown = save_table(df, "seeds", tmp_path, floatfmt=".1f")
    folder = tmp_path / "tables"
    back = pd.read_csv(folder / "seeds.csv")  # plainly: no comment= needed, one header row
    assert list(back.columns) == ["variant", "final AP seeds", "final AP mean", "epoch-0 AP mean"]
    assert back["final AP mean"].to_numpy() == pytest.approx([61.234, 58.0])  # the data at full precision
    assert back["final AP seeds"].dtype == np.int64
    assert (folder / f"seeds.csv{STAMP_SUFFIX}").read_text().strip() == stamped
    assert (folder / "seeds.md").read_text().startswith(f"*{stamped}*\n\n| variant |")
    assert list(shown.columns) == list(back.columns)
    set_stamp(None)  # the study: no stamp, and a stale sidecar is removed
    save_table(df, "seeds", tmp_path)
    assert not (folder / f"seeds.csv{STAMP_SUFFIX}").exists()
    assert not (folder / "seeds.md").read_text().startswith("*")


def test_cells_that_are_not_numbers_print_as_they_are():
    from pathlib import Path

    shown = display_table(pd.DataFrame({"file": [Path("a/b.json")], "classes": [["cat", "dog"]], "n": [None]}))
    assert shown.iloc[0].tolist() == ["a/b.json", "['cat', 'dog']", ""]


def test_flat_keeps_a_named_multiindex_as_columns():
    table = pd.DataFrame({"AP": [1.0, 2.0]},
                         index=pd.MultiIndex.from_tuples([("v", "epoch 0"), ("v", "final")], names=["variant", "at"]))
    assert list(flat(table).columns) == ["variant", "at", "AP"]
