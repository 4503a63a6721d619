"""Independent runs side by side: a notebook's seeds and recipe arms, one process each, so that a 2-core CPU or one
GPU that a single batch-2 run leaves mostly idle does several at once.

:func:`run_all` trains a list of configurations and returns their run folders read back. With ``jobs`` 1 they run one
after the other in this process; with more, each in its own ``python -m detr_nb_utils.training`` process, at most
``jobs`` at a time, their epoch lines printed here under the run's name. A run computes with ``cfg.threads`` torch
threads in either case, so the metrics are bit-identical whichever way it ran (on the CPU; on a GPU as far as its
kernels are deterministic). :func:`default_jobs` picks how many: on the CPU as many as the cores hold runs of
``threads`` threads, one when the threads are not fixed; on a GPU one unless asked (``benchmarks/gpu_session.sh``
measures several sharing it). :func:`plan_runs` says, before any training, which runs a notebook will make and how
long they should take, from a few steps timed on this machine. :func:`wait_for_runs` lets a notebook that compares
with another notebook's runs wait for them while that notebook trains them (``make demo`` runs 03, 04 and 05 side by
side), and :func:`core_slot` keeps the runs of every notebook training at once to the cores. Used by notebooks 03-05
and 07.
"""
from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from . import runs
from .config import RunConfig
from .runtime import resolve_device

