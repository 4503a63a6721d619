"""What every notebook's setup cell does: work from the project root, pick the progress-bar mode, say which
profile runs, and where its figures and tables go.

Progress bars: ``progress=None`` in a notebook's parameters means "widgets where a person watches": True when the
kernel was started by a Jupyter server (JupyterLab, Notebook: they set ``JPY_SESSION_NAME``), False when it runs
headless (papermill, nbval, a script), so executed notebooks hold no widget state and stderr no widget warnings.
The engine then draws its ``tqdm.auto`` bars as widgets, or none. Used by notebooks 01-06.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from ..training.config import RunConfig
from ..training.runtime import describe_device, resolve_device
from .figures import set_stamp

#: the stamp the demo profile puts on every figure it saves and every table and takeaway it exports
DEMO_STAMP = "DEMO: tiny DETR, synthetic shapes"
DEMO_WARNING = ("DEMO PROFILE: the demo world, a tiny DETR pre-trained on synthetic shapes and fine-tuned on a "
                "synthetic mini-COCO. The numbers below are real measurements of that small detector, not of "
                "DETR-R50 on COCO.")


def project_root(start: str | Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: the working directory) holding ``pyproject.toml`` and
    ``notebooks/``; ``start`` itself when there is none."""
    start = Path(start or Path.cwd()).resolve()
    return next((p for p in (start, *start.parents) if (p / "pyproject.toml").is_file()
                 and (p / "notebooks").is_dir()), start)


def progress_policy(progress: bool | None) -> bool:
    """``progress`` when given; else True only in a kernel started by a Jupyter server (widgets are seen)."""
    return bool(os.environ.get("JPY_SESSION_NAME")) if progress is None else progress


def config_parameters(namespace: Mapping) -> dict:
    """The values of a notebook's ``parameters`` cell that configure its runs, for ``make_config(**...)``: from
    ``namespace`` (the notebook's ``globals()``, right after that cell) every name that is a
    :class:`~detr_nb_utils.training.config.RunConfig` field, and ``profile``; ``progress`` through
    :func:`progress_policy`. The cell's other names (seeds, report folder, resamples) stay the notebook's."""
    names = {f.name for f in fields(RunConfig)}
    values = {k: v for k, v in namespace.items() if k in names}
    values["progress"] = progress_policy(namespace.get("progress"))
    return values


def report_dir_for(cfg: RunConfig, report_dir: str | None) -> Path:
    """Where figures and tables go: ``report_dir`` when given; else ``report/`` for the study and
    ``<out_dir>/report`` for the demo (``make demo`` and nbval alike), so a demo never overwrites the study's
    figures."""
    if report_dir is not None:
        return Path(report_dir)
    return Path("report") if cfg.profile == "study" else Path(cfg.out_dir) / "report"


def carry_nice_to_session() -> None:
    """Give this kernel's whole session the priority of its process (``nice``), where Linux schedules sessions as
    groups (autogroup): Jupyter starts every kernel in a session of its own, whose group keeps priority 0 whatever
    ``nice`` the kernel was started under, so ``nice papermill ...`` (how ``make demo`` runs 02 and 07 beside the
    others) would otherwise lower nothing. The run workers this kernel starts share its session. Nothing to do
    elsewhere, or when not started under ``nice``."""
    niceness = os.nice(0) if hasattr(os, "nice") else 0
    group = Path("/proc/self/autogroup")
    if niceness > 0 and group.is_file():
        with contextlib.suppress(OSError):
            group.write_text(str(min(niceness, 19)))


def setup_notebook(cfg: RunConfig, report_dir: str | None = None) -> tuple[torch.device, Path]:
    """Change to the project root (the config's relative paths start there), set figure defaults, print the
    profile (with a warning on demo data, whose saved figures get a "DEMO" stamp), carry a ``nice`` to the kernel's
    session (:func:`carry_nice_to_session`); return the device and the report folder."""
    carry_nice_to_session()
    os.chdir(project_root())
    plt.rcParams.update({"figure.dpi": 90, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8})
    device = resolve_device(cfg.device)
    print(f"profile {cfg.profile!r}, device {describe_device(device)}, working in {Path.cwd()}")
    set_stamp(DEMO_STAMP if cfg.profile == "demo" else None)
    if cfg.profile == "demo":
        print(DEMO_WARNING)
    return device, report_dir_for(cfg, report_dir)

