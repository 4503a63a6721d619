"""How a table reads, in a notebook, in Markdown and in the report: flat headers (a two-level header becomes
``"final AP mean"``), the index a named column (never ``index``, never float-formatted), integers as integers,
every interval in one cell (``X``, ``X low`` and ``X high`` become ``"X (points, 95% interval)"`` holding
``"-5.3 [-7.0, -3.6]"``), units in the headers, NaN an empty cell.

A table says its units and signs in its ``attrs`` (set where it is computed, e.g. :mod:`detr_nb_utils.analysis
.comparison`): ``units`` maps a column to its unit (``{"AP": "points"}``), ``signed`` lists the columns printed with
their sign; by default a column named like a change or a difference (``change``, ``a - b``, ``dAP50 ...``) is signed.
:func:`display_table` makes the strings, :func:`markdown_table` the Markdown; :func:`.tables.save_table` writes
both beside the plain CSV. Used by every notebook through ``save_table``, and by the report.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

#: the suffixes of an interval's ends, and of the flag saying it excludes 0 (shown by the interval itself)
LOW, HIGH, EXCLUDES = " low", " high", " excludes 0"


def flat(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with one header row (a multi-level header's levels joined by spaces) and its index as named columns
    (an unnamed index as a column with an empty name; a plain 0..n-1 index dropped)."""
    out = df.copy()
    if isinstance(out.columns, pd.MultiIndex):
        out.columns = [" ".join(str(p) for p in c if str(p)) for c in out.columns]
    else:
        out.columns = [str(c) for c in out.columns]
    if isinstance(out.index, pd.RangeIndex) and out.index.name is None:
        return out.reset_index(drop=True)
    names = [n if n is not None else "" for n in out.index.names]
    out.index = out.index.set_names(names)
    return out.reset_index()


def _signed(column: str, attrs: dict) -> bool:
    if "signed" in attrs:
        return column in attrs["signed"]
    return bool(re.search(r"change|\ba - b\b| - |minus|^dAP", column))


#: columns that count things: whole numbers, even where a missing value made them floats
COUNTS = re.compile(r"epoch|seeds|objects|images|layers|queries|count|detections|\bn\b", re.I)


def _number(v, floatfmt: str, signed: bool = False) -> str:
    if v is None or v is pd.NA or isinstance(v, str):
        return "" if v is None or v is pd.NA else v
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{v:+d}" if signed else str(v)
    if not isinstance(v, (float, np.floating)):  # a path, a list, a timestamp: as it prints
        return str(v)
    v = float(v)
    if math.isnan(v):
        return ""
    return format(v, ("+" if signed else "") + floatfmt)


def _column(name: str, values: pd.Series, floatfmt: str, signed: bool) -> list[str]:
    cells = values.astype(object)
    if pd.api.types.is_float_dtype(values) and COUNTS.search(name):
        known = values.dropna()
        if len(known) and (known == known.round()).all():
            cells = [None if pd.isna(v) else int(v) for v in values]
    return [_number(v, floatfmt, signed) for v in cells]


def display_table(df: pd.DataFrame, floatfmt: str = ".3f") -> pd.DataFrame:
    """``df`` as a reader sees it, every cell a string: :func:`flat` headers and index, intervals merged into one
    cell, units in the headers (``df.attrs["units"]``), signed changes and differences, ``floatfmt`` for floats."""
    attrs = dict(df.attrs)
    units = attrs.get("units", {})
    table = flat(df)
    out = {}
    for c in table.columns:
        if c.endswith((LOW, HIGH)) and c.rsplit(" ", 1)[0] in table.columns:
            continue  # shown inside its statistic's cell
        if c.endswith(EXCLUDES) and c[:-len(EXCLUDES)] + LOW in table.columns:
            continue
        signed = _signed(c, attrs)
        cells = _column(c, table[c], floatfmt, signed)
        unit = units.get(c, "")
        if c + LOW in table.columns and c + HIGH in table.columns:
            lows, highs = (_column(c, table[c + s], floatfmt, signed) for s in (LOW, HIGH))
            cells = [f"{v} [{lo}, {hi}]" if v and lo and hi else v for v, lo, hi in zip(cells, lows, highs)]
            unit = f"{unit}, 95% interval" if unit else "95% interval"
        out[f"{c} ({unit})" if unit else c] = cells
    return pd.DataFrame(out)


def shown(df: pd.DataFrame, floatfmt: str = ".3f") -> pd.DataFrame:
    """``df`` for display in a notebook: :func:`display_table`."""
    return display_table(df, floatfmt)


def markdown_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """``df`` as a GitHub-flavoured Markdown table (:func:`display_table`: flat headers, the index a named column,
    intervals in one cell, units in the headers); NaN printed as an empty cell."""
    table = display_table(df, floatfmt)
    escape = (lambda s: str(s).replace("|", "\\|"))
    rows = [[escape(c) for c in table.columns], ["---"] * table.shape[1],
            *([escape(v) for v in r] for r in table.itertuples(index=False))]
    return "\n".join("| " + " | ".join(r) + " |" for r in rows) + "\n"
