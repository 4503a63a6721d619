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
    the Limitations, computed from the run folders (:func:`~detr_nb_utils.analysis.limitations.study_limitations`).
``{{table:NAME}}``
    ``tables/NAME.md``, embedded (a table, or a takeaway's sentences), without the demo's stamp: the report says it
    once per section instead.
``{{csv:NAME}}``
    a link to ``tables/NAME.csv`` with its size in rows and columns: a table too wide for a page, in the appendix.
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

from ..analysis.conclusions import TINY_NOTE, runs_note
from ..analysis.findings import Finding, read_findings
from ..analysis.limitations import arms_sentence, seeds_sentence, study_limitations
from ..analysis.run_sets import by_recipe, discover_runs, variant_labels
from ..analysis.templates import TEMPLATES
from ..data import atomic
from ..training.config import make_config
from ..training.recipe import ORIGINAL
from ..training.runs import RunRecord, load_run
from .report_checks import report_problems
from .setup_cell import DEMO_STAMP, report_dir_for
from .tables import markdown_table

DIRECTIVE = re.compile(r"\{\{\s*(?P<kind>[a-z]+)(?::(?P<arg>[^}|]+))?(?:\|(?P<caption>[^}]*))?\s*\}\}")
_IF = re.compile(r"\{\{\s*if:(?P<name>[^}]+?)\s*\}\}(?P<body>.*?)\{\{\s*endif\s*\}\}", re.S)
TEMPLATE = Path("report/report.md")
FINDINGS = "06_findings"
STYLE = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.45}"
         ".scroll{overflow-x:auto;max-width:100%}"
         "table{border-collapse:collapse;margin:.8rem 0;font-size:.85rem}td,th{border:1px solid #bbb;"
         "padding:.2rem .5rem;text-align:right}th{background:#eee}figure{margin:1rem 0}img{max-width:100%}"
         "figcaption{font-size:.85rem;color:#444}")
#: where a stamped export stood: the section's one stamp line replaces the first, the rest are dropped
_STAMPED = "\x00stamp\x00"


def training_sentence(limits: Sequence[int | None]) -> str:
    """How many training images the runs fine-tuned on, from their ``max_train_images`` (None: all of them)."""
    kinds = sorted(set(limits), key=lambda v: (v is None, v or 0))
    if kinds == [None]:
        return "Each run fine-tuned on every training image."
    words = ", ".join("all" if v is None else f"the first {v}" for v in kinds)
    if len(kinds) == 1:
        return f"Each run fine-tuned on {words} of the training images (`max_train_images`)."
    return f"The runs fine-tuned on {words} of the training images (`max_train_images`, by run)."


class ReportError(ValueError):
    """The template asks for something the run folders or the report folder do not hold."""


