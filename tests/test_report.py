"""The team report: the committed template fills from run folders, exported files and 06's findings into one
self-contained HTML page and a PDF with no placeholder left and no number typed in; whatever it names and cannot find
is listed in one error; the answer comes first in at most 150 words, and the report's rules are checked."""
from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import pytest
from test_bootstrap import perturbed_detections, sample_gt  # noqa: F401 (fixtures)
from test_comparison import _findings, _write_run, analysed, quality, run_folders  # noqa: F401 (fixtures)

from detr_nb_utils.analysis.conclusions import ANSWER_WORDS, TINY_NOTE
from detr_nb_utils.analysis.findings import by_key, findings_json
from detr_nb_utils.analysis.templates import words
from detr_nb_utils.notebook.report import (
    DIRECTIVE,
    ReportError,
    fill,
    main,
    render_report,
    setup_table,
)
from detr_nb_utils.notebook.report_checks import (
    MAX_COLUMNS,
    paragraphs,
    report_problems,
    sections,
)
from detr_nb_utils.notebook.setup_cell import DEMO_STAMP
from detr_nb_utils.training.runs import load_run, record_environment
from detr_nb_utils.training.runtime import environment

matplotlib.use("Agg")
TEMPLATE = Path(__file__).resolve().parents[1] / "report" / "report.md"


def _exports(report_dir: Path, template: str, findings=(), skip: str = "07_") -> set[str]:
    """What the notebooks export for every directive of ``template`` (names starting with ``skip`` left out: by
    default 07's, which runs only on your own data): a stamped table file and a CSV, a PNG, and 06's findings.
    Returns the figures written."""
    (report_dir / "tables").mkdir(parents=True)
    (report_dir / "figures").mkdir()
    fig, ax = plt.subplots(figsize=(1, 1))
    figures = set()
    for m in DIRECTIVE.finditer(template):
        name = (m["arg"] or "").strip()
        if not name or name.startswith(skip):
            continue
        if m["kind"] == "table":
            (report_dir / "tables" / f"{name}.md").write_text(f"*{DEMO_STAMP}*\n\n| x |\n|---|\n| TABLE {name} |\n")
        elif m["kind"] == "csv":
            (report_dir / "tables" / f"{name}.csv").write_text("x,y\n1,2\n3,4\n")
        elif m["kind"] == "figure":
            ax.set_title(name)  # a different image per figure
            fig.savefig(report_dir / "figures" / f"{name}.png")
            figures.add(name)
    plt.close(fig)
    (report_dir / "tables" / "06_findings.json").write_text(findings_json(findings, n_images=24, n_resamples=300))
    return figures


def test_template_holds_no_typed_number():
    """Every number comes from a directive; the prose names only the variants' design (3 or 6 decoder layers, 50 or
    100 queries), epoch 0 (the checkpoint), notebooks, sections and figures."""
    prose = DIRECTIVE.sub("", TEMPLATE.read_text().split("## References")[0])
    prose = "\n".join(line for line in prose.splitlines() if not line.startswith("#"))  # headings
    prose = re.sub(r"`[^`]*`|notebook 0\d|Fig\. \d|section \d\.\d|fp32|bf16|DETR-R50|epoch 0", "", prose)
    numbers = set(re.findall(r"\d[\d,.]*\d|\d", prose))
    assert numbers <= {"3", "6", "50", "100"}, sorted(numbers)


def test_report_renders_self_contained_from_run_folders(run_folders, analysed, tmp_path):  # noqa: F811
    template = TEMPLATE.read_text()
    report_dir = tmp_path / "report"
    found = _findings(analysed)[0]
    figures = _exports(report_dir, template, found)
    record_environment(run_folders / "dec6_q100_seed42", environment("cpu"), None)
    out = render_report(report_dir, run_folders, TEMPLATE)  # raises when a rule of the report is broken
    page = out.read_text()
    assert out == report_dir / "report.html" and "{{" not in page and "}}" not in page
    for m in DIRECTIVE.finditer(template):
        if m["kind"] == "table" and not m["arg"].startswith("07_"):
            assert f"TABLE {m['arg']}" in page
    assert page.count('src="data:image/png;base64,') == len(figures)  # inlined, not linked
    assert [int(n) for n in re.findall(r"<figcaption>Figure (\d+)\. ", page)] == list(range(1, len(figures) + 1))
    assert "Rendered from 6 run folders" in page and '<div class="scroll"><table>' in page
    assert page.count(TINY_NOTE) == 1  # the demo's note once, at the top
    assert "Notebook 07 has not run here" in page  # 07 did not run: said in the appendix, no error
    assert 'href="tables/06_finetuning_gain.csv"' in page and "(2 rows, 2 columns)" in page
    pdf = (report_dir / "report.pdf").read_bytes()  # the same report as a PDF, every figure in it
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    assert pdf.count(b"/Subtype /Image") == len(figures) and pdf.count(b"/Type /Page\n") >= 2
    setup = setup_table({n: load_run(run_folders / n) for n in ("dec6_q100_seed42", "shallow_try")})
    assert setup.loc["dec6_q100_seed42", "device"] == "cpu" and setup.loc["shallow_try", "precision"] == "fp32"
    assert setup.loc["shallow_try", "variant"] == "dec3_q100" and setup.shape[1] <= MAX_COLUMNS


