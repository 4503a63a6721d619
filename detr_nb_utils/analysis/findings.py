"""Findings: what a claim says, as data. One :class:`Finding` holds a claim (what was measured), its value, its 95%
interval (or why it has none), what the interval draws, and the verdict the interval allows; :meth:`Finding.text`
renders it in one sentence, and the notebooks' takeaways and tables are made of them. Analyses return findings, not
paragraphs, so a report can render the same data its own way.

Verdicts (:data:`VERDICTS`): ``"beyond sampling"`` (the interval excludes 0), ``"within sampling"`` (it contains 0: the
two cannot be told apart), ``"no interval"`` (``why`` says why, e.g. a reference number published without one).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

VERDICTS = ("beyond sampling", "within sampling", "no interval")


@dataclass(frozen=True)
class Finding:
    """``claim``: what the value measures (e.g. "dec3_q100 - dec6_q100, final AP"); ``value``, ``low``, ``high`` in
    ``unit``; ``covers``: what the interval resamples (e.g. "100 validation images and 3 seeds"); ``verdict``: one of
    :data:`VERDICTS`; ``why``: why there is no interval, or what else the reader must know (a Holm-adjusted p, the
    seeds' spread); ``signed`` values print with their sign and get a verdict, ``decimals`` as printed; ``data``:
    anything else a renderer may want (per-seed values, p-values)."""

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

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"Finding.verdict = {self.verdict!r} is invalid: must be one of {VERDICTS}")

    @property
    def has_interval(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))

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


def interval_verdict(low: float, high: float) -> str:
    """``"beyond sampling"`` when ``[low, high]`` excludes 0, ``"within sampling"`` when it contains it, ``"no
    interval"`` when either end is missing."""
    if math.isnan(low) or math.isnan(high):
        return "no interval"
    return "beyond sampling" if low > 0 or high < 0 else "within sampling"


def render(findings: list[Finding]) -> str:
    """The findings' sentences, one per line."""
    return "\n".join(f.text() for f in findings)
