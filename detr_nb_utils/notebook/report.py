"""The team report: ``report/report.md`` (the template, prose only) filled from the run folders and the notebooks'
exported tables, figures and findings, rendered to one self-contained HTML file (tables embedded, figures inlined,
wide tables scrolling) and to a PDF of the same (fpdf2), so a reader can follow the study without opening the
notebooks.

``python -m detr_nb_utils.notebook.report --profile demo`` (``make report``; ``PROFILE=study`` for the study) reads
``runs/<profile>/`` and its report folder (``runs/demo/report/`` or ``report/``) and writes ``report.html`` and
``report.pdf`` there, then checks the rules of :mod:`.report_checks` and fails listing any it breaks.
The template holds no number: every value comes from a directive, filled here:

``{{profile}}``
    which profile and run folders the report comes from (with the demo world's note, once).
``{{setup}}``
    one row per run folder (variant, recipe, seed, epochs, precision, device, wall time) and the machines they ran
    on, read from its ``config.json``, ``metrics.jsonl`` and ``environment.jsonl``.
``{{config:FIELD}}``
    a field of the runs' configuration (:class:`~detr_nb_utils.training.config.RunConfig`), e.g. ``n_train``.
``{{fact:NAME}}``
    a fact of the run folders: ``seeds`` (per variant), ``arms`` (the recipe arms that ran), ``images`` and
    ``resamples`` (what 06's intervals rest on).
``{{findings:TEMPLATE}}``
    06's findings (``tables/06_findings.json``) rendered by one of
    :data:`~detr_nb_utils.analysis.templates.TEMPLATES` (``answer``, ``rankings``, ``changes``, ...).
``{{limitations}}``
    the Limitations, computed from the run folders (:func:`~detr_nb_utils.analysis.limitations.limitations`).
``{{table:NAME}}``
    ``tables/NAME.md``, embedded (a table, or a takeaway's sentences), without the demo's stamp: the report says it
    once per section instead.
``{{figure:NAME|caption}}``
    ``figures/NAME.png``, inlined, numbered in order ("Figure 3."), with its caption: one sentence saying what to look
    at.
``{{if:NAME}} ... {{endif}}``
    the block only when ``tables/NAME.md`` or ``figures/NAME.png`` exists (notebook 07, which runs on your own data
    only when you ask), else one line saying which notebook makes it.

A directive whose file is missing, or an unknown one, is an error listing all of them: the report never shows a
placeholder. HTML comments (``<!-- … -->``, notes to whoever edits the template) are left out. Used by
``make report`` and ``make test`` (the demo's report, after nbval); ``tests/test_report.py`` renders it from run
folders made by the tests.
"""
from __future__ import annotations

import argparse
import base64
import html
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import mistune
import pandas as pd

from ..analysis.comparison import by_recipe, discover_runs, variant_labels
from ..analysis.conclusions import runs_note
from ..data import atomic
from ..training.config import make_config
from ..training.recipe import ORIGINAL
from ..training.runs import RunRecord, load_run
from .setup_cell import report_dir_for
from .tables import markdown_table

DIRECTIVE = re.compile(r"\{\{\s*(?P<kind>[a-z]+)(?::(?P<arg>[^}|]+))?(?:\|(?P<caption>[^}]*))?\s*\}\}")
TEMPLATE = Path("report/report.md")
STYLE = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.45}"
         "table{border-collapse:collapse;margin:.8rem 0;font-size:.85rem}td,th{border:1px solid #bbb;"
         "padding:.2rem .5rem;text-align:right}th{background:#eee}figure{margin:1rem 0}img{max-width:100%}"
         "figcaption{font-size:.85rem;color:#444}")


class ReportError(ValueError):
    """The template asks for something the run folders or the report folder do not hold."""


