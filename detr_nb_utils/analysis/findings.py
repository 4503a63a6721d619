"""Findings: what a claim says, as data. One :class:`Finding` holds a claim (what was measured), its value, its 95%
interval (or why it has none), what the interval draws, and the verdict the interval allows; :meth:`Finding.text`
renders it in one sentence, :meth:`Finding.short` in one clause, :func:`findings_table` as the rows of a table, and
the notebooks' takeaways, tables and the team report are made of them. Analyses return findings, not paragraphs, so
a report can render the same data its own way: :func:`findings_json` and :func:`read_findings` carry them from a
notebook to the report.

Verdicts (:data:`VERDICTS`): ``"beyond sampling"`` (the interval excludes 0), ``"within sampling"`` (it contains 0: the
two cannot be told apart), ``"no interval"`` (``why`` says why, e.g. a reference number published without one).
A finding's ``key`` names it for the templates that pick it out (e.g. ``"change/dec6_q100"``).
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields

import pandas as pd

VERDICTS = ("beyond sampling", "within sampling", "no interval")
#: the verdict in words, as the sentences say it
VERDICT_WORDS = {"beyond sampling": "larger than sampling explains",
                 "within sampling": "within what sampling explains", "no interval": "no interval"}


@dataclass(frozen=True)
class Finding:
    """``claim``: what the value measures (e.g. "dec3_q100 - dec6_q100, final AP"); ``value``, ``low``, ``high`` in
    ``unit``; ``covers``: what the interval resamples (e.g. "100 validation images and 3 seeds"); ``verdict``: one of
    :data:`VERDICTS`; ``why``: why there is no interval, or what else the reader must know (a Holm-adjusted p, the
    seeds' spread); ``signed`` values print with their sign and get a verdict, ``decimals`` as printed; ``data``:
    anything else a renderer may want (``label``: the short name a table or a figure row shows; per-seed values,
    p-values); ``key``: the name templates find it by."""

    claim: str
    value: float
    low: float = math.nan
    high: float = math.nan
    covers: str = ""
    verdict: str = "no interval"
    why: str = ""
    unit: str = "points"
    signed: bool = True
    decimals: int = 1
    data: dict = field(default_factory=dict, compare=False)
    key: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"Finding.verdict = {self.verdict!r} is invalid: must be one of {VERDICTS}")

    @property
    def has_interval(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))

    @property
    def label(self) -> str:
        """The short name a table row or a figure's axis shows: ``data["label"]``, else the claim."""
        return str(self.data.get("label") or self.claim)

    def number(self, value: float | None = None) -> str:
        """``value`` (default: the finding's) as printed: its decimals, signed when the finding is."""
        return f"{self.value if value is None else value:{'+' if self.signed else ''}.{self.decimals}f}"

    def interval(self) -> str:
        """``"-5.3 [-7.0, -3.6]"``: the value and its interval as printed (the value alone when there is none)."""
        if math.isnan(self.value):
            return "n/a"
        return self.number() + (f" [{self.number(self.low)}, {self.number(self.high)}]" if self.has_interval else "")

    def short(self) -> str:
        """One clause: ``label value [low, high] unit, verdict`` (the verdict only for a signed value with an
        interval), e.g. ``"dec3_q100 - dec6_q100 -1.5 [-4.0, +1.0] points, within sampling"``."""
        if math.isnan(self.value):
            return f"{self.label}: {self.why}" if self.why else self.label
        verdict = f", {self.verdict}" if self.signed and self.has_interval else ""
        return f"{self.label} {self.interval()} {self.unit}".rstrip() + verdict

    def text(self) -> str:
        """One sentence: ``claim: value unit [low, high] (95%, covers); verdict; why.``"""
        f = f"{'+' if self.signed else ''}.{self.decimals}f"
        if math.isnan(self.value):  # a claim without a number: what it is and why
            return f"{self.claim}" + (f": {self.why}." if self.why else ".")
        value = f"{self.value:{f}} {self.unit}".rstrip()
        interval = f" [{self.low:{f}}, {self.high:{f}}] (95% interval over {self.covers})" if self.has_interval else ""
        verdict = {"beyond sampling": "the interval excludes 0: larger than sampling explains",
                   "within sampling": "the interval contains 0: within what sampling explains",
                   "no interval": "no interval"}[self.verdict] if self.signed or not self.has_interval else ""
        tail = "; ".join(p for p in (verdict, self.why) if p)
        return f"{self.claim}: {value}{interval}" + (f"; {tail}." if tail else ".")

    def to_dict(self) -> dict:
        """The finding as JSON-ready values (``data`` keeps only what JSON can hold: numbers, strings, lists)."""
        out = asdict(self) | {"data": _plain(self.data)}
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}

    @classmethod
    def from_dict(cls, d: Mapping) -> Finding:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        for k in ("value", "low", "high"):
            values[k] = math.nan if values.get(k) is None else float(values[k])
        return cls(**values)


def _plain(value):
    """``value`` with what JSON cannot hold (tables, arrays) left out."""
    if isinstance(value, Mapping):
        return {str(k): p for k, v in value.items() if (p := _plain(v)) is not _DROP}
    if isinstance(value, (list, tuple)):
        return [p for v in value if (p := _plain(v)) is not _DROP]
    if isinstance(value, (str, bool, int)) or value is None:
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # a numpy scalar
        return _plain(value.item())
    return _DROP


_DROP = object()


def interval_verdict(low: float, high: float) -> str:
    """``"beyond sampling"`` when ``[low, high]`` excludes 0, ``"within sampling"`` when it contains it, ``"no
    interval"`` when either end is missing."""
    if math.isnan(low) or math.isnan(high):
        return "no interval"
    return "beyond sampling" if low > 0 or high < 0 else "within sampling"


def render(findings: Iterable[Finding]) -> str:
    """The findings' sentences, one per line."""
    return "\n".join(f.text() for f in findings)


def findings_table(findings: Iterable[Finding]) -> pd.DataFrame:
    """The findings as a table, one row each (index: their labels): ``value``, ``low``, ``high``, ``unit``,
    ``verdict`` and ``covers`` (what the interval resamples)."""
    rows = [{"finding": f.label, "value": f.value, "low": f.low, "high": f.high, "unit": f.unit,
             "verdict": f.verdict, "covers": f.covers} for f in findings]
    return pd.DataFrame(rows, columns=["finding", "value", "low", "high", "unit", "verdict", "covers"]
                        ).set_index("finding")


def findings_json(findings: Iterable[Finding], **meta) -> str:
    """The findings and ``meta`` (what they were computed on: images, resamples) as JSON, for :func:`read_findings`."""
    return json.dumps({"meta": _plain(meta), "findings": [f.to_dict() for f in findings]}, indent=1) + "\n"


def read_findings(text: str) -> tuple[list[Finding], dict]:
    """The findings and their ``meta`` back from :func:`findings_json`'s text."""
    data = json.loads(text)
    return [Finding.from_dict(d) for d in data["findings"]], data.get("meta", {})


def by_key(findings: Iterable[Finding], prefix: str = "") -> dict[str, Finding]:
    """The findings whose key starts with ``prefix``, by key (the prefix and its ``/`` removed)."""
    return {f.key[len(prefix):].lstrip("/"): f for f in findings if f.key.startswith(prefix) and f.key}
