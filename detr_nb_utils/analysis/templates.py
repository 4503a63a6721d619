"""The short templates that say 06's findings (:func:`.conclusions.study_findings`) in words: the answer, at most
:data:`~.conclusions.ANSWER_WORDS` words (which variant is best by COCO AP with its interval, what cannot be told
apart, whether the original study's ranking survives, what fine-tuning did to each variant and what the recipe arms
show), and one paragraph per result (rankings, fine-tuning, differences, which 50 queries, the layers). 06's
takeaway and the team report (its ``{{findings:NAME}}`` directive, :data:`TEMPLATES`) render the same findings with
them; every number is a finding's, every verdict the finding's own. AP in points.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from ..training.recipe import ORIGINAL
from .conclusions import ANSWER_WORDS
from .findings import Finding, by_key


def words(text: str) -> int:
    """The words of ``text`` as a reader counts them (Markdown emphasis and list marks left out)."""
    return len(re.sub(r"[*_`#>|-]+(?=\s|$)|(?<=\s)[*_`]+|^[*_`]+", " ", text).split())


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1] if items else ""


def _change(f: Finding) -> str:
    kind = "a loss" if f.value < 0 else "a gain"
    verdict = f"{kind} beyond sampling" if f.verdict == "beyond sampling" else "within sampling"
    return f"{f.label} {f.interval()} ({verdict})"


def _pairs(f: dict[str, Finding]) -> tuple[list[Finding], list[Finding]]:
    """The decoder family's differences beyond sampling (Holm) and within it."""
    pairs = list(by_key(f.values(), "diff").values())
    return [p for p in pairs if p.verdict == "beyond sampling"], [p for p in pairs if p.verdict != "beyond sampling"]


def _ranking(f: dict[str, Finding], depth: bool = True) -> str:
    r = f.get("ranking")
    if r is None:
        return ""
    head = f"The original study's ranking by total validation loss ({r.data['loss order']})"
    body = {"overturned": f"does not survive: by AP the order is {r.data['AP order']}",
            "not confirmed": f"is not confirmed: by AP the order is {r.data['AP order']}, and the paired differences "
                             f"cannot separate {_join([u.replace(' ~ ', ' from ') for u in r.data['undecided']])}",
            "survives": f"survives: by AP too, {r.data['AP order']}"}[r.data["verdict"]]
    d = f.get("depth")
    why = f"; the total sums one loss per decoder layer, so {d.data['deep']}'s is {d.number()}x {d.data['shallow']}'s" \
        if depth and d is not None else ""
    return f"{head} {body}{why}."


def _arms(f: dict[str, Finding]) -> str:
    """What the recipe arms show after one fine-tuned epoch: each arm against the original, paired."""
    versus = [a for k, a in by_key(f.values(), "arm").items() if f" - {ORIGINAL}, epoch 1" in k]
    first = next((a for k, a in by_key(f.values(), "arm").items() if k == f"{ORIGINAL}: epoch 1 - epoch 0"), None)
    if not versus or first is None:
        return ""
    lead = max(versus, key=lambda a: a.value)
    arm = lead.label.split(" - ")[0]
    if lead.verdict == "beyond sampling" and lead.value > 0:
        if first.verdict == "beyond sampling" and first.value < 0:
            return (f"For the baseline, part of the loss is the recipe: after one epoch the original recipe moved it "
                    f"{first.interval()} points, while under {arm} it ends the epoch {lead.interval()} points higher.")
        return f"The recipe arm {arm} ends the first fine-tuned epoch {lead.interval()} points above the original."
    return ("The recipe arms cannot tell the recipes apart after one epoch ("
            + "; ".join(f"{a.label} {a.interval()}" for a in versus) + ").")


def answer(findings: Sequence[Finding], limit: int = ANSWER_WORDS) -> str:
    """The answer first, at most ``limit`` words: the best variant by final COCO AP with its interval, the pairs
    beyond and within sampling, the original ranking's fate, every variant's change from epoch 0, the recipe arms,
    and what the intervals cover. Sentences that would pass ``limit`` are left out, the least needed first (the
    arms, the depth clause, the coverage)."""
    f = by_key(findings)
    best = f.get("best")
    if best is None:
        return "No variant has a final AP to compare yet: run notebooks 03-05, then 06."
    v = best.data["variant"]
    head = (f"**{v}** ({best.data['layers']} decoder layers, {best.data['queries']} queries) has the highest COCO "
            f"AP at the final epoch: {best.interval()} points.")
    beyond, within = _pairs(f)
    pairs = " ".join(s for s in (
        ("Beyond sampling noise (paired, points): " + "; ".join(f"{p.label} {p.interval()}" for p in beyond) + ".") if beyond else "",
        ("Cannot be told apart: " + "; ".join(f"{p.label} {p.interval()}" for p in within) + ".") if within else "")
        if s)
    if f.get("missing") is not None:
        pairs = " ".join(p for p in (pairs, f"Not compared, no run folders: {_join(f['missing'].data['variants'])}.")
                         if p)
    changes = list(by_key(findings, "change").values())
    tuned = ("Fine-tuning from the checkpoint changed AP by " + "; ".join(map(_change, changes)) + ".") if changes else ""
    coverage = f"Differences are paired and Holm-adjusted; 95% intervals over {best.covers}."
    parts = {"head": head, "pairs": pairs, "ranking": _ranking(f, depth=False), "tuned": tuned}
    for name, sentence in (("ranking", _ranking(f)), ("arms", _arms(f)), ("coverage", coverage)):  # most needed first
        trial = parts | {name: sentence}
        if sentence and words(_in_order(trial)) <= limit:
            parts = trial
    return _in_order(parts)


