"""Open every notebook in a real JupyterLab, in headless Chromium, and check that the committed files survive it:
each notebook opens without being marked modified (the kernel's name and ``language_info`` are what the file holds),
saved as it is ``git status`` shows no change to it (no jupytext version written into the ``.py``), and after its
parameters cell is run and it is saved again, ``git diff`` shows none (no execution count or output reaches a commit:
the git filter ``make setup`` installs strips them; ``git status`` may still list the ``.ipynb``, whose size
changed, until it is added).

It needs the project's ``.venv`` (``make setup``), Debian's Chromium (``apt-get install chromium``) and Playwright
in any Python (``python3 -m venv /tmp/pw && /tmp/pw/bin/pip install playwright``; its own browsers are not used, so
``playwright install`` is never needed)::

    /tmp/pw/bin/python tools/check_jupyterlab.py            # every notebook; exit status 1 on a failure
    /tmp/pw/bin/python tools/check_jupyterlab.py 03_baseline  # one

It refuses to start when ``notebooks/`` already has uncommitted changes (a change could not be told from them), and
leaves the files as git has them. JupyterLab runs with fresh settings, workspace and runtime folders, Chromium with
a fresh profile; both are stopped at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: the model state JupyterLab keeps for the open notebook (its app is exposed to the page for this check)
STATE_JS = """() => {
  const w = window.jupyterapp.shell.currentWidget;
  if (!w || !w.context || !w.sessionContext) return null;
  const s = w.sessionContext;
  return {path: w.context.path, dirty: w.context.model.dirty, ready: w.context.isReady,
          kernel: s.session && s.session.kernel ? s.session.kernel.name : null, status: s.kernelDisplayStatus,
          tabDirty: document.querySelector('.lm-TabBar-tab.lm-mod-current.jp-mod-dirty') !== null};
}"""


def git_changes(paths: list[str]) -> list[str]:
    out = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def jupyterlab(jupyter: Path, workdir: Path):
    """A JupyterLab server on the project root with fresh settings, workspaces and runtime files; yields its URL
    and token."""
    port, token = free_port(), secrets.token_hex(16)
    env = os.environ | {"JUPYTERLAB_SETTINGS_DIR": str(workdir / "settings"),
                        "JUPYTERLAB_WORKSPACES_DIR": str(workdir / "workspaces"),
                        "JUPYTER_RUNTIME_DIR": str(workdir / "runtime"), "PYTHONPATH": str(ROOT)}
    cmd = [str(jupyter), "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1", f"--ServerApp.root_dir={ROOT}",
           f"--IdentityProvider.token={token}", "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers often run as root
        cmd.append("--allow-root")
    log = open(workdir / "jupyterlab.log", "w")
    server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    tail = (workdir / "jupyterlab.log").read_text()[-3000:]
                    raise RuntimeError(f"JupyterLab did not start; the end of its log:\n{tail}")
                time.sleep(1)
        yield url, token
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def wait_for(page, predicate: str, timeout_s: float, what: str):
    """Polls ``predicate`` (JS over :data:`STATE_JS`'s state ``s``) until true; returns the state."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = page.evaluate(STATE_JS)
        if state is not None and page.evaluate(f"s => Boolean({predicate})", state):
            return state
        time.sleep(0.5)
    raise TimeoutError(f"{what}: not reached in {timeout_s:.0f} s (last state {page.evaluate(STATE_JS)})")


def git_diff(paths: list[str]) -> str:
    """What a commit would take of ``paths`` (the content through the git filter, not the files' sizes)."""
    return subprocess.run(["git", "diff", "--stat", "--", *paths], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


def save(page, name: str) -> None:
    """Saves the open notebook as Ctrl+S does (jupytext writes both files of the pair) and waits until it is."""
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    wait_for(page, "!s.dirty", 60, f"{name}: saved")
    time.sleep(1)


def check_notebook(page, url: str, token: str, name: str, settle_s: float) -> list[str]:
    """Opens ``notebooks/<name>.ipynb`` and waits for its kernel: it must not be marked modified; saved as it is,
    ``git status`` must show no change; its parameters cell run and saved again, ``git diff`` must show none (the
    filter strips the execution count; ``git status`` may list the file, whose size changed). Returns the
    problems found (empty: none)."""
    problems, files = [], [f"notebooks/{name}.ipynb", f"notebooks/{name}.py"]
    page.goto(f"{url}/lab/tree/notebooks/{name}.ipynb?token={token}")
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell", timeout=120_000)
    wait_for(page, f"s.path === 'notebooks/{name}.ipynb' && s.ready && s.status === 'idle'", 180,
             f"{name}: kernel idle")
    time.sleep(settle_s)  # let late metadata updates (kernel info, widgets) land before judging
    state = page.evaluate(STATE_JS)
    if state["dirty"] or state["tabDirty"]:
        problems.append(f"opened, it is marked modified (kernel {state['kernel']})")
    save(page, name)
    problems += [f"opened and saved, git status shows {line.strip()}" for line in git_changes(files)]
    page.evaluate("""() => {
      const nb = window.jupyterapp.shell.currentWidget.content;
      nb.activeCellIndex = nb.widgets.findIndex(c => c.model.type === 'code');
      return window.jupyterapp.commands.execute('notebook:run-cell');
    }""")
    wait_for(page, "s.status === 'idle'", 120, f"{name}: parameters cell run")
    if os.environ.get("CHECK_JUPYTERLAB_SHOTS"):
        page.screenshot(path=f"{os.environ['CHECK_JUPYTERLAB_SHOTS']}/{name}.png")
    save(page, name)
    if diff := git_diff(files):
        problems.append(f"run and saved, git diff shows {diff}")
    page.evaluate("() => window.jupyterapp.commands.execute('kernelmenu:shutdown')")
    page.evaluate("() => window.jupyterapp.commands.execute('application:close-all')")
    return problems


def run_checks(names: list[str], args: argparse.Namespace, workdir: Path) -> list[str]:
    """Every notebook of ``names`` checked in one JupyterLab and one browser; the problems found."""
    from playwright.sync_api import sync_playwright  # the check's own dependency, not the project's

    problems = []
    with jupyterlab(args.jupyter, workdir) as (url, token), sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(workdir / "chromium-profile"), executable_path=str(args.chromium), headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 900})
        page = browser.new_page()
        try:
            for name in names:
                try:
                    found = check_notebook(page, url, token, name, args.settle)
                except Exception as e:  # one notebook's failure is reported with the others'
                    found = [f"{type(e).__name__}: {e}"]
                print(f"{name}: " + ("ok" if not found else "; ".join(found)), flush=True)
                problems += found
        finally:
            browser.close()
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="notebook names (default: every notebooks/0*.ipynb)")
    ap.add_argument("--jupyter", type=Path, default=ROOT / ".venv" / "bin" / "jupyter",
                    help="the jupyter command of the project's environment (default: .venv/bin/jupyter)")
    ap.add_argument("--chromium", type=Path, default=Path(shutil.which("chromium") or "/usr/bin/chromium"))
    ap.add_argument("--settle", type=float, default=3.0, help="seconds to wait after the kernel is idle")
    args = ap.parse_args(argv)

    names = args.names or sorted(p.stem for p in (ROOT / "notebooks").glob("0*.ipynb"))
    for tool, hint in ((args.jupyter, "make setup"), (args.chromium, "apt-get install chromium")):
        if not tool.exists():
            sys.exit(f"error: {tool} not found: {hint}")
    if before := git_changes(["notebooks"]):
        sys.exit("error: notebooks/ has uncommitted changes; commit or stash them first:\n" + "\n".join(before))
    problems = []
    try:
        with tempfile.TemporaryDirectory(prefix="check_jupyterlab_") as tmp:
            problems = run_checks(names, args, Path(tmp))
    finally:
        if after := git_changes(["notebooks"]):
            print("restoring what the check changed:", *after, sep="\n  ")
            subprocess.run(["git", "checkout", "--", "notebooks"], cwd=ROOT, check=True)
    print(json.dumps({"notebooks": len(names), "problems": len(problems)}))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
