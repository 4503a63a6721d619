"""fp32 means fp32: a run in fp32 turns TF32 off (matmul and cuDNN, which PyTorch turns on by default for
convolutions), bf16 keeps PyTorch's defaults, and every session of a run records the switches in environment.jsonl.
The switches exist on CPU builds, so this is checked here; what they change is only seen on a GPU."""
from __future__ import annotations

import pytest
import torch
from tiny_run import tiny_config

from detr_nb_utils.training import engine as engine
from detr_nb_utils.training.runtime import environment, set_tf32, tf32_flags

FP32 = {"tf32_matmul": False, "tf32_cudnn": False, "float32_matmul_precision": "highest"}


@pytest.fixture
def tf32_everywhere():
    """Every TF32 switch on (as a user's earlier cell might leave them); restored after the test."""
    before = tf32_flags()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("medium")
    yield
    torch.backends.cuda.matmul.allow_tf32 = before["tf32_matmul"]
    torch.backends.cudnn.allow_tf32 = before["tf32_cudnn"]
    torch.set_float32_matmul_precision(before["float32_matmul_precision"])


def test_fp32_turns_tf32_off_and_bf16_keeps_pytorchs_defaults(tf32_everywhere):
    assert tf32_flags()["tf32_cudnn"] and tf32_flags()["float32_matmul_precision"] == "medium"
    assert set_tf32("fp32") == FP32 == tf32_flags()
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert set_tf32("bf16") == {**FP32, "tf32_cudnn": True}  # PyTorch's defaults: cuDNN TF32 on, matmuls in fp32
    assert {k: environment("cpu")[k] for k in FP32} == {**FP32, "tf32_cudnn": True}


def test_a_run_and_an_evaluation_set_the_switches_and_the_run_records_them(tmp_path, tf32_everywhere):
    cfg = tiny_config(tmp_path, run_name="tf32", epochs=0)
    record = engine.run_experiment(cfg)
    (session,) = record.environment
    assert {k: session[k] for k in FP32} == FP32
    torch.backends.cudnn.allow_tf32 = True
    engine.evaluate_checkpoint(cfg)
    assert tf32_flags() == FP32
