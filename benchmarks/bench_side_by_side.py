"""Seeds side by side against one after the other: the same runs (one variant, ``--seeds`` training seeds) made
sequentially in this process and then concurrently, one process each
(:func:`detr_nb_utils.training.side_by_side.run_all`), timed (wall and CPU seconds), and their metrics compared to the
bit (every metrics row but the timings, and every saved detection). On a GPU a second sequential pass shows how far
the device's own kernels repeat (cuDNN and atomics need not be deterministic), the floor for "identical".

    python benchmarks/bench_side_by_side.py                     # the demo's 03: tiny DETR, 3 seeds, CPU
    python benchmarks/bench_side_by_side.py --device cuda --model resnet50 --size 800 --images 96 --threads 4

``--model resnet50`` trains the published architecture from random weights (no checkpoint on an offline machine) on
synthetic images of ``--size``: the study's load per step, not its numbers. Prints one JSON summary, writes it to
``$OUT`` (or ``benchmarks/``) and appends a row to the "Runs side by side" table of ``benchmarks/RESULTS.md``
(``--no-results``: not).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from detr_nb_utils.data.synthetic import make_synthetic_coco  # noqa: E402
from detr_nb_utils.training import runs  # noqa: E402
from detr_nb_utils.training.config import make_config, seed_configs  # noqa: E402
from detr_nb_utils.training.side_by_side import run_all  # noqa: E402

TIMES = ("train_time_s", "eval_time_s", "wall_time_s")


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(configs, jobs: int) -> tuple[dict, float, float]:
    wall, cpu = time.perf_counter(), _cpu()
    records = run_all(configs, jobs)
    return records, time.perf_counter() - wall, _cpu() - cpu


def _differences(a: dict, b: dict) -> dict:
    """Rows, values and detections that differ between two sets of the same runs, and the largest |difference|."""
    rows = values = dets = 0
    largest = 0.0
    for name in a:
        ra = [json.loads(x) for x in (a[name].run_dir / runs.METRICS).read_text().splitlines()]
        rb = [json.loads(x) for x in (b[name].run_dir / runs.METRICS).read_text().splitlines()]
        for x, y in zip(ra, rb):
            diff = [k for k in x if k not in TIMES and x[k] != y.get(k)]
            rows, values = rows + bool(diff), values + len(diff)
            largest = max([largest, *(abs(x[k] - y[k]) for k in diff if isinstance(x[k], float)
                                      and isinstance(y.get(k), float))])
        for epoch in runs.detection_epochs(a[name].run_dir):
            da, db = runs.load_detections(a[name].run_dir, epoch), runs.load_detections(b[name].run_dir, epoch)
            dets += any(da[k].shape != db[k].shape or (da[k] != db[k]).any() for k in da)
    return {"rows_differing": rows, "values_differing": values, "detection_files_differing": dets,
            "largest_abs_difference": largest, "identical": rows == values == dets == 0}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", choices=("tiny", "resnet50"), default="tiny")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--images", type=int, default=None, help="synthetic images (default: the demo's split)")
    p.add_argument("--size", type=int, default=96, help="shorter image side")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--jobs", type=int, default=None, help="runs at a time side by side (default: --seeds)")
    p.add_argument("--no-results", action="store_true")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="side_by_side_bench_"))
    common = dict(device=args.device, threads=args.threads, epochs=args.epochs, progress=False, num_workers=0)
    if args.model == "tiny" and args.images is None:  # the demo's own data and checkpoint: its 03, exactly
        cfg = make_config("demo", out_dir=str(tmp / "one_by_one"), **common)
    else:
        n = args.images or 64
        make_synthetic_coco(tmp / "coco", n_images=n, seed=0, image_size=(args.size, round(args.size * 4 / 3)))
        size = dict(min_size=args.size, max_size=round(args.size * 5 / 3), train_scales=(args.size,))
        cfg = make_config("demo" if args.model == "tiny" else "study", data_root=str(tmp / "coco"),
                          split_dir=str(tmp / "split"), n_train=n * 4 // 5, n_val=n - n * 4 // 5, random_crop=False,
                          out_dir=str(tmp / "one_by_one"), **size, **common)
        if args.model == "resnet50":
            cfg = dataclasses.replace(cfg, checkpoint=None)  # random weights: no checkpoint offline
    configs = seed_configs(cfg, args.seeds)
    seq, seq_wall, seq_cpu = _timed(configs, 1)
    jobs = args.jobs or args.seeds
    par_configs = seed_configs(dataclasses.replace(cfg, out_dir=str(tmp / "side_by_side")), args.seeds)
    par, par_wall, par_cpu = _timed(par_configs, jobs)
    out = {"date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": platform.processor() or platform.machine(),
           "cores": os.cpu_count(), "device": args.device, "model": args.model, "seeds": args.seeds,
           "epochs": args.epochs, "size": args.size, "threads_per_run": args.threads, "jobs": jobs,
           "one_by_one_wall_s": round(seq_wall, 1), "one_by_one_cpu_s": round(seq_cpu, 1),
           "side_by_side_wall_s": round(par_wall, 1), "side_by_side_cpu_s": round(par_cpu, 1),
           "speedup": round(seq_wall / par_wall, 2), "versus_one_by_one": _differences(seq, par)}
    if args.device.startswith("cuda"):  # the device's own repeatability: a second pass one after the other
        again = seed_configs(dataclasses.replace(cfg, out_dir=str(tmp / "again")), args.seeds)
        out["repeat_one_by_one"] = _differences(seq, _timed(again, 1)[0])
        import torch
        out["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(out, indent=2))
    where = Path(os.environ.get("OUT") or HERE)
    (where / f"side_by_side-{args.device.replace(':', '')}-{args.model}.json").write_text(json.dumps(out, indent=2))
    if not args.no_results:
        _append_row(out)
    return out


def _append_row(out: dict) -> None:
    """A row of the "Runs side by side" table of RESULTS.md (the table is made when missing)."""
    path = HERE / "RESULTS.md"
    text = path.read_text()
    head = ("\n## Runs side by side\n\n`benchmarks/bench_side_by_side.py`: the same seeds one after the other in one "
            "process, then side by side, one process each; CPU seconds of the whole process tree.\n\n"
            "| date | machine | cores | device | model | seeds x epochs | threads per run | jobs | one by one wall s "
            "| CPU s | side by side wall s | CPU s | speed-up | metrics identical |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    if "## Runs side by side" not in text:
        text = text.rstrip("\n") + "\n" + head
    same = out["versus_one_by_one"]["identical"]
    row = (f"| {out['date']} | {out.get('gpu', out['machine'])} | {out['cores']} | {out['device']} | {out['model']} | "
           f"{out['seeds']} x {out['epochs']} | {out['threads_per_run']} | {out['jobs']} | {out['one_by_one_wall_s']} | "
           f"{out['one_by_one_cpu_s']} | {out['side_by_side_wall_s']} | {out['side_by_side_cpu_s']} | "
           f"{out['speedup']} | {'yes' if same else 'no: ' + str(out['versus_one_by_one'])} |\n")
    section = text.index("## Runs side by side")
    end = text.find("\n## ", section + 5)
    end = len(text) if end < 0 else end
    body = text[:end].rstrip("\n") + "\n" + row
    path.write_text(body + text[end:])


if __name__ == "__main__":
    main()