#: the answer's paragraphs: which variant is best and what differs; the original ranking; what fine-tuning did
ANSWER_PARAGRAPHS = (("head", "pairs"), ("ranking",), ("tuned", "arms", "coverage"))


def _in_order(parts: dict[str, str]) -> str:
    paragraphs = (" ".join(parts[k] for k in keys if parts.get(k)) for keys in ANSWER_PARAGRAPHS)
    return "\n\n".join(p for p in paragraphs if p)


def rankings_paragraph(findings: Sequence[Finding]) -> str:
    """Every criterion's order with its values, and the original ranking's fate."""
    f = by_key(findings)
    r = f.get("ranking")
    if r is None:
        return "Fewer than two variants: nothing to rank."
    orders = "; ".join(f"by {name}: {text}" for name, text in r.data["orders"].items())
    return f"Orders ({orders}). {_ranking(f)}"


def changes_paragraph(findings: Sequence[Finding]) -> str:
    """Each variant's change from its own epoch 0 (primary: the final epoch; secondary: the best one), and what the
    recipe arms show."""
    changes = list(by_key(findings, "change").values())
    if not changes:
        return "No run has detections of both epoch 0 and a fine-tuned epoch: nothing to compare."
    best = list(by_key(findings, "best change").values())
    def detail(f: Finding) -> str:  # the two ends as well as the change
        ends = f"from {f.data['epoch 0']:.1f} to {f.data['final']:.1f}, " if "final" in f.data else ""
        return f"{f.label} {ends}{_change(f).removeprefix(f.label + ' ')}"

    text = ("From each variant's own epoch 0 to its final epoch, paired on the same resampled images (AP in points, "
            "the change with its 95% interval): " + "; ".join(map(detail, changes)) + ".")
    if best:
        text += (" Secondary, to the best fine-tuned epoch (picked on these images, re-picked in every resample): "
                 + "; ".join(f"{b.data.get('label', '').split(',')[0]} {b.interval()}" for b in best) + ".")
    arms = _arms_detail(findings)
    return text + (" " + arms if arms else "")


def _arms_detail(findings: Sequence[Finding]) -> str:
    """Every recipe arm against the original on the baseline, paired, after the first fine-tuned epoch and at the
    end (the answer says only the first)."""
    versus = {k: a for k, a in by_key(findings, "arm").items() if f" - {ORIGINAL}, epoch " in k}
    if not versus:
        return ""
    epochs = sorted({int(k.rsplit(" ", 1)[1]) for k in versus})
    parts = []
    for e in epochs:
        at = [(k.split(" - ")[0], a) for k, a in versus.items() if k.endswith(f", epoch {e}")]
        when = "after the first fine-tuned epoch" if e == epochs[0] else f"at epoch {e}"
        parts.append(f"{when} " + ", ".join(f"{arm} {a.interval()}" + ("" if a.verdict == "beyond sampling" else
                                                                          " (within sampling)") for arm, a in at))
    return f"The recipe arms on the baseline, each minus the {ORIGINAL} recipe (points, paired): {'; '.join(parts)}."


def _family(findings: Sequence[Finding], family: str, what: str) -> str:
    pairs = list(by_key(findings, family).values())
    if not pairs:
        return f"No two {what} both have runs: nothing to compare."
    n = len(pairs)
    return (f"{what.capitalize()} at the final epoch, each row the first minus the second (points, 95% paired "
            f"interval), Holm-adjusted over the {n} pairs: "
            + "; ".join(f"{p.label} {p.interval()}, {p.verdict} (Holm p {p.data['p Holm']:.3f})" for p in pairs)
            + ".")


def differences_paragraph(findings: Sequence[Finding]) -> str:
    """The decoder family's paired differences with their verdicts after Holm's adjustment."""
    return _family(findings, "diff", "the variants")


def queries_paragraph(findings: Sequence[Finding]) -> str:
    """The query family's paired differences (which 50 queries), each choice minus another."""
    return _family(findings, "query", "the choices of 50 queries")


def layers_paragraph(findings: Sequence[Finding]) -> str:
    """The layer-equivalence check at epoch 0, in one sentence."""
    e = by_key(findings).get("equivalence")
    if e is None:
        return "No 6- and 3-layer runs with epoch 0 to check the cut against."
    text = e.text()
    return text[:1].upper() + text[1:]


#: the templates the report's ``{{findings:NAME}}`` directive and 06 render, by name
TEMPLATES: dict[str, Callable[[Sequence[Finding]], str]] = {
    "answer": answer, "rankings": rankings_paragraph, "changes": changes_paragraph,
    "differences": differences_paragraph, "queries": queries_paragraph, "layers": layers_paragraph}
