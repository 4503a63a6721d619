"""Which epoch a run reports as best (a fine-tuned one, never epoch 0), its final epoch, and its effective precision."""
from pathlib import Path

import pandas as pd
import pytest

from detr_nb_utils.training.config import make_config
from detr_nb_utils.training.runs import PRECISION_FIELD, RunRecord, best_epoch


def test_best_epoch_is_a_fine_tuned_epoch():
    history = [{"epoch": 0, "val_AP": 0.42, "val_loss_total": 10.0},
               {"epoch": 1, "val_AP": 0.40, "val_loss_total": 12.0},
               {"epoch": 2, "val_AP": 0.41, "val_loss_total": 11.0},
               {"epoch": 3, "val_AP": 0.41, "val_loss_total": float("nan")}]
    # epoch 0 scores best on both, and is never the answer: "best minus epoch 0" may be negative
    assert best_epoch(history, "val_AP", "max") == 2  # earliest of the tie
    assert best_epoch(history, "val_loss_total", "min") == 2  # non-finite values are skipped
    assert best_epoch(history[:1], "val_AP", "max") is None  # before any training there is no best epoch
    assert best_epoch([{"epoch": 1}], "val_AP", "max") is None


def _record(precision: str, recorded: list | None, ap: list[float]) -> RunRecord:
    m = pd.DataFrame({"val_AP": ap}, index=pd.Index(range(len(ap)), name="epoch"))
    if recorded is not None:
        m[PRECISION_FIELD] = recorded
    cfg = make_config("demo", precision=precision)
    return RunRecord(run_dir=Path("runs/x"), config=cfg, metrics=m, per_category_ap=pd.DataFrame(), best_epoch_ap=None,
                     best_epoch_loss=None, split_manifest={})


@pytest.mark.parametrize(("precision", "recorded", "want"), [
    ("auto", ["bf16", "bf16"], "bf16"),  # what "auto" resolved to, as the run recorded it
    ("fp32", ["fp32", "fp32"], "fp32"),
    ("auto", ["fp32", "bf16"], "bf16+fp32"),  # a run that mixed precisions says so
    ("fp32", None, None),  # nothing recorded: unknown, whatever the config asked for
])
def test_effective_precision(precision, recorded, want):
    assert _record(precision, recorded, [0.1, 0.2]).effective_precision == want


def test_final_epoch_is_the_last_evaluated():
    assert _record("fp32", None, [0.1, 0.3, float("nan")]).final_epoch == 1
    assert _record("fp32", None, [0.1]).final_epoch == 0
