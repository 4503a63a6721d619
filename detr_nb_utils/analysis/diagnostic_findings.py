"""The diagnostics of 06_analysis as findings and short paragraphs: where each variant loses against the baseline
(object sizes, crowded images: :class:`.subgroups.SubgroupAp`'s table, paired intervals), which kinds of error
cost each variant most (:func:`.diagnostics.variant_errors`, one seed, named) and which the later decoder layers
remove (:func:`.errors.layer_changes`). The report's Diagnostics section and 06's takeaway render them; every
number is read from those tables. AP in points.
"""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from .errors import ERROR_KINDS
from .findings import Finding, by_key, interval_verdict


def subgroup_findings(table: pd.DataFrame) -> list[Finding]:
    """From :meth:`.subgroups.SubgroupAp.table`: each variant's change against the baseline on all objects
    (``subgroup/<v>/all objects``) and, for every other group with objects, how much more (negative) or less it
    loses there than overall (``subgroup/<v>/<group>``), with its paired 95% interval."""
    out, n = [], int(table.attrs.get("n_images", 0))
    base = table.attrs.get("baseline", "the baseline")
    for _, r in table.iterrows():
        if r["objects"] == 0 or pd.isna(r.get("change")):
            continue
        overall = r["group"] == "all objects"
        col = "change" if overall else "beyond overall"
        claim = (f"{r['variant']} - {base} on {r['compared on']}, all objects" if overall else
                 f"{r['variant']} - {base} on {r['group']}, minus its change on all objects")
        out.append(Finding(claim, float(r[col]), float(r[f"{col} low"]), float(r[f"{col} high"]),
                           f"{n} validation images", interval_verdict(r[f"{col} low"], r[f"{col} high"]),
                           key=f"subgroup/{r['variant']}/{r['group']}",
                           data={"label": f"{r['variant']}: {r['group']}", "group": r["group"],
                                 "variant": r["variant"], "objects": int(r["objects"]), "images": int(r["images"]),
                                 "compared on": r["compared on"]}))
    return out


def subgroup_paragraph(findings: Sequence[Finding], baseline: str = "dec6_q100", min_objects: int | None = None
                       ) -> str:
    """Per variant: its change against ``baseline`` on all objects, and the groups where it loses more (or less)
    than that beyond the images' noise; the others named as within it."""
    found = by_key(findings, "subgroup")
    variants = list(dict.fromkeys(f.data["variant"] for f in found.values()))
    if not variants:
        return "No variant to set against the baseline on object sizes and crowded images."
    crowded = f"; crowded: {min_objects} objects or more" if min_objects else ""
    parts = []
    for v in variants:
        mine = {k.split("/", 1)[1]: f for k, f in found.items() if f.data["variant"] == v}
        overall = mine.pop("all objects", None)
        worse = [f"{g} {f.interval()}" for g, f in mine.items() if f.verdict == "beyond sampling" and f.value < 0]
        better = [f"{g} {f.interval()}" for g, f in mine.items() if f.verdict == "beyond sampling" and f.value > 0]
        within = [g for g, f in mine.items() if f.verdict != "beyond sampling"]
        head = f"{v} - {baseline}: {overall.interval()} on all objects ({overall.data['compared on']})" \
            if overall else f"{v}"
        tail = [f"it loses more on {'; '.join(worse)}" if worse else "",
                f"less on {'; '.join(better)}" if better else "",
                f"within the noise on {', '.join(within)}" if within else ""]
        parts.append(head + "; " + ", ".join(t for t in tail if t))
    return (f"Each variant's change on a group minus its change on all objects (points, 95% paired interval{crowded}): "
            + ". ".join(parts) + ".")


def errors_by_kind(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`.diagnostics.variant_errors`'s table turned so that it fits: one row per kind of error, per variant
    its delta AP50 (``<variant> dAP50``, points) and count (``<variant> count``, above the score threshold); the
    variants' AP50 in ``attrs["AP50"]``."""
    rows = {k: {} for k in ERROR_KINDS}
    for v, r in table.iterrows():
        for k in ERROR_KINDS:
            rows[k][f"{v} dAP50"] = r[f"dAP50 {k}"]
            if k in r:
                rows[k][f"{v} count"] = int(r[k])
    out = pd.DataFrame.from_dict(rows, orient="index").rename_axis("kind of error")
    out.attrs.update(AP50=table["AP50"].to_dict(), min_score=table.attrs.get("min_score"),
                     units={c: "points" for c in out.columns if c.endswith("dAP50")}, signed=[])
    return out


def errors_sentence(table: pd.DataFrame, seeds: dict[str, int] | None = None) -> str:
    """Which kind of error costs each variant most AP50 (delta AP50: what fixing it alone would gain), from
    :func:`.diagnostics.variant_errors`'s table; one run per variant, its seed named (``seeds``), so no interval."""
    parts = []
    for v, r in table.iterrows():
        costs = {k: r[f"dAP50 {k}"] for k in ERROR_KINDS}
        top = sorted(costs, key=costs.get, reverse=True)[:2]
        seed = f", seed {seeds[v]}" if seeds and v in seeds else ""
        parts.append(f"{v} (AP50 {r['AP50']:.1f}{seed}): {top[0]} {costs[top[0]]:.1f}, then {top[1]} "
                     f"{costs[top[1]]:.1f}")
    return ("The errors that cost most AP50 points (what fixing each kind alone would gain; one run per variant, so "
            "no interval): " + "; ".join(parts) + ".")


def sizes_table(sizes: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Several :func:`.ap_breakdown.size_table` s in one (rows: run or variant, then size), AP and AR in points."""
    table = pd.concat(sizes, names=["run"])
    table.attrs["units"] = {c: "points" for c in table.columns if c.startswith(("AP", "AR"))}
    return table


def sizes_sentence(sizes: dict[str, pd.DataFrame]) -> str:
    """AP by object size of each run (``sizes``: run -> :func:`.ap_breakdown.size_table`), with the objects of each
    size, so that a size without objects is said to be empty rather than left blank; one run per variant, so no
    interval."""
    if not sizes:
        return "No run to break down by object size."
    first = next(iter(sizes.values()))
    ranges = [s for s in first.index if s != "all"]
    counts = ", ".join(f"{int(first.loc[s, 'objects'])} {s}" for s in ranges)
    empty = [s for s in ranges if int(first.loc[s, "objects"]) == 0]
    parts = ["; ".join(f"{s} {t.loc[s, 'AP']:.1f}" for s in ranges if s not in empty) for t in sizes.values()]
    per_run = "; ".join(f"{run}: {p}" for run, p in zip(sizes, parts) if p)
    gap = (f" No {' or '.join(empty)} object is in these images, so {'that size has' if len(empty) == 1 else 'those sizes have'}"
           " no AP (an empty row, not a zero)." if empty else "")
    return (f"The validation images hold {counts} objects (COCO's area ranges).{gap} AP by size (points; one run "
            f"per variant, so no interval): {per_run}.")


def class_ap_by_variant(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Several :func:`.ap_breakdown.class_ap_table` s side by side, one row per class: its ``objects``, then per run
    ``<run> AP`` with ``low`` and ``high`` (shown as one cell with its 95% interval over the images), points."""
    columns: dict[str, pd.Series] = {}
    for run, t in tables.items():
        columns.setdefault("objects", t["objects"])
        columns |= {f"{run} AP": t["AP"], f"{run} AP low": t["low"], f"{run} AP high": t["high"]}
    out = pd.DataFrame(columns).rename_axis("class")
    out.attrs["units"] = {f"{run} AP": "points" for run in tables}
    out.attrs["signed"] = []
    return out