ENV_THREADS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def default_jobs(cfg: RunConfig, cores: int | None = None) -> int:
    """Runs at a time: on the CPU ``cores // cfg.threads`` (at least 1; 1 when ``threads`` is None, torch then
    using every core for one run), on CUDA 1."""
    if resolve_device(cfg.device).type != "cpu" or cfg.threads is None:
        return 1
    return max(1, (cores or os.cpu_count() or 1) // cfg.threads)


def finished_epochs(cfg: RunConfig) -> int | None:
    """The last finished epoch of ``cfg``'s run folder (None: none yet). Raises :class:`.runs.RunConfigMismatch`
    when the folder holds a run of another configuration, as resuming it would."""
    metrics, config = cfg.run_dir / runs.METRICS, cfg.run_dir / runs.CONFIG
    if not metrics.is_file() or not config.is_file():
        return None
    diff = runs.config_diff(RunConfig.from_json(config), cfg)
    if diff:
        rows = "; ".join(f"{k}: {a!r} in the folder, {b!r} now" for k, a, b in diff)
        raise runs.RunConfigMismatch(f"{cfg.run_dir} holds a run with a different configuration ({rows}). Choose a "
                                     f"new run_name, or delete {cfg.run_dir} to start over.")
    return _last_epoch(metrics)


def _last_epoch(metrics: Path) -> int | None:
    """The epoch of the last row of a run's ``metrics.jsonl`` (None: no row yet)."""
    rows = [line for line in metrics.read_text().splitlines() if line.strip()]
    return int(json.loads(rows[-1])["epoch"]) if rows else None


def run_finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run that has finished every epoch its own ``config.json`` asks for (False while
    its files are missing or being written)."""
    config, metrics = Path(run_dir) / runs.CONFIG, Path(run_dir) / runs.METRICS
    try:
        last = _last_epoch(metrics)
        return last is not None and last >= RunConfig.from_json(config).epochs
    except (OSError, ValueError, KeyError, TypeError):  # not there yet, or a line half written
        return False


def _last_change(run_dirs: Sequence[Path]) -> float:
    """The newest modification time among the run folders' metrics (0 when none exists yet)."""
    times = []
    for d in run_dirs:
        with contextlib.suppress(OSError):  # not there (yet)
            times.append((Path(d) / runs.METRICS).stat().st_mtime)
    return max(times, default=0.0)


def wait_for_runs(run_dirs: Sequence[Path], timeout_s: float, poll_s: float = 2.0,
                  stall_s: float = 300.0) -> tuple[list[Path], float]:
    """Wait, at most ``timeout_s`` seconds, until every folder of ``run_dirs`` holds a finished run
    (:func:`run_finished`), as when another notebook trains them at the same time; stop early when none of them
    has finished an epoch for ``stall_s`` seconds (whatever was to train them has stopped). Returns the folders
    still unfinished (empty when all finished) and the seconds waited; ``timeout_s`` 0 only checks."""
    start = time.monotonic()
    left = [Path(d) for d in run_dirs if not run_finished(d)]
    progress, seen = start, _last_change(run_dirs)
    while left and time.monotonic() - start < timeout_s and time.monotonic() - progress < stall_s:
        time.sleep(min(poll_s, max(0.0, timeout_s - (time.monotonic() - start))))
        left = [d for d in left if not run_finished(d)]
        if (latest := _last_change(run_dirs)) != seen:
            progress, seen = time.monotonic(), latest
    return left, time.monotonic() - start


#: the folder under ``out_dir`` holding :func:`core_slot`'s lock files
SLOTS = ".slots"


@contextlib.contextmanager
def core_slot(cfg: RunConfig, cores: int | None = None, poll_s: float = 0.1):
    """Hold one of the machine's run slots while a run of ``cfg`` trains: :func:`default_jobs` of them, lock files in
    ``<out_dir>/.slots/`` shared by every process writing there. Notebooks that train side by side (``make demo``
    starts 03, 04, 05 and 07 together) then never train more runs at once than the cores hold; ten processes on
    two cores cost 10-30% more CPU time than the same work two at a time (benchmarks/RESULTS.md, "make demo in
    under 5 minutes"). A process under ``nice`` takes no slot: it runs on what the others leave idle (``make demo``
    runs 02 and 07 so). No slot on a GPU, with ``threads`` not fixed, or without POSIX ``flock``."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        fcntl = None
    if fcntl is None or cfg.threads is None or os.nice(0) > 0 or resolve_device(cfg.device).type != "cpu":
        yield
        return
    folder = Path(cfg.out_dir) / SLOTS
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        for slot in range(default_jobs(cfg, cores)):
            with open(folder / str(slot), "a") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:  # held by another run
                    continue
                try:
                    yield
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)
                return
        time.sleep(poll_s)


#: how a worker tells its parent that a run starts, ends or failed (a line of its own on stdout)
MARK = "\x1eside_by_side "


def _worker_main() -> None:
    """A worker process: one run per config read from stdin (JSON, one a line), one after the other in this process,
    each announced on stdout by :data:`MARK` lines; a failed run's traceback is printed and the next run starts."""
    import traceback

    from .engine import run_experiment

    for line in sys.stdin:
        cfg = RunConfig.from_dict(json.loads(line))
        print(f"{MARK}start {cfg.run_dir.name}", flush=True)
        try:
            with core_slot(cfg):
                run_experiment(cfg)
        except Exception:  # noqa: BLE001 (reported to the parent, which names the run)
            traceback.print_exc(file=sys.stdout)
            print(f"{MARK}failed {cfg.run_dir.name}", flush=True)
        else:
            print(f"{MARK}done {cfg.run_dir.name}", flush=True)


def _read(worker: int, pipe, events: queue.Queue) -> None:
    """A worker's lines: its marks as events (with the run's last lines), every other line printed under the run
    it belongs to."""
    name, lines = "?", []
    for line in iter(pipe.readline, ""):
        line = line.rstrip("\n")
        if line.startswith(MARK):
            status, name = line[len(MARK):].split(" ", 1)
            events.put((worker, status, lines[-8:]))
            lines = [] if status == "start" else lines
            continue
        lines.append(line)
        tqdm.write(f"[{name}] {line}")
    events.put((worker, "exit", lines[-8:]))


def _run_processes(configs: Sequence[RunConfig], jobs: int) -> None:
    """The configs in ``jobs`` worker processes, each taking the next run when it finishes one (a process start per
    worker, not per run); raises naming every run that failed, with its last lines."""
    threads = {k: str(configs[0].threads) for k in ENV_THREADS} if configs[0].threads else {}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **threads}
    pending = [replace(c, progress=False) for c in configs]  # bars from several processes would interleave
    events: queue.Queue = queue.Queue()
    workers, current, failed = [], {}, []
    for w in range(min(jobs, len(pending))):
        proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env, cwd=Path.cwd())
        threading.Thread(target=_read, args=(w, proc.stdout, events), daemon=True).start()
        workers.append(proc)

    def feed(w: int) -> None:
        if pending:
            current[w] = pending.pop(0)
            workers[w].stdin.write(json.dumps(current[w].to_dict()) + "\n")
            workers[w].stdin.flush()
        else:
            current.pop(w, None)
            workers[w].stdin.close()

    for w in range(len(workers)):
        feed(w)
    alive = len(workers)
    while alive:
        w, status, last = events.get()
        if status in ("done", "failed"):
            if status == "failed":
                failed.append(f"{current[w].run_dir}:\n    " + "\n    ".join(last))
            feed(w)
        elif status == "exit":
            alive -= 1
            if w in current:  # the worker died during a run
                failed.append(f"{current[w].run_dir} (its process ended, exit status {workers[w].wait()}):\n    "
                              + "\n    ".join(last))
                current.pop(w)
                failed += [f"{c.run_dir} (not started)" for c in pending]
                pending.clear()
    for proc in workers:
        proc.wait()
    if failed:
        raise RuntimeError("runs side by side failed; their folders keep every finished epoch, so running the cell "
                           "again resumes them:\n  " + "\n  ".join(failed))


def run_all(configs: Sequence[RunConfig], jobs: int | None = None) -> dict[str, runs.RunRecord]:
    """Every run of ``configs`` (finished ones only read back), ``jobs`` at a time (None: :func:`default_jobs` of the
    first); returns ``{run folder name: RunRecord}`` in the order given. Runs one after the other in this process
    when ``jobs`` is 1 or a single run is left."""
    from .engine import run_experiment  # the engine imports torch's heavier parts; a notebook has them already

    configs = list(configs)
    names = [c.run_dir.name for c in configs]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"run_all: two configurations share a run folder: {twice}")
    todo = [c for c in configs if (finished_epochs(c) or 0) < c.epochs or finished_epochs(c) is None]
    jobs = jobs or (default_jobs(configs[0]) if configs else 1)
    if jobs > 1 and len(todo) > 1:
        _run_processes(todo, jobs)
    else:
        for cfg in todo:
            with core_slot(cfg):
                run_experiment(cfg)
    return {c.run_dir.name: runs.load_run(c.run_dir) for c in configs}


