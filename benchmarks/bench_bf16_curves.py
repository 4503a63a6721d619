"""What the fast mode changes in training: the demo's fine-tuning run in fp32 and in the fast mode, side by side.

Three runs of one variant on the demo profile's data and random-weight checkpoint (``make demo``'s), each
``--epochs`` epochs: fp32 with seed 42, the fast mode (bf16 autocast, channels_last, folded BatchNorm, fused AdamW)
with seed 42, and fp32 with seed 43. The fast mode draws its dropout masks differently, so after the first step
the two seed-42 runs also see different random crops: the fp32 seed-43 run is the yardstick, the difference two
fp32 runs show from randomness alone. The question is whether fp32 against fast is larger than that.

Writes the runs to ``--out-dir`` (git-ignored ``runs/``; an existing finished run is read back, not re-trained),
the loss curves to ``benchmarks/figures/bf16_vs_fp32_demo_loss.png`` (AP stays 0 on random weights in a
few epochs: it is in the table only), and a section with the
per-epoch table to ``benchmarks/RESULTS.md``. Weights are random and the data synthetic: this shows whether the
fast mode trains like fp32, not what AP DETR reaches. Run from the project root::

    python benchmarks/bench_bf16_curves.py --epochs 8
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from detr_nb_utils.notebook.figures import plot_loss_curves, save_fig, set_stamp  # noqa: E402
from detr_nb_utils.notebook.tables import with_train_views  # noqa: E402
from detr_nb_utils.training.config import make_config  # noqa: E402
from detr_nb_utils.training.engine import run_experiment  # noqa: E402

RESULTS = HERE / "RESULTS.md"
SECTION = "## Training curves: fp32 against the fast mode (demo)"
RUNS = (("fp32, seed 42", "fp32", 42), ("fast, seed 42", "fast", 42), ("fp32, seed 43", "fp32", 43))


def run_all(epochs: int, out_dir: str, layers: int, queries: int) -> dict:
    """Train (or read back) the three runs; returns ``{label: RunRecord}``."""
    records = {}
    for label, mode, seed in RUNS:
        cfg = make_config("demo", epochs=epochs, seed=seed, dec_layers=layers, num_queries=queries,
                          precision="bf16" if mode == "fast" else "fp32", channels_last=mode == "fast",
                          out_dir=out_dir, run_name=f"dec{layers}_q{queries}_{mode}_seed{seed}", progress=False)
        print(f"{label}: {cfg.run_dir}", flush=True)
        records[label] = run_experiment(cfg)
    return records


def curve_table(records: dict) -> pd.DataFrame:
    """Per epoch: training loss, validation loss (total, final layer) and AP (%) of each run."""
    cols = {"train_loss": "train loss", "val_loss_total": "val loss", "val_loss_final": "val final-layer loss",
            "val_AP": "val AP %"}
    parts = []
    for label, rec in records.items():
        df = rec.metrics[list(cols)].rename(columns=cols)
        df["val AP %"] *= 100
        df.columns = pd.MultiIndex.from_product([[label], df.columns])
        parts.append(df)
    return pd.concat(parts, axis=1)


def gaps(records: dict) -> dict:
    """Largest relative gap over the fine-tuned epochs, fast against fp32 and fp32 seed 43 against seed 42."""
    (a, ra), (b, rb), (c, rc) = records.items()
    out = {}
    for key in ("train_loss", "val_loss_total", "val_loss_final"):
        base = ra.metrics[key].iloc[1:]
        out[key] = {f"{b} vs {a}": float(((rb.metrics[key].iloc[1:] - base).abs() / base.abs()).max()),
                    f"{c} vs {a}": float(((rc.metrics[key].iloc[1:] - base).abs() / base.abs()).max())}
    return out


def markdown(records: dict, table: pd.DataFrame, epochs: int) -> str:
    g = gaps(records)
    lines = [SECTION, "",
             f"`benchmarks/bench_bf16_curves.py --epochs {epochs}` ({dt.date.today()}, CPU): the demo profile's data "
             "and random-weight checkpoint, so this says whether the fast mode trains like fp32, not what AP DETR "
             "reaches. Epoch 0 is the loaded checkpoint. The fp32 seed-43 run is the yardstick: after the first step "
             "the fast mode's dropout draws shift the random crops too, so fp32 against fast is compared with fp32 "
             "against another seed.", "",
             "![loss curves](figures/bf16_vs_fp32_demo_loss.png)", "",
             "| largest relative gap over epochs 1-%d | %s |" % (epochs, " | ".join(next(iter(g.values())))),
             "|---|---|---|"]
    for key, vals in g.items():
        lines.append(f"| {key} | " + " | ".join(f"{v:.1%}" for v in vals.values()) + " |")
    lines += ["", "| epoch | " + " | ".join(f"{run}: {col}" for run, col in table.columns) + " |",
              "|---|" + "---|" * len(table.columns)]
    for epoch, row in table.iterrows():
        lines.append(f"| {epoch} | " + " | ".join("" if pd.isna(v) else f"{v:.3f}" for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_section(text: str) -> None:
    """Replace this script's section of RESULTS.md (or append it)."""
    old = RESULTS.read_text()
    start = old.find(SECTION)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(SECTION))
        new = old[:start] + text + ("" if end < 0 else "\n" + old[end + 1:])
    tmp = RESULTS.with_suffix(".md.tmp")
    tmp.write_text(new)
    tmp.replace(RESULTS)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--variant", default="6/100", help="decoder layers/queries")
    p.add_argument("--out-dir", default="runs/bench_bf16")
    p.add_argument("--no-results", action="store_true", help="do not write RESULTS.md or the figures")
    a = p.parse_args()
    layers, _, queries = a.variant.partition("/")
    records = run_all(a.epochs, a.out_dir, int(layers), int(queries))
    table = curve_table(records)
    print(table.round(3).to_string())
    print(gaps(records))
    if a.no_results:
        return
    curves = {label: with_train_views(rec) for label, rec in records.items()}
    set_stamp("DEMO: random weights, synthetic data")
    save_fig(plot_loss_curves(curves), "bf16_vs_fp32_demo_loss", HERE)
    write_section(markdown(records, table, a.epochs))
    print(f"wrote {HERE / 'figures'} and the section of {RESULTS}")


if __name__ == "__main__":
    main()
