"""The study's wall time extrapolated from measured steps: the original study's three variants, 5 epochs of 4,000 training
images at batch 2, and 6 evaluations (epoch 0 and after each epoch) of 1,000 validation images each.

Reads the JSON files ``bench_step.py`` writes and uses, for each variant, the median fast-mode training step and
eval forward at the largest image size measured (800x1066 is the study's validation size; training picks shorter
sides of 480-800, so the training part is an upper estimate). 3/100 is timed as 3/50 when it was not measured (the
queries are a small part of the step). COCOeval runs on the CPU at every evaluation: the final layer with every
statistic (``--final-s``) in the main process while worker processes score the auxiliary layers' AP
(``--layer-s`` each, one worker per layer up to ``--cores`` - 1), as ``evaluate.evaluate`` does. The defaults
are ``bench_cocoeval.py``'s figures for 1,030 images on this project's 2-core CPU machine. Data loading is assumed
to keep up (check the loader benchmark on the same machine). ::

    python benchmarks/study_estimate.py benchmarks/bench_step-*.json [--device cuda]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

VARIANTS = {"6/100": (6, 100), "3/100": (3, 100), "3/50": (3, 50)}
EPOCHS, N_TRAIN, N_VAL, BATCH = 5, 4000, 1000, 2


def load_rows(paths: list[Path], device: str) -> list[dict]:
    rows = []
    for p in paths:
        data = json.loads(Path(p).read_text())
        rows += [r for r in (data if isinstance(data, list) else [data])
                 if isinstance(r, dict) and "spec" in r and r["spec"].get("device", "").startswith(device)]
    return rows


def step_table(rows: list[dict]) -> dict:
    """``{(variant, phase): (seconds, size, date)}`` for the fast mode at the largest size measured (the latest
    measurement of it)."""
    out: dict = {}
    for r in rows:
        s = r["spec"]
        if s.get("mode") != "fast" or s.get("impl", "ours") != "ours":
            continue
        variant = f"{s['variant'][0]}/{s['variant'][1]}"
        size = tuple(s["size"])
        seconds = r["phases_s"]["forward"] if s["phase"] == "eval" else r["step_s"]
        key = (variant, s["phase"])
        if key not in out or size[0] * size[1] >= out[key][1][0] * out[key][1][1]:  # later files win ties
            out[key] = (seconds, size, r["machine"]["date"])
    return out


def cocoeval_seconds(layers: int, final_s: float, layer_s: float, cores: int) -> float:
    """One evaluation's COCOeval: the final layer here, the auxiliary layers in parallel in the workers."""
    aux = layers - 1
    workers = max(1, min(aux, cores - 1)) if aux else 0
    return max(final_s, -(-aux // workers) * layer_s) if workers else final_s


def estimate(steps: dict, final_s: float, layer_s: float, cores: int) -> list[dict]:
    rows = []
    for name, (layers, _) in VARIANTS.items():
        stand_in = name if (name, "train") in steps else "3/50" if name == "3/100" else None
        if stand_in is None or (stand_in, "train") not in steps or (stand_in, "eval") not in steps:
            continue
        train_s = EPOCHS * (N_TRAIN // BATCH) * steps[(stand_in, "train")][0]
        forward_s = (EPOCHS + 1) * (N_VAL // BATCH) * steps[(stand_in, "eval")][0]
        coco_s = (EPOCHS + 1) * cocoeval_seconds(layers, final_s, layer_s, cores)
        rows.append({"variant": name, "timed as": stand_in, "size": "x".join(map(str, steps[(stand_in, "train")][1])),
                     "measured": steps[(stand_in, "train")][2], "train min": train_s / 60, "eval forward min": forward_s / 60, "COCOeval min": coco_s / 60,
                     "total min": (train_s + forward_s + coco_s) / 60})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", nargs="+", type=Path)
    p.add_argument("--device", default="cuda", help="rows of this device type (cuda, cpu)")
    p.add_argument("--final-s", type=float, default=10.6, help="seconds of the final layer's COCOeval")
    p.add_argument("--layer-s", type=float, default=4.3, help="seconds of one auxiliary layer's AP")
    p.add_argument("--cores", type=int, default=16, help="CPU cores of the machine (the H100 machine has 16)")
    a = p.parse_args()
    rows = estimate(step_table(load_rows(a.json, a.device)), a.final_s, a.layer_s, a.cores)
    if not rows:
        raise SystemExit(f"no fast-mode train and eval rows for device {a.device!r} in {[str(x) for x in a.json]}")
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    total = sum(r["total min"] for r in rows)
    print(f"\nthe study's {len(rows)} variants: {total:.1f} min "
          f"(COCOeval {sum(r['COCOeval min'] for r in rows):.1f} min of it: final layer {a.final_s} s, "
          f"{a.layer_s} s per auxiliary layer, {a.cores} cores)")


if __name__ == "__main__":
    main()
