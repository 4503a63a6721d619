"""The team report: the committed template fills from run folders and exported files into one self-contained HTML page
with no placeholder left and no number typed in; whatever it names and cannot find is listed in one error."""
from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import pytest
from test_bootstrap import perturbed_detections, sample_gt  # noqa: F401 (fixtures)
from test_comparison import _write_run, quality, run_folders  # noqa: F401 (fixtures)

from detr_nb_utils.notebook.report import (
    DIRECTIVE,
    ReportError,
    fill,
    main,
    render_report,
    setup_table,
)
from detr_nb_utils.training.runs import load_run, record_environment
from detr_nb_utils.training.runtime import environment

matplotlib.use("Agg")
TEMPLATE = Path(__file__).resolve().parents[1] / "report" / "report.md"


def _exports(report_dir: Path, template: str, skip: str = "") -> None:
    """A table file and a PNG for every directive of ``template`` (but ``skip``), as the notebooks export them."""
    (report_dir / "tables").mkdir(parents=True)
    (report_dir / "figures").mkdir()
    fig, ax = plt.subplots(figsize=(1, 1))
    for m in DIRECTIVE.finditer(template):
        if m["arg"] and m["arg"].strip() != skip and m["kind"] == "table":
            (report_dir / "tables" / f"{m['arg'].strip()}.md").write_text(f"| x |\n|---|\n| TABLE {m['arg']} |\n")
        elif m["arg"] and m["arg"].strip() != skip and m["kind"] == "figure":
            ax.set_title(m["arg"])  # a different image per figure
            fig.savefig(report_dir / "figures" / f"{m['arg'].strip()}.png")
    plt.close(fig)


def test_template_holds_no_typed_number():
    """Every number comes from a directive; the prose names only the variants' design (3 or 6 decoder layers, 50 or
    100 queries), epoch 0 (the checkpoint), notebooks, sections and figures."""
    prose = DIRECTIVE.sub("", TEMPLATE.read_text().split("## References")[0])
    prose = "\n".join(line for line in prose.splitlines() if not line.startswith("#"))  # headings
    prose = re.sub(r"`[^`]*`|notebook 0\d|Fig\. \d|section \d\.\d|fp32|bf16|DETR-R50|epoch 0", "", prose)
    numbers = set(re.findall(r"\d[\d,.]*\d|\d", prose))
    assert numbers <= {"3", "6", "50", "100"}, sorted(numbers)


def test_report_renders_self_contained_from_run_folders(run_folders, tmp_path):  # noqa: F811
    template = TEMPLATE.read_text()
    report_dir = tmp_path / "report"
    _exports(report_dir, template)
    record_environment(run_folders / "dec6_q100_seed42", environment("cpu"), None)
    out = render_report(report_dir, run_folders, TEMPLATE)
    page = out.read_text()
    assert out == report_dir / "report.html" and "{{" not in page and "}}" not in page
    for m in DIRECTIVE.finditer(template):
        if m["kind"] == "table":
            assert f"TABLE {m['arg']}" in page
    n_figures = len({m["arg"] for m in DIRECTIVE.finditer(template) if m["kind"] == "figure"})
    assert page.count('src="data:image/png;base64,') >= n_figures  # inlined, not linked
    assert "Rendered from 6 run folders" in page and "<table>" in page
    pdf = (report_dir / "report.pdf").read_bytes()  # the same report as a PDF, every figure in it
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    assert pdf.count(b"/Subtype /Image") == n_figures and pdf.count(b"/Type /Page\n") >= 2
    setup = setup_table({n: load_run(run_folders / n) for n in ("dec6_q100_seed42", "shallow_try")})
    assert setup.loc["dec6_q100_seed42", "device"] == "cpu" and setup.loc["shallow_try", "CPU"] == "not recorded"
    assert setup.loc["shallow_try", "variant"] == "dec3_q100"


def test_every_missing_export_is_named_at_once(run_folders, tmp_path):  # noqa: F811
    template = TEMPLATE.read_text()
    _exports(tmp_path / "r", template, skip="06_headline")
    (tmp_path / "r" / "figures" / "06_ap_curves.png").unlink()
    with pytest.raises(ReportError) as err:
        fill(template + "\n{{config:colour}} {{chart:x}}\n", tmp_path / "r", run_folders)
    message = str(err.value)
    for part in ("tables/06_headline.md does not exist", "figures/06_ap_curves.png does not exist",
                 "RunConfig has no field 'colour'", "unknown directive '{{chart:x}}'"):
        assert part in message
    assert not (tmp_path / "r" / "report.html").exists()
    with pytest.raises(ReportError, match="no run folders under .*nothing: run the notebooks first"):
        fill(template, tmp_path / "r", tmp_path / "nothing")
    assert main(["--runs", str(tmp_path / "nothing"), "--report-dir", str(tmp_path / "r")]) == 1