def setup_table(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """One row per run folder: what was run, on what, and for how long (seconds of training and evaluation)."""
    labels = variant_labels({n: r.config for n, r in records.items()})
    rows = {}
    for name, r in records.items():
        env = r.environment[-1] if r.environment else {}
        rows[name] = {"variant": labels[name], "recipe": r.config.recipe, "seed": r.config.seed,
                      "epochs": r.final_epoch,
                      "precision": r.effective_precision, "device": env.get("device", "not recorded"),
                      "GPU": env.get("gpu") or "none", "CPU": env.get("cpu", "not recorded"),
                      "torch": env.get("torch", "not recorded"), "commit": env.get("commit") or "not recorded",
                      "wall time (s)": round(float(r.metrics["wall_time_s"].sum())) if "wall_time_s" in r.metrics
                      else "not recorded"}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("run")


def _config_value(records: Mapping[str, RunRecord], field: str) -> str:
    values = {str(getattr(r.config, field)) for r in records.values() if hasattr(r.config, field)}
    if not values:
        raise ReportError(f"{{{{config:{field}}}}}: RunConfig has no field {field!r}")
    return " / ".join(sorted(values))


def _figure(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'\n<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>\n")


def fill(template: str, report_dir: Path, runs_dir: Path) -> str:
    """The template with every directive replaced (see the module docstring). Raises :class:`ReportError` listing
    every directive it cannot fill."""
    names = discover_runs(runs_dir) if runs_dir.is_dir() else []
    records = {n: load_run(runs_dir / n) for n in names}
    if not records:
        raise ReportError(f"no run folders under {runs_dir}: run the notebooks first (make demo or make study)")
    problems: list[str] = []

    def replace(m: re.Match) -> str:
        kind, arg, caption = m["kind"], (m["arg"] or "").strip(), (m["caption"] or "").strip()
        try:
            if kind == "profile":
                profiles = sorted({r.config.profile for r in records.values()})
                note = runs_note(records.values())
                return (f"Rendered from {len(records)} run folders in `{runs_dir}` (profile {', '.join(profiles)})."
                        + (f" {note}" if note else ""))
            if kind == "setup":
                return "\n" + markdown_table(setup_table(records), ".0f") + "\n"
            if kind == "config":  # the headline recipe's runs: another arm's rates are its own
                return _config_value(by_recipe(records).get(ORIGINAL) or records, arg)
            if kind not in ("table", "figure"):
                raise ReportError(f"unknown directive {m[0]!r}")
            path = report_dir / (f"tables/{arg}.md" if kind == "table" else f"figures/{arg}.png")
            if not path.is_file():
                raise ReportError(f"{m[0]}: {path} does not exist (its notebook has not run, or did not make it)")
            return "\n" + path.read_text().strip() + "\n" if kind == "table" else _figure(path, caption or arg)
        except ReportError as e:
            problems.append(str(e))
            return m[0]

    filled = DIRECTIVE.sub(replace, re.sub(r"<!--.*?-->\n*", "", template, flags=re.S))  # notes to the editor
    if problems:
        raise ReportError("the report cannot be filled:\n  " + "\n  ".join(problems))
    return filled


def render_report(report_dir: str | Path, runs_dir: str | Path, template: str | Path = TEMPLATE,
                  pdf: bool = True) -> Path:
    """Fill ``template`` from ``runs_dir`` and ``report_dir`` (:func:`fill`) and write ``report_dir/report.html``,
    self-contained, and with ``pdf`` the same as ``report_dir/report.pdf`` (:func:`write_pdf`); returns the HTML's
    path."""
    report_dir, runs_dir = Path(report_dir), Path(runs_dir)
    body = mistune.create_markdown(escape=False, plugins=["table"])(fill(Path(template).read_text(), report_dir,
                                                                           runs_dir))
    title = next((line.lstrip("# ").strip() for line in Path(template).read_text().splitlines()
                  if line.startswith("# ")), "Report")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>\n")
    out = atomic.write_text(report_dir / "report.html", page)
    if pdf:
        write_pdf(body, report_dir / "report.pdf", title)
    return out


#: a figure's width in the PDF, in fpdf2's HTML pixels (72 per inch): 176 mm, the A4 page inside its margins
PDF_FIGURE_WIDTH = 500
_FIGURE = re.compile(r'<figure><img src="([^"]+)" alt="[^"]*"><figcaption>(.*?)</figcaption></figure>', re.S)


def write_pdf(body: str, path: Path, title: str) -> Path:
    """The report's HTML ``body`` as an A4 PDF, by fpdf2 (pure Python: no TeX, no system libraries), in the DejaVu
    fonts matplotlib ships (the report's text is not Latin-1). fpdf2 renders a subset of HTML: figures become an image
    the width of the page and an italic caption; the stylesheet is not applied."""
    import matplotlib
    from fpdf import FPDF

    fonts = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    doc = FPDF(format="A4")
    doc.set_title(title)
    for style, suffix in (("", ""), ("B", "-Bold"), ("I", "-Oblique"), ("BI", "-BoldOblique")):
        doc.add_font("dejavu", style, fonts / f"DejaVuSans{suffix}.ttf")
    doc.add_font("dejavumono", "", fonts / "DejaVuSansMono.ttf")
    doc.set_font("dejavu", size=9)
    doc.add_page()
    doc.write_html(_FIGURE.sub(rf'<p><img src="\1" width="{PDF_FIGURE_WIDTH}"></p><p><i>\2</i></p>', body),
                   font_family="dejavu")
    return atomic.write_bytes(path, bytes(doc.output()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detr_nb_utils.notebook.report",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=("demo", "study"), default="demo")
    parser.add_argument("--runs", help="run folders (default runs/<profile>)")
    parser.add_argument("--report-dir", help="tables/ and figures/ (default: where the profile's notebooks put them)")
    parser.add_argument("--template", default=str(TEMPLATE))
    args = parser.parse_args(argv)
    cfg = make_config(args.profile)
    runs_dir = Path(args.runs or cfg.out_dir)
    report_dir = Path(args.report_dir) if args.report_dir else report_dir_for(cfg, None)
    try:
        out = render_report(report_dir, runs_dir, args.template)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out} and {out.with_suffix('.pdf').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
