"""The study's GPU-only code paths, each taken once through the project's own functions, with a verdict per check.

On a GPU (``bash benchmarks/gpu_session.sh`` runs it): the study profile's model (DETR-R50 from random weights, no
download) at the study's image sizes on the 24 real COCO images of ``tests/data/coco_sample``, one epoch of 8
training images and an evaluation of 4, through ``run_experiment``, then two such runs at once on the same GPU in
two processes. On the CPU (``--device cpu --small``, as ``tests/test_gpu_path.py`` runs it): the same steps with
the demo's tiny backbone at 96 px, so the script is known to work before a GPU session spends minutes on it.

    python benchmarks/gpu_path.py --device cuda --out /tmp/gpu_path        # on the GPU machine
    python benchmarks/gpu_path.py --device cpu --small --out /tmp/gpu_path

What it checks (``gpu_path.json`` in ``--out`` holds every check, its verdict and what it saw):

- ``device``: ``resolve_device("auto")`` picks the GPU when there is one, and a run's config ``device`` reaches
  its run folder (``environment.jsonl``: device, GPU name and memory);
- ``pinned_loader``: ``build_loader`` pins memory exactly on CUDA, and a batch it yields there is pinned (the
  engine's ``.to(device, non_blocking=True)`` copies then overlap with compute);
- ``run``: a whole run (epoch 0 evaluated, one epoch trained and evaluated) finishes with finite losses, and its
  folder says where it ran;
- ``peak_memory``: every metrics row of a CUDA run records ``peak_memory_mb``, above 0 and below the GPU's memory
  (none on the CPU);
- ``tf32``: in an fp32 run, TF32 is off for matrix products and convolutions (PyTorch turns it on for cuDNN
  convolutions by default), as read after the run and as recorded in ``environment.jsonl`` where the run records
  the flags; not applicable on the CPU;
- ``side_by_side``: two runs started at once on the same device, in two processes, both finish, each with its own
  run folder and, on CUDA, its own peak memory; their wall times against the run alone are reported.

Exit status 1 when an applicable check fails. Needs the package's dependencies (on the device machine:
pycocotools, which gpu_session.sh installs from a carried wheel).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detr_nb_utils.training import data_setup, engine, runs, runtime  # noqa: E402
from detr_nb_utils.training.config import RunConfig, make_config  # noqa: E402

SAMPLE = ROOT / "tests" / "data" / "coco_sample"
SMALL = dict(backbone="tiny", enc_layers=1, dec_layers=2, hidden_dim=64, nheads=4, dim_feedforward=128,
             num_queries=10, min_size=96, max_size=160, train_scales=(96,), random_crop=False)


def config(out: Path, device: str, small: bool, seed: int = 42, name: str = "alone") -> RunConfig:
    """The study profile on the real COCO sample: 8 training and 4 validation images (small: 4 and 2), one epoch,
    random weights."""
    n_train, n_val = (4, 2) if small else (8, 4)
    cfg = make_config("study", image_dir=str(SAMPLE / "images"),
                      annotation_file=str(SAMPLE / "annotations" / "instances_val2017_sample.json"),
                      split_dir=str(out / "split"), n_train=n_train, n_val=n_val, epochs=1, device=device, seed=seed,
                      progress=False, out_dir=str(out / "runs"), run_name=name)
    cfg = dataclasses.replace(cfg, checkpoint=None)
    return dataclasses.replace(cfg, num_workers=0, **SMALL) if small else cfg


def _check(name: str, ok: bool | None, **seen) -> dict:
    """``ok`` None: not applicable on this device."""
    return {"check": name, "ok": ok, **seen}


def check_device(device: torch.device) -> dict:
    auto = runtime.resolve_device("auto")
    return _check("device", auto.type == ("cuda" if torch.cuda.is_available() else "cpu") and
                  runtime.resolve_device(str(device)).type == device.type, auto=str(auto), asked=str(device),
                  cuda_devices=torch.cuda.device_count(), torch=torch.__version__, cuda=torch.version.cuda,
                  study_workers=make_config("study", device=str(device)).num_workers)


def check_pinned_loader(cfg: RunConfig, device: torch.device) -> dict:
    data = data_setup.prepare_data(cfg)
    loader = data_setup.build_loader(cfg, data, "train", device)
    cuda = device.type == "cuda"
    seen = {"pin_memory": loader.pin_memory, "num_workers": loader.num_workers}
    if cuda:
        images, mask, targets = next(iter(loader))
        seen |= {"batch_pinned": images.is_pinned() and mask.is_pinned() and targets[0]["boxes"].is_pinned()}
        moved = images.to(device, non_blocking=True)
        torch.cuda.synchronize(device)
        seen["copied_exactly"] = bool(torch.equal(moved.cpu(), images))
        return _check("pinned_loader", loader.pin_memory and seen["batch_pinned"] and seen["copied_exactly"], **seen)
    return _check("pinned_loader", not loader.pin_memory, **seen)


def _tf32_flags() -> dict:
    return {"matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


def check_run(cfg: RunConfig, device: torch.device) -> tuple[list[dict], float]:
    """``run``, ``peak_memory`` and ``tf32`` from one run in this process; its wall time."""
    start = time.perf_counter()
    record = engine.run_experiment(cfg)
    wall = time.perf_counter() - start
    rows = record.metrics
    env = record.environment[-1] if record.environment else {}
    finite = all(math.isfinite(v) for v in rows["val_loss_total"]) and math.isfinite(rows.loc[1, "train_loss"])
    run = _check("run", record.complete and finite and env.get("device", "").split(":")[0] == device.type,
                 wall_s=round(wall, 1), epochs=list(rows.index), val_loss_total=list(rows["val_loss_total"]),
                 environment={k: env.get(k) for k in ("device", "gpu", "gpu_memory_mb", "torch", "cuda")},
                 precision=list(rows[runs.PRECISION_FIELD]))
    field = runtime.PEAK_MEMORY_FIELD
    peaks = list(rows[field]) if field in rows else []
    if device.type == "cuda":
        total = env.get("gpu_memory_mb") or torch.cuda.get_device_properties(device).total_memory / 2**20
        memory = _check("peak_memory", len(peaks) == len(rows) and all(0 < p < total for p in peaks),
                        peak_memory_mb=peaks, gpu_memory_mb=total)
    else:
        memory = _check("peak_memory", None if not peaks else False, peak_memory_mb=peaks)
    recorded = {k: v for k, v in env.items() if "tf32" in k.lower()}
    flags = _tf32_flags()
    tf32_off = not flags["matmul_allow_tf32"] and not flags["cudnn_allow_tf32"] and \
        not any(bool(v) for v in recorded.values() if isinstance(v, bool))
    tf32 = _check("tf32", (tf32_off and cfg.precision == "fp32") if device.type == "cuda" else None,
                  after_run=flags, recorded_in_environment=recorded or "nothing recorded")
    return [run, memory, tf32], wall


def check_side_by_side(out: Path, device: str, small: bool, alone_s: float, n: int = 2) -> dict:
    """``n`` runs started at once on ``device``, each in its own process and run folder."""
    procs = []
    start = time.perf_counter()
    for k in range(n):
        procs.append(subprocess.Popen([sys.executable, __file__, "--one-run", "--device", device, "--out", str(out),
                                       "--seed", str(43 + k), *(["--small"] if small else [])],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=1200)[0] for p in procs]
    wall = time.perf_counter() - start
    codes = [p.returncode for p in procs]
    records = []
    for k, code in enumerate(codes):
        run_dir = out / "runs" / f"side{k}"
        records.append(runs.load_run(run_dir) if code == 0 and (run_dir / runs.METRICS).is_file() else None)
    field = runtime.PEAK_MEMORY_FIELD
    peaks = [list(r.metrics[field]) if r is not None and field in r.metrics else None for r in records]
    ok = all(c == 0 for c in codes) and all(r is not None and r.complete for r in records)
    if device.startswith("cuda"):
        ok = ok and all(p for p in peaks)
    return _check("side_by_side", ok, runs=n, exit_codes=codes, wall_s=round(wall, 1), alone_s=round(alone_s, 1),
                  slowdown=round(wall / alone_s, 2) if alone_s else None, peak_memory_mb=peaks,
                  failed_output=[o[-2000:] for o, c in zip(outputs, codes) if c != 0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default: cuda)")
    parser.add_argument("--small", action="store_true", help="the tiny backbone at 96 px (for the CPU)")
    parser.add_argument("--out", type=Path, required=True, help="a folder for the split, the run folders and "
                                                                 "gpu_path.json (emptied of earlier runs first)")
    parser.add_argument("--one-run", action="store_true", help=argparse.SUPPRESS)  # a side-by-side run's process
    parser.add_argument("--seed", type=int, default=42, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one_run:
        engine.run_experiment(config(args.out, args.device, args.small, args.seed, f"side{args.seed - 43}"))
        return 0
    device = runtime.resolve_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    for old in (args.out / "runs").glob("*"):
        if old.is_dir() and (old / runs.CONFIG).is_file():
            shutil.rmtree(old)
    cfg = config(args.out, str(device), args.small)
    checks = [check_device(device), check_pinned_loader(cfg, device)]
    run_checks, alone = check_run(cfg, device)
    checks += run_checks
    checks.append(check_side_by_side(args.out, str(device), args.small, alone))
    (args.out / "gpu_path.json").write_text(json.dumps(checks, indent=1, default=str) + "\n")
    for c in checks:
        verdict = {True: "ok", False: "FAILED", None: "n/a"}[c["ok"]]
        seen = {k: v for k, v in c.items() if k not in ("check", "ok", "failed_output")}
        print(f"{c['check']:<14} {verdict:<7} {json.dumps(seen, default=str)}")
        for text in c.get("failed_output", []):
            print(text)
    return 1 if any(c["ok"] is False for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
