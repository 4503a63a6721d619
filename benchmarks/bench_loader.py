"""Data loader throughput: images/s decoded + transformed on the 206 real COCO sample images.

For each size S (the largest train scale = the val shorter side; S=800 is DETR's exact recipe, other sizes scale
every length by S/800), each split and each worker count, one full pass of a DataLoader (batch 2, collate_fn).
Prints a table and appends its rows to ``benchmarks/RESULTS.md`` under "## Data loader throughput".

    .venv/bin/python benchmarks/bench_loader.py --sizes 800 256 --workers 0 2 [--threads 1]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from detr_nb_utils.data.coco import build_dataset, collate_fn
from detr_nb_utils.data.transforms import TRAIN_SCALES

REPO = Path(__file__).resolve().parent.parent
SAMPLE = (REPO / "../shared/coco_val2017_sample").resolve()
HEADING = "## Data loader throughput"
COLUMNS = ["date", "cpu", "cores", "torch", "torch threads", "split", "size", "workers", "images", "seconds",
           "images/s", "load (1 min)"]


def transform_kwargs(size: int) -> dict:
    """DETR's transform lengths scaled by size/800 (pixels)."""
    def scale(v: int) -> int:
        return max(1, round(v * size / 800))
    return dict(scales=tuple(scale(s) for s in TRAIN_SCALES), max_size=scale(1333), val_size=size,
                crop_resize=tuple(scale(s) for s in (400, 500, 600)), crop_size=(scale(384), scale(600)))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(split: str, size: int, workers: int, max_images: int | None) -> tuple[int, float]:
    """(images, seconds) for one pass, worker start-up included."""
    ds = build_dataset(SAMPLE / "annotations" / "instances_val2017_sample.json", SAMPLE / "images", split,
                       max_images=max_images, **transform_kwargs(size))
    loader = DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate_fn)
    torch.manual_seed(0)
    start = time.perf_counter()
    n = sum(images.shape[0] for images, _, _ in loader)
    return n, time.perf_counter() - start


def append_rows(path: Path, rows: list[list[str]]) -> None:
    """Add table rows at the end of this file's section of ``path``, creating file/section if absent."""
    lines = [f"| {' | '.join(r)} |" for r in rows]
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if HEADING not in text.splitlines():
        header = [f"| {' | '.join(COLUMNS)} |", "|" + "---|" * len(COLUMNS)]
        note = ("Images/s decoded + transformed on the 206 real COCO val2017 sample images "
                "(`benchmarks/bench_loader.py`); size = largest train scale = val shorter side; batch 2; "
                "worker start-up included; load = the machine's 1-minute load average just before the run.")
        path.write_text(text.rstrip("\n") + f"\n\n{HEADING}\n\n{note}\n\n" + "\n".join(header + lines) + "\n")
        return
    all_lines = text.splitlines()
    start = all_lines.index(HEADING)
    end = next((i for i in range(start + 1, len(all_lines)) if all_lines[i].startswith("## ")), len(all_lines))
    while end > start + 1 and not all_lines[end - 1].strip():
        end -= 1  # insert right after the section's last non-blank line
    path.write_text("\n".join(all_lines[:end] + lines + all_lines[end:]) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[800, 256])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    parser.add_argument("--max-images", type=int, default=None, help="fewer images for a quick look")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads in the main process (workers always use 1); default: torch's")
    parser.add_argument("--no-append", action="store_true", help="print only")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if not SAMPLE.is_dir():
        raise SystemExit(f"needs {SAMPLE} (the 206-image COCO sample)")
    machine = [datetime.date.today().isoformat(), cpu_model(), str(os.cpu_count()), torch.__version__,
               str(torch.get_num_threads())]
    rows = []
    print(f"{'split':>5} {'size':>5} {'workers':>7} {'images':>6} {'seconds':>8} {'images/s':>9} {'load':>5}")
    for size in args.sizes:
        for split in args.splits:
            for workers in args.workers:
                load = os.getloadavg()[0]  # other jobs on a shared machine slow every number down
                n, seconds = measure(split, size, workers, args.max_images)
                print(f"{split:>5} {size:>5} {workers:>7} {n:>6} {seconds:>8.2f} {n / seconds:>9.1f} {load:>5.1f}",
                      flush=True)
                rows.append(machine + [split, str(size), str(workers), str(n), f"{seconds:.2f}", f"{n / seconds:.1f}",
                                       f"{load:.1f}"])
    if not args.no_append:
        append_rows(args.results, rows)
        print(f"appended {len(rows)} rows to {args.results}")


if __name__ == "__main__":
    main()
