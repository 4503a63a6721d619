"""The git filter of the notebooks (``.gitattributes``: ``notebooks/*.ipynb filter=notebook``; ``make setup``
installs it): what git stores of a ``.ipynb`` holds its cells and nothing a run or a kernel adds.

``clean`` (working file -> git) empties every code cell's outputs and execution count and drops what a kernel or a
run writes into the metadata (``language_info``, widget state, papermill's and JupyterLab's execution records), so
neither outputs nor a Python version ever reach a commit, whatever JupyterLab or papermill saved. ``smudge`` (git ->
working file) writes the ``language_info`` of this project's kernel (``.venv/bin/python``) into the working file:
JupyterLab sets that block as soon as the kernel starts and would otherwise mark every freshly opened notebook
modified. ``clean`` removes it again, so ``git status`` stays clean. Both read the notebook on stdin and write it on
stdout in nbformat's own layout (one-space indent, sorted keys), so a committed notebook passes ``clean`` unchanged;
input that is not a notebook passes through untouched. Standard library only: git runs it with the system
``python3``, before or without the project's environment.

    python3 tools/notebook_filter.py clean < notebooks/03_baseline.ipynb
    python3 tools/notebook_filter.py smudge --files notebooks/*.ipynb   # in place (make setup, once)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: notebook metadata a kernel or a run writes
RUN_METADATA = ("language_info", "widgets", "papermill")
#: cell metadata a run writes (execution times, papermill's record, collapsed or scrolled outputs)
RUN_CELL_METADATA = ("execution", "ExecuteTime", "papermill", "collapsed", "scrolled")


def dumps(nb: dict) -> str:
    """``nb`` in nbformat's layout (``nbformat.writes``: indent 1, sorted keys, UTF-8 kept, a final newline)."""
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def clean(nb: dict) -> dict:
    """``nb`` without outputs, execution counts and run metadata (in place; returned)."""
    for key in RUN_METADATA:
        nb.get("metadata", {}).pop(key, None)
    for cell in nb.get("cells", []):
        meta = cell.get("metadata", {})
        for key in RUN_CELL_METADATA:
            meta.pop(key, None)
        if isinstance(meta.get("jupyter"), dict):
            meta["jupyter"].pop("outputs_hidden", None)
            if not meta["jupyter"]:
                del meta["jupyter"]
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
    return nb


def kernel_language_info(python: Path = ROOT / ".venv" / "bin" / "python") -> dict | None:
    """The ``language_info`` the project's IPython kernel reports (ipykernel's, for ``python``'s version); None
    when that interpreter is not there (before ``make setup``)."""
    try:
        version = subprocess.run([str(python), "-c", "import sys; print(sys.version.split()[0])"],
                                 capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"codemirror_mode": {"name": "ipython", "version": 3}, "file_extension": ".py",
            "mimetype": "text/x-python", "name": "python", "nbconvert_exporter": "python",
            "pygments_lexer": "ipython3", "version": version}


def smudge(nb: dict, language_info: dict | None) -> dict:
    """``nb`` with ``language_info`` in its metadata (in place; returned), unless it has one or none is given."""
    if language_info is not None and nb.get("metadata", {}).get("kernelspec", {}).get("language") == "python":
        nb["metadata"].setdefault("language_info", language_info)
    return nb


def _filter(text: str, how: str, language_info: dict | None) -> str:
    try:
        nb = json.loads(text)
    except ValueError:
        return text  # not a notebook (a conflict, a half-written file): git keeps it as it is
    if not isinstance(nb, dict) or "cells" not in nb:
        return text
    return dumps(clean(nb) if how == "clean" else smudge(nb, language_info))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="the notebooks' git filter (clean: strip outputs; smudge: add the "
                                             "kernel's language_info)")
    ap.add_argument("how", choices=("clean", "smudge"))
    ap.add_argument("--files", nargs="+", type=Path, help="filter these files in place instead of stdin")
    args = ap.parse_args(argv)
    info = kernel_language_info() if args.how == "smudge" else None
    if not args.files:
        sys.stdout.buffer.write(_filter(sys.stdin.buffer.read().decode("utf-8"), args.how, info).encode("utf-8"))
        return 0
    for path in args.files:
        text = path.read_text(encoding="utf-8")
        new = _filter(text, args.how, info)
        if new != text:  # written under a temporary name, then renamed; its modification time kept, so that
            stat = path.stat()  # jupytext still sees the .py of the pair as the newer file
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(new, encoding="utf-8")
            os.utime(tmp, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            tmp.replace(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
