"""The rules the team report keeps, checked on its filled Markdown (:func:`report_problems`): the answer first, in
at most :data:`~detr_nb_utils.analysis.conclusions.ANSWER_WORDS` words; no paragraph over :data:`MAX_PARAGRAPH`
words; a Limitations section; every figure numbered; no table in the body (before the appendix) wider than
:data:`MAX_COLUMNS` columns, and no header printed as a Python tuple; the demo's disclaimer at most once per
section; no paragraph twice; notebook 07 (your own data) in the appendix. ``make report`` writes the report and then
fails, listing every rule broken, so a broken rule is never shipped silently; ``tests/test_report.py`` checks them on
reports rendered from run folders made by the tests.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from ..analysis.conclusions import ANSWER_WORDS
from ..analysis.templates import words

MAX_PARAGRAPH = 150
MAX_COLUMNS = 10
APPENDIX = "## Appendix"
LIMITATIONS = "## Limitations"
_FIGURE = re.compile(r"<figure>.*?</figure>", re.S)
_CAPTION = re.compile(r"<figcaption>(.*?)</figcaption>", re.S)


def sections(markdown: str) -> list[tuple[str, str]]:
    """``(heading, text)`` of every ``## `` section, the text before the first as heading ``""``."""
    parts = re.split(r"^(## .*)$", markdown, flags=re.M)
    return [("", parts[0])] + [(parts[i].strip(), parts[i + 1]) for i in range(1, len(parts) - 1, 2)]


def paragraphs(text: str) -> list[str]:
    """The prose paragraphs of ``text``: blocks between blank lines, and items of lists, that are not tables,
    figures, headings or comments."""
    text = _FIGURE.sub("\n\n", re.sub(r"<!--.*?-->", "", text, flags=re.S))
    text = re.sub(r"^(?=\s*(?:[-*+]|\d+\.) )", "\n", text, flags=re.M)  # each item of a list is its own paragraph
    blocks = [b.strip() for b in re.split(r"\n\s*\n", text)]
    return [b for b in blocks if b and not b.startswith(("|", "#", "<")) and not re.fullmatch(r"\*[^*]+\*", b)]


def tables(text: str) -> list[list[str]]:
    """The header cells of every Markdown table of ``text``."""
    heads = re.findall(r"^(\|.*\|)\n\|(?: *:?-+:? *\|)+$", text, flags=re.M)
    return [[c.strip() for c in re.split(r"(?<!\\)\|", h)[1:-1]] for h in heads]


def report_problems(markdown: str, disclaimers: Sequence[str] = ()) -> list[str]:
    """Every rule of the module docstring that the filled report ``markdown`` breaks, in words (empty: none).
    ``disclaimers``: the texts that may appear at most once per section (the demo's stamp and note)."""
    problems = []
    parts = sections(markdown)
    first = next(((h, t) for h, t in parts if h), None)
    if first is None:
        return ["the report has no section"]
    answer = " ".join(paragraphs(first[1]))
    if words(answer) > ANSWER_WORDS:
        problems.append(f"the first section ({first[0]!r}) answers in {words(answer)} words, more than {ANSWER_WORDS}")
    for heading, text in parts:
        for p in paragraphs(text):
            if words(p) > MAX_PARAGRAPH:
                problems.append(f"a paragraph of {words(p)} words (over {MAX_PARAGRAPH}) in {heading or 'the top'}: "
                                f"{p[:60]!r}...")
        for d in disclaimers:
            if text.count(d) > 1:
                problems.append(f"the disclaimer {d[:30]!r}... appears {text.count(d)} times in {heading or 'the top'}")
    if not any(h.startswith(LIMITATIONS) for h, _ in parts):
        problems.append(f"no Limitations section ({LIMITATIONS!r})")
    body, _, appendix = markdown.partition(APPENDIX)
    for head in tables(body):
        if len(head) > MAX_COLUMNS:
            problems.append(f"a table of {len(head)} columns in the body (at most {MAX_COLUMNS}): {head[:4]}...")
    for head in tables(markdown):
        tuples = [c for c in head if re.fullmatch(r"\(.*,.*\)", c)]
        if tuples:
            problems.append(f"a table header printed as a tuple: {tuples[0]}")
    for figure in _FIGURE.findall(markdown):
        caption = _CAPTION.search(figure)
        if caption is None or not re.match(r"Figure \d+\. \S", caption[1]):
            problems.append(f"a figure without a number: {(caption[1] if caption else figure)[:60]!r}")
    twice = [p for p, n in Counter(p for _, t in parts for p in paragraphs(t) if words(p) >= 10).items() if n > 1]
    problems += [f"a paragraph appears twice: {p[:60]!r}..." for p in twice]
    if "07" not in appendix or not re.search(r"^#{2,4} .*07", appendix, flags=re.M):
        problems.append("notebook 07 (your own data) is not in the appendix")
    return problems