def probe_speed(cfg: RunConfig, train_steps: int = 4, eval_images: int = 16) -> dict[str, float]:
    """Seconds per training step and per validation image (forward, losses and COCOeval), timed on this machine with
    ``cfg``'s model, data and threads: one warm-up step, then ``train_steps`` steps of a throwaway copy of the
    model, and an evaluation of the first ``eval_images`` validation images (COCOeval's fixed cost spread over few
    images: an upper estimate). Nothing is written. Also ``steps_per_epoch`` and ``val_images``."""
    from torch.utils.data import DataLoader, Subset

    from ..data.coco import collate_fn
    from .data_setup import build_loader, prepare_data
    from .engine import build_model, build_optimizer, train_one_epoch
    from .evaluation import evaluate
    from .runtime import torch_threads

    device, quiet = resolve_device(cfg.device), replace(cfg, progress=False)
    with torch_threads(cfg.threads):
        data = prepare_data(cfg)
        model, criterion, _ = build_model(cfg, device, data.labels)
        optimizer = build_optimizer(model, cfg)
        train, val = (build_loader(cfg, data, split, device) for split in ("train", "val"))
        batches = [b for _, b in zip(range(train_steps + 1), train)]
        train_one_epoch(model, criterion, batches[:1], optimizer, device, 0, quiet)  # allocations, first calls
        start = time.perf_counter()
        train_one_epoch(model, criterion, batches[1:], optimizer, device, 0, quiet)
        step = (time.perf_counter() - start) / max(1, len(batches) - 1)
        subset = Subset(val.dataset, range(min(eval_images, len(val.dataset))))
        start = time.perf_counter()
        evaluate(model, criterion, DataLoader(subset, batch_size=cfg.eval_batch_size, collate_fn=collate_fn),
                 val.dataset.coco, device, labels=val.dataset.labels)
        image = (time.perf_counter() - start) / len(subset)
    return {"step_s": step, "image_s": image, "steps_per_epoch": len(train), "val_images": len(val.dataset)}


def plan_runs(configs: Sequence[RunConfig], jobs: int | None = None, probe: bool = True) -> pd.DataFrame:
    """The runs a notebook will make, before it makes them: per run folder its seed and recipe, what is left
    (``to train``, ``resume after epoch N``, ``finished``), and the minutes it should take, from
    :func:`probe_speed` on the first run left (every run of a notebook has the same size: its variants differ
    little in cost). ``attrs``: ``jobs`` (runs at a time) and ``minutes`` (the whole plan's wall time,
    the runs spread over the jobs). Print it with :func:`plan_text`."""
    configs = list(configs)
    done = {c.run_dir.name: finished_epochs(c) for c in configs}
    todo = [c for c in configs if done[c.run_dir.name] is None or done[c.run_dir.name] < c.epochs]
    jobs = jobs or (default_jobs(configs[0]) if configs else 1)
    speed = probe_speed(todo[0]) if todo and probe else None
    rows = {}
    for c in configs:
        last = done[c.run_dir.name]
        state = "to train" if last is None else "finished" if last >= c.epochs else f"resume after epoch {last}"
        epochs_left = c.epochs - (last or 0) if state != "finished" else 0
        evals = (epochs_left + (last is None)) if state != "finished" else 0  # epoch 0 too when new (shared)
        minutes = (epochs_left * speed["steps_per_epoch"] * speed["step_s"] + evals * speed["val_images"]
                   * speed["image_s"]) / 60 if speed and state != "finished" else 0.0
        rows[c.run_dir.name] = {"seed": c.seed, "recipe": c.recipe, "epochs": c.epochs, "state": state,
                                "minutes": minutes}
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("run")
    parallel = max(1, min(jobs, len(todo)))
    table.attrs.update(jobs=parallel, minutes=float(table["minutes"].sum()) / parallel if len(table) else 0.0,
                       speed=speed, device=str(resolve_device(configs[0].device)) if configs else "")
    return table


def plan_text(plan: pd.DataFrame) -> str:
    """One sentence on :func:`plan_runs`: how many runs, how many at once, and the estimated wall time."""
    left = plan[plan["state"] != "finished"] if len(plan) else plan
    if left.empty:
        return f"All {len(plan)} runs are finished: they are read back, not trained again."
    speed = plan.attrs["speed"]
    timed = (f"timed on this machine ({plan.attrs['device']}): {speed['step_s']:.3f} s per training step, "
             f"{speed['image_s']:.3f} s per validation image evaluated" if speed else "not timed")
    return (f"{len(left)} of {len(plan)} runs to train, {plan.attrs['jobs']} at a time: about "
            f"{plan.attrs['minutes']:.1f} minutes ({timed}; an estimate, the machine's other work not counted).")


if __name__ == "__main__":
    _worker_main()
