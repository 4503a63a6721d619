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
    python3 tools/notebook_filter.py install   # make setup: the git config, and the working copies smudged
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


def _git(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=check)


def install() -> int:
    """Configures the filter in this clone's git config and smudges the working notebooks git sees unchanged (a
    clone's checkout ran before the filter existed), refreshing their index entries so ``git status`` stays clean;
    each file keeps its modification time, so jupytext still sees the ``.py`` of its pair as the newer one. A
    notebook with changes of yours is left as it is. Outside a git work tree it does nothing."""
    if _git("rev-parse", "--is-inside-work-tree", check=False).returncode != 0:
        print("notebook_filter: not a git work tree; no filter installed")
        return 0
    script = Path(__file__).relative_to(ROOT).as_posix()
    for mode in ("clean", "smudge"):  # a checkout of a commit older than this script passes the notebook as it is
        _git("config", f"filter.notebook.{mode}",
             f"sh -c 'if test -f {script}; then exec python3 {script} {mode}; else exec cat; fi'")
    info = kernel_language_info()
    for name in _git("ls-files", "--", "notebooks/*.ipynb").stdout.split():
        path = ROOT / name
        if not path.is_file() or _git("diff", "--quiet", "--", name, check=False).returncode != 0:
            continue
        text = path.read_text(encoding="utf-8")
        new = _filter(text, "smudge", info)
        if new != text:  # written under a temporary name, then renamed, with the file's modification time
            stat = path.stat()
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(new, encoding="utf-8")
            os.utime(tmp, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            tmp.replace(path)
            _git("add", "--", name)  # the same content through the filter: only the index's file size changes
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="the notebooks' git filter: clean (strip outputs) and smudge (add the "
                                             "kernel's language_info) from stdin to stdout; install (make setup)")
    ap.add_argument("how", choices=("clean", "smudge", "install"))
    args = ap.parse_args(argv)
    if args.how == "install":
        return install()
    info = kernel_language_info() if args.how == "smudge" else None
    sys.stdout.buffer.write(_filter(sys.stdin.buffer.read().decode("utf-8"), args.how, info).encode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