def test_the_report_answers_first_and_keeps_its_rules(run_folders, analysed, tmp_path):  # noqa: F811
    template = TEMPLATE.read_text()
    found = _findings(analysed)[0]
    _exports(tmp_path / "r", template, found, skip="none")  # 07 ran: it is in the appendix
    text = fill(template, tmp_path / "r", run_folders)
    parts = sections(text)
    heading, first = next((h, t) for h, t in parts if h)
    assert heading == "## The answer"
    answer = " ".join(paragraphs(first))
    best = by_key(found)["best"]
    assert answer.startswith(f"**{best.data['variant']}**") and best.interval() in answer
    assert words(answer) <= ANSWER_WORDS
    headings = [h for h, _ in parts]
    for wanted in ("## Method", "## Results", "## Diagnostics", "## Limitations", "## Appendix"):
        assert wanted in headings, wanted
    assert headings.index("## Results") < headings.index("## Diagnostics") < headings.index("## Limitations") \
        < headings.index("## Appendix")
    appendix = text.split("## Appendix")[1]
    assert "TABLE 07_takeaway" in appendix and "TABLE 07_takeaway" not in text.split("## Appendix")[0]
    for h, body in parts:  # the demo's stamp once per section at most, the world note once in all
        assert body.count(DEMO_STAMP) <= 1, h
    assert text.count(TINY_NOTE) == 1
    assert report_problems(text, (TINY_NOTE, DEMO_STAMP)) == []


def test_report_problems_names_every_broken_rule():
    long = " ".join(["word"] * 160)
    wide = "| " + " | ".join(f"c{i}" for i in range(12)) + " |\n|" + "---|" * 12 + "\n"
    bad = (f"# T\n\n## Answer\n\n{long}\n\n{TINY_NOTE}\n\n{TINY_NOTE}\n\n## Results\n\n{wide}\n"
           "| ('final AP', 'seeds') | x |\n|---|---|\n| 1 | 2 |\n\n"
           '<figure><img src="x"><figcaption>no number</figcaption></figure>\n\n'
           "A paragraph said twice, ten words or more, to be caught here.\n\n"
           "A paragraph said twice, ten words or more, to be caught here.\n\n## Appendix\n\nnothing\n")
    problems = "\n".join(report_problems(bad, (TINY_NOTE,)))
    for part in ("answers in 240 words, more than 150", "a paragraph of 160 words", "appears 2 times in ## Answer",
                 "no Limitations section", "a table of 12 columns in the body", "printed as a tuple",
                 "a figure without a number", "a paragraph appears twice", "notebook 07"):
        assert part in problems, part
    good = (f"# T\n\n## Answer\n\nShort.\n\n## Limitations\n\n- one\n\n## Appendix\n\n{wide}\n"
            "### Your data (notebook 07)\n\nnot run\n")
    assert report_problems(good) == []  # a wide table in the appendix is fine


def test_every_missing_export_is_named_at_once(run_folders, tmp_path):  # noqa: F811
    template = TEMPLATE.read_text()
    _exports(tmp_path / "r", template)
    (tmp_path / "r" / "tables" / "06_headline.md").unlink()
    (tmp_path / "r" / "tables" / "06_findings.json").unlink()
    (tmp_path / "r" / "figures" / "06_ap_curves.png").unlink()
    with pytest.raises(ReportError) as err:
        fill(template + "\n{{config:colour}} {{chart:x}}\n", tmp_path / "r", run_folders)
    message = str(err.value)
    for part in ("tables/06_headline.md does not exist", "figures/06_ap_curves.png does not exist",
                 "06_findings.json does not exist (06_analysis writes it)",
                 "RunConfig has no field 'colour'", "unknown directive '{{chart:x}}'"):
        assert part in message
    assert not (tmp_path / "r" / "report.html").exists()
    with pytest.raises(ReportError, match="no run folders under .*nothing: run the notebooks first"):
        fill(template, tmp_path / "r", tmp_path / "nothing")
    assert main(["--runs", str(tmp_path / "nothing"), "--report-dir", str(tmp_path / "r")]) == 1


def test_an_embedded_takeaway_loses_its_stamp_and_keeps_its_statements_apart():
    from detr_nb_utils.notebook.report import _STAMPED, _unstamped

    text = (f"*{DEMO_STAMP}*\n\n{TINY_NOTE} First statement, wrapped\nacross two lines.\n{TINY_NOTE} Second statement.\n"
            "| a |\n|---|\n| 1 |\n")
    out = _unstamped(text, (TINY_NOTE,))
    assert out.startswith(_STAMPED) and DEMO_STAMP not in out and TINY_NOTE not in out
    assert paragraphs(out.replace(_STAMPED, "")) == ["First statement, wrapped\nacross two lines.", "Second statement."]
    assert "Second statement.\n\n| a |\n|---|" in out  # a table right after a statement stays a table
    assert not _unstamped("| a |\n|---|\n| 1 |\n", ()).startswith(_STAMPED)  # the study: nothing to say


def test_the_report_says_how_many_training_images_the_runs_used():
    """The Method names a training limit (the demo's max_train_images), so a reader of a 400/100 split does not take
    the runs for fine-tuned on all 400."""
    from detr_nb_utils.notebook.report import training_sentence

    assert training_sentence([None, None]) == "Each run fine-tuned on every training image."
    assert "the first 120 of the training images" in training_sentence([120, 120])
    assert "the first 120, all of the training images" in training_sentence([None, 120])