def setup_table(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """One row per run folder: what was run, on what, and for how long (seconds of training and evaluation)."""
    labels = variant_labels({n: r.config for n, r in records.items()})
    rows = {}
    for name, r in records.items():
        env = r.environment[-1] if r.environment else {}
        rows[name] = {"variant": labels[name], "recipe": r.config.recipe, "seed": r.config.seed,
                      "epochs": r.final_epoch, "precision": r.effective_precision,
                      "device": env.get("device", "not recorded"),
                      "wall time (s)": round(float(r.metrics["wall_time_s"].sum())) if "wall_time_s" in r.metrics
                      else "not recorded"}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("run")


def machines_table(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """The machines the runs ran on: one row per distinct (GPU, CPU, torch, commit), with how many runs."""
    rows = [{"GPU": env.get("gpu") or "none", "CPU": env.get("cpu", "not recorded"),
             "torch": env.get("torch", "not recorded"), "commit": env.get("commit") or "not recorded"}
            for env in (r.environment[-1] if r.environment else {} for r in records.values())]
    table = pd.DataFrame(rows, columns=["GPU", "CPU", "torch", "commit"])
    return table.groupby(list(table.columns), sort=False).size().rename("runs").reset_index()


def _config_value(records: Mapping[str, RunRecord], field: str) -> str:
    values = {str(getattr(r.config, field)) for r in records.values() if hasattr(r.config, field)}
    if not values:
        raise ReportError(f"{{{{config:{field}}}}}: RunConfig has no field {field!r}")
    return " / ".join(sorted(values))


def _figure(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'\n<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>\n")


def _unstamped(text: str, notes: Sequence[str]) -> str:
    """An exported table or takeaway without the demo's stamp line and world note (said once per section instead:
    :data:`_STAMPED` marks where)."""
    lines = text.strip().splitlines()
    stamped = bool(lines) and re.fullmatch(r"\*[^*]+\*", lines[0].strip()) is not None and "DEMO" in lines[0]
    body = "\n".join(lines[1:] if stamped else lines).strip()
    for note in notes:
        if note and note in body:
            body, stamped = body.replace(note, "").strip(), True
    body = re.sub(r"^[ \t]+", "", re.sub(r"[ \t]{2,}", " ", body), flags=re.M)
    if not body.startswith("|"):  # a takeaway written a statement per line: each line that ends one, a paragraph
        body = re.sub(r"(?<=[.!?])\n(?=[^\n|\-*])", "\n\n", body)
        body = re.sub(r"(?<=[^|\n])\n(?=\|)", "\n\n", body)  # and a table after it, a table
    return (_STAMPED if stamped else "") + "\n\n" + body + "\n"


def _stamp_once(markdown: str, stamp: str) -> str:
    """Each ``## `` section's first stamped export gets the stamp line, the others none."""
    parts = re.split(r"(^## .*$)", markdown, flags=re.M)
    out = []
    for part in parts:
        first, found, rest = part.partition(_STAMPED)
        line = f"*{stamp}*" if found and stamp else ""
        out.append(first + line + rest.replace(_STAMPED, ""))
    return "".join(out)


def _csv_link(path: Path) -> str:
    table = pd.read_csv(path)
    return f"[`tables/{path.name}`](tables/{path.name}) ({len(table)} rows, {table.shape[1]} columns)"


def _if_blocks(template: str, report_dir: Path) -> str:
    """``{{if:NAME}} ... {{endif}}`` kept when NAME was exported, else one line saying which notebook makes it."""
    def keep(m: re.Match) -> str:
        name = m["name"].strip()
        if (report_dir / "tables" / f"{name}.md").is_file() or (report_dir / "figures" / f"{name}.png").is_file():
            return m["body"]
        notebook = name.split("_")[0]
        return (f"\n*Notebook {notebook} has not run here (it makes `{name}`): `make own DATASET=DIR` runs it on "
                "your own dataset, and the next `make report` shows it here.*\n")
    return _IF.sub(keep, template)


class _Filler:
    """The state of one filling: the run folders, the findings (read once), the figure counter, the problems."""

    def __init__(self, report_dir: Path, runs_dir: Path, records: Mapping[str, RunRecord]):
        self.report_dir, self.runs_dir, self.records = report_dir, runs_dir, records
        self.families = by_recipe(records)
        self.note = runs_note(records.values())
        self.figures = 0
        self._findings: tuple[list[Finding], dict] | None = None

    def findings(self) -> tuple[list[Finding], dict]:
        if self._findings is None:
            path = self.report_dir / "tables" / f"{FINDINGS}.json"
            if not path.is_file():
                raise ReportError(f"{path} does not exist (06_analysis writes it)")
            self._findings = read_findings(path.read_text())
        return self._findings

    def fact(self, name: str) -> str:
        if name == "seeds":
            text = seeds_sentence(self.families)
            return text[:1].upper() + text[1:]
        if name == "arms":
            return arms_sentence(self.families)
        if name in ("images", "resamples"):
            meta = self.findings()[1]
            key = {"images": "n_images", "resamples": "n_resamples"}[name]
            if key not in meta:
                raise ReportError(f"{{{{fact:{name}}}}}: {FINDINGS}.json does not say {key}")
            return str(meta[key])
        if name == "training":
            return training_sentence([r.config.max_train_images for r in self.records.values()])
        raise ReportError(f"{{{{fact:{name}}}}}: unknown fact (seeds, arms, images, resamples, training)")

    def __call__(self, m: re.Match) -> str:
        kind, arg, caption = m["kind"], (m["arg"] or "").strip(), (m["caption"] or "").strip()
        if kind == "profile":
            profiles = sorted({r.config.profile for r in self.records.values()})
            return (f"Rendered from {len(self.records)} run folders in `{self.runs_dir}` (profile "
                    f"{', '.join(profiles)})." + (f" {self.note}" if self.note else ""))
        if kind == "setup":
            return ("\n" + markdown_table(setup_table(self.records), ".0f") + "\nThe machines:\n\n"
                    + markdown_table(machines_table(self.records)) + "\n")
        if kind == "config":  # the headline recipe's runs: another arm's rates are its own
            return _config_value(self.families.get(ORIGINAL) or self.records, arg)
        if kind == "fact":
            return self.fact(arg)
        if kind == "findings":
            if arg not in TEMPLATES:
                raise ReportError(f"{m[0]}: no template {arg!r} (one of {', '.join(TEMPLATES)})")
            return "\n" + TEMPLATES[arg](self.findings()[0]) + "\n"
        if kind == "limitations":
            return "\n" + "\n".join(f"- {item}" for item in study_limitations(self.families)) + "\n"
        if kind not in ("table", "figure", "csv"):
            raise ReportError(f"unknown directive {m[0]!r}")
        path = self.report_dir / (f"figures/{arg}.png" if kind == "figure" else
                                  f"tables/{arg}.{'csv' if kind == 'csv' else 'md'}")
        if not path.is_file():
            raise ReportError(f"{m[0]}: {path} does not exist (its notebook has not run, or did not make it)")
        if kind == "csv":
            return _csv_link(path)
        if kind == "table":
            return _unstamped(path.read_text(), (TINY_NOTE,))
        self.figures += 1
        return _figure(path, f"Figure {self.figures}. {caption or arg}")


def fill(template: str, report_dir: Path, runs_dir: Path) -> str:
    """The template with every directive replaced (see the module docstring). Raises :class:`ReportError` listing
    every directive it cannot fill."""
    names = discover_runs(runs_dir) if runs_dir.is_dir() else []
    records = {n: load_run(runs_dir / n) for n in names}
    if not records:
        raise ReportError(f"no run folders under {runs_dir}: run the notebooks first (make demo or make study)")
    problems: list[str] = []
    filler = _Filler(report_dir, runs_dir, records)

    def replace(m: re.Match) -> str:
        try:
            return filler(m)
        except ReportError as e:
            problems.append(str(e))
            return m[0]

    template = _if_blocks(re.sub(r"<!--.*?-->\n*", "", template, flags=re.S), report_dir)  # notes to the editor
    filled = DIRECTIVE.sub(replace, template)
    if problems:
        raise ReportError("the report cannot be filled:\n  " + "\n  ".join(problems))
    stamp = DEMO_STAMP if any(r.config.profile == "demo" for r in records.values()) else ""
    return re.sub(r"\n{3,}", "\n\n", _stamp_once(filled, stamp))


def render_report(report_dir: str | Path, runs_dir: str | Path, template: str | Path = TEMPLATE,
                  pdf: bool = True, check: bool = True) -> Path:
    """Fill ``template`` from ``runs_dir`` and ``report_dir`` (:func:`fill`) and write ``report_dir/report.html``,
    self-contained (wide tables scroll), and with ``pdf`` the same as ``report_dir/report.pdf`` (:func:`write_pdf`);
    returns the HTML's path. With ``check``, then raises :class:`ReportError` listing every rule of
    :mod:`.report_checks` the report breaks (the files are written first, so the reader can see them)."""
    report_dir, runs_dir = Path(report_dir), Path(runs_dir)
    markdown = fill(Path(template).read_text(), report_dir, runs_dir)
    body = mistune.create_markdown(escape=False, plugins=["table"])(markdown)
    title = next((line.lstrip("# ").strip() for line in Path(template).read_text().splitlines()
                  if line.startswith("# ")), "Report")
    scrolling = body.replace("<table>", '<div class="scroll"><table>').replace("</table>", "</table></div>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{scrolling}</body></html>\n")
    out = atomic.write_text(report_dir / "report.html", page)
    if pdf:
        write_pdf(body, report_dir / "report.pdf", title)
    problems = report_problems(markdown, (TINY_NOTE, DEMO_STAMP)) if check else []
    if problems:
        raise ReportError(f"{out} breaks the report's rules:\n  " + "\n  ".join(problems))
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
