"""The study's GPU-only code paths, taken on the CPU through the same functions: the device a config asks for (and
``"auto"``), memory pinned for the loaders exactly on CUDA, the peak memory a CUDA run records per epoch, what a
run folder says about its GPU, and ``benchmarks/gpu_path.py``, the rehearsal the first GPU session runs
(``benchmarks/gpu_session.sh``), end to end on the CPU with two runs side by side."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from detr_nb_utils.training import data_setup, engine, runs, runtime

from test_engine import tiny_cfg  # noqa: F401 (the fixture: a tiny DETR on 8 synthetic images, on the CPU)

ROOT = Path(__file__).resolve().parents[1]


def _fake_gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_auto_takes_the_gpu_when_there_is_one(monkeypatch):
    _fake_gpus(monkeypatch, 1)
    assert runtime.resolve_device("auto") == torch.device("cuda")
    assert runtime.resolve_device("cuda:0") == torch.device("cuda:0")
    assert runtime.resolve_device("cpu") == torch.device("cpu")  # asked for by name, the CPU even beside a GPU
    _fake_gpus(monkeypatch, 0)
    assert runtime.resolve_device("auto") == torch.device("cpu")


def test_a_cuda_device_this_machine_lacks_is_refused_with_the_choices(monkeypatch):
    _fake_gpus(monkeypatch, 0)
    with pytest.raises(ValueError, match=r"device='cuda' but CUDA is not available here \(torch .*\); use "
                                         r"device='auto' or 'cpu'"):
        runtime.resolve_device("cuda")
    _fake_gpus(monkeypatch, 2)
    assert runtime.resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match=r"device='cuda:2' but this machine has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        runtime.resolve_device("cuda:2")


def test_a_run_asking_for_a_gpu_where_there_is_none_stops_before_its_folder_exists(tiny_cfg, monkeypatch):
    _fake_gpus(monkeypatch, 0)
    cfg = dataclasses.replace(tiny_cfg, device="cuda:0", run_name="no_gpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        engine.run_experiment(cfg)
    assert not cfg.run_dir.exists()


def test_the_loaders_pin_memory_exactly_for_a_cuda_device(tiny_cfg):
    """Building a loader needs no GPU; pinned batches and the engine's non-blocking copies are then the GPU's to
    check (gpu_path.py's ``pinned_loader``)."""
    data = data_setup.prepare_data(tiny_cfg)
    for split in ("train", "val"):
        assert data_setup.build_loader(tiny_cfg, data, split, torch.device("cuda:0")).pin_memory
        assert not data_setup.build_loader(tiny_cfg, data, split, torch.device("cpu")).pin_memory


def test_peak_memory_is_cudas_counter_in_mib_and_none_elsewhere(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: calls.append(("read", d)) or 3 * 2**20 + 2**19)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d: calls.append(("reset", d)))
    runtime.reset_peak_memory("cuda:1")
    assert runtime.peak_memory_mb("cuda:1") == 3.5
    assert calls == [("reset", torch.device("cuda:1")), ("read", torch.device("cuda:1"))]
    runtime.reset_peak_memory("cpu")
    assert runtime.peak_memory_mb("cpu") is None and runtime.peak_memory_mb("mps") is None
    assert len(calls) == 2  # the CPU asks nothing of CUDA


def test_each_epoch_records_the_peak_memory_since_that_epoch_began(tiny_cfg, monkeypatch):
    """The engine resets the counter as each epoch begins (epoch 0: the checkpoint's evaluation) and writes its peak
    into that epoch's metrics row; a device without a counter (the CPU) writes no field."""
    events = []
    monkeypatch.setattr(engine, "reset_peak_memory", lambda d: events.append("reset"))
    monkeypatch.setattr(engine, "peak_memory_mb", lambda d: events.append("read") or 100.0 * events.count("reset"))
    cfg = dataclasses.replace(tiny_cfg, epochs=1, run_name="peaks")
    record = engine.run_experiment(cfg)
    assert events == ["reset", "read", "reset", "read"]
    assert list(record.metrics[runtime.PEAK_MEMORY_FIELD]) == [100.0, 200.0]
    monkeypatch.undo()
    plain = engine.run_experiment(dataclasses.replace(tiny_cfg, epochs=1, run_name="no_peaks"))
    assert runtime.PEAK_MEMORY_FIELD not in plain.metrics


def test_a_run_folder_and_the_run_header_name_the_gpu_and_its_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(total_memory=81559 * 2**20))
    env = runtime.environment("cuda:0")
    assert (env["device"], env["gpu"], env["gpu_memory_mb"]) == ("cuda:0", "NVIDIA H100 80GB HBM3", 81559)
    assert runtime.describe_device("cuda:0") == "cuda:0 (NVIDIA H100 80GB HBM3)"
    cpu = runtime.environment("cpu")
    assert (cpu["device"], cpu["gpu"], cpu["gpu_memory_mb"]) == ("cpu", None, None)
    assert runtime.describe_device("cpu") == "cpu"


def test_the_gpu_rehearsal_runs_on_the_cpu(tmp_path):
    """benchmarks/gpu_path.py, as gpu_session.sh runs it on a GPU, here on the CPU with the tiny backbone: every
    check that applies to the CPU passes (two runs side by side included), the CUDA-only ones say n/a."""
    spec = importlib.util.spec_from_file_location("gpu_path", ROOT / "benchmarks" / "gpu_path.py")
    gpu_path = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_path)
    assert gpu_path.main(["--device", "cpu", "--small", "--out", str(tmp_path)]) == 0
    checks = {c["check"]: c for c in json.loads((tmp_path / "gpu_path.json").read_text())}
    verdicts = {name: c["ok"] for name, c in checks.items()}
    assert verdicts == {"device": True, "pinned_loader": True, "run": True, "peak_memory": None, "tf32": None,
                        "side_by_side": True}
    assert checks["run"]["environment"]["device"] == "cpu" and checks["run"]["epochs"] == [0, 1]
    side = checks["side_by_side"]
    assert side["exit_codes"] == [0, 0]
    for k in range(2):
        assert runs.load_run(tmp_path / "runs" / f"side{k}").complete
