"""What TensorBoard logging costs a training step: the engine's epochs with and without the writer.

Runs the demo profile's training epochs (:func:`detr_nb_utils.training.engine.train_one_epoch`, the tiny DETR, 96 px
synthetic images, batch 2) on ``--images`` training images, alternating an epoch without the writer and one with
:class:`detr_nb_utils.training.tensorboard.TensorBoardLog` logging every step (``loss/train_step``), ``--rounds``
times, and reports the mean step of each and their difference with its spread over the rounds. Then, on their
own: the cost of one ``train_step`` call (many calls, microseconds each) and of one ``epoch_end`` (every scalar of
a metrics row and the four-image panel). A row is appended to the "TensorBoard logging" table of
``benchmarks/RESULTS.md``. On a shared machine the step times move with the others' load: the difference between
interleaved epochs, and the per-call cost, are the numbers to read.

    python benchmarks/bench_tensorboard.py --images 40 --rounds 5
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)  # the demo profile's paths are relative to the project root

from detr_nb_utils.training.config import make_config  # noqa: E402
from detr_nb_utils.training.data_setup import build_loader, prepare_data  # noqa: E402
from detr_nb_utils.training.engine import build_model, build_optimizer, train_one_epoch  # noqa: E402
from detr_nb_utils.training.runs import load_run  # noqa: E402
from detr_nb_utils.training.tensorboard import TensorBoardLog  # noqa: E402


def timed_epoch(model, criterion, loader, optimizer, cfg, on_step) -> tuple[float, int]:
    start = time.perf_counter()
    steps = train_one_epoch(model, criterion, loader, optimizer, "cpu", 1, cfg, on_step)["steps"]
    return time.perf_counter() - start, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=40, help="training images per epoch (batch 2)")
    parser.add_argument("--rounds", type=int, default=5, help="pairs of epochs (without, with the writer)")
    parser.add_argument("--calls", type=int, default=20000, help="train_step calls timed on their own")
    parser.add_argument("--run", default="runs/demo/dec6_q100", help="a run folder whose last metrics row epoch_end logs")
    parser.add_argument("--no-results", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = dataclasses.replace(make_config("demo", progress=False, max_train_images=args.images), device="cpu")
    data = prepare_data(cfg)
    model, criterion, _ = build_model(cfg, torch.device("cpu"), data.labels)
    optimizer = build_optimizer(model, cfg)
    loader, val = build_loader(cfg, data, "train", torch.device("cpu")), build_loader(cfg, data, "val", torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        log = TensorBoardLog(tmp, val.dataset, len(loader))
        timed_epoch(model, criterion, loader, optimizer, cfg, None)  # warm-up
        without, with_log = [], []
        for _ in range(args.rounds):
            t, steps = timed_epoch(model, criterion, loader, optimizer, cfg, None)
            without.append(t / steps)
            t, steps = timed_epoch(model, criterion, loader, optimizer, cfg, lambda s, v: log.train_step(1, s, v))
            with_log.append(t / steps)
        start = time.perf_counter()
        for k in range(args.calls):
            log.train_step(2, k + 1, 1.0)
        per_call = (time.perf_counter() - start) / args.calls
        row = load_run(args.run).metrics.reset_index().iloc[-1].to_dict() if Path(args.run).is_dir() else {}
        detections = {"image_id": np.array(val.dataset.ids).repeat(100), "category_id": np.ones(100 * len(val.dataset),
                      np.int64), "score": np.full(100 * len(val.dataset), 0.9, np.float32),
                      "bbox": np.tile([[10, 10, 30, 30]], (100 * len(val.dataset), 1)).astype(np.float32)}
        start = time.perf_counter()
        log.epoch_end(3, row, detections)
        epoch_end = time.perf_counter() - start
        log.close()
    diffs = [b - a for a, b in zip(without, with_log)]
    out = {"step without (ms)": 1e3 * statistics.mean(without), "step with (ms)": 1e3 * statistics.mean(with_log),
           "difference (ms)": 1e3 * statistics.mean(diffs),
           "difference sd (ms)": 1e3 * statistics.stdev(diffs) if len(diffs) > 1 else float("nan"),
           "train_step call (us)": 1e6 * per_call, "epoch_end (s)": epoch_end}
    for k, v in out.items():
        print(f"{k}: {v:.3f}")
    load = os.getloadavg()[0]
    if not args.no_results:
        line = (f"| {dt.date.today()} | {platform.processor() or platform.machine()} | {os.cpu_count()} | "
                f"{torch.__version__} | {args.images // 2} x {args.rounds} | {out['step without (ms)']:.0f} | "
                f"{out['step with (ms)']:.0f} | {out['difference (ms)']:+.1f} (sd {out['difference sd (ms)']:.1f}) | "
                f"{out['train_step call (us)']:.0f} | {out['epoch_end (s)']:.2f} | {load:.1f} |\n")
        append_row(ROOT / "benchmarks" / "RESULTS.md", line)


def append_row(results: Path, line: str) -> None:
    """``line`` at the end of the "TensorBoard logging" table of ``results`` (the section made when missing)."""
    text = results.read_text()
    header = "## TensorBoard logging"
    if header not in text:
        text += (f"\n{header}\n\n`python benchmarks/bench_tensorboard.py`: demo training steps (tiny DETR, batch 2, "
                 "CPU) without and with the writer logging every step, interleaved; one `train_step` call and one "
                 "`epoch_end` (every scalar and the four-image panel) timed on their own.\n\n"
                 "| date | cpu | cores | torch | steps x rounds | step without (ms) | step with (ms) | "
                 "difference (ms) | train_step call (us) | epoch_end (s) | load (1 min) |\n"
                 "|---|---|---|---|---|---|---|---|---|---|---|\n")
    head, tail = text.split(header, 1)
    lines = tail.splitlines(keepends=True)
    first = next(i for i, t in enumerate(lines) if t.startswith("|"))
    last = first
    while last + 1 < len(lines) and lines[last + 1].startswith("|"):
        last += 1
    results.write_text(head + header + "".join(lines[:last + 1]) + line + "".join(lines[last + 1:]))


if __name__ == "__main__":
    main()
