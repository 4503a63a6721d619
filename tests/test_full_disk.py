"""A full disk is named: a write that fails (no space, a quota, a size limit, PyTorch's writer failing) raises
WriteError naming the file and the space left, and nothing partial is renamed into place: the file keeps what it
held (the last good checkpoint stays intact) and no temporary file is left behind."""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_run import tiny_config

from detr_nb_utils.data import atomic
from detr_nb_utils.training import engine as engine
from detr_nb_utils.training import runs as runs

FREE = r"[\d.]+ [kMGT]?B free on its file system"
# PyTorch's writer when the disk fills (both messages seen in the wild)
TORCH_FULL = ("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598",
              "[enforce fail at inline_container.cc:616] . basic_ios::clear: iostream error")


def _half_then(error: BaseException):
    """A writer that puts half of the data in the temporary file, then fails as a full disk does."""
    def write(self, data):
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        raise error
    return write


def test_no_space_names_the_file_and_the_space_left_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.jsonl"
    target.write_text("the earlier content\n")
    monkeypatch.setattr(Path, "write_bytes", _half_then(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(atomic.WriteError, match=rf"cannot write {target}: no space left on the device; {FREE}") as e:
        atomic.write_text(target, "new content, much longer than the disk has room for\n" * 100)
    assert e.value.errno == errno.ENOSPC and e.value.path == target and e.value.free_bytes > 0
    assert "Nothing was replaced: metrics.jsonl keeps what it held before" in str(e.value)
    monkeypatch.undo()
    assert target.read_text() == "the earlier content\n" and [p.name for p in tmp_path.iterdir()] == [target.name]


@pytest.mark.parametrize("message", TORCH_FULL)
def test_pytorch_writer_failing_is_named_and_the_earlier_checkpoint_stays(tmp_path, monkeypatch, message):
    target = tmp_path / runs.LAST
    atomic.torch_save({"epoch": 1}, target)
    saved = target.read_bytes()

    def failing_save(obj, f):
        Path(f).write_bytes(b"PK\x03\x04 a partial zip")
        raise RuntimeError(message)

    monkeypatch.setattr(atomic.torch, "save", failing_save)
    with pytest.raises(atomic.WriteError, match=rf"cannot write {target}: PyTorch's writer could not write all of it "
                                                rf"\(.*\), which is what a full disk gives; {FREE}"):
        atomic.torch_save({"epoch": 2}, target)
    assert target.read_bytes() == saved and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_other_errors_stay_themselves(tmp_path, monkeypatch):
    def buggy_save(obj, f):
        raise RuntimeError("a bug")

    monkeypatch.setattr(atomic.torch, "save", buggy_save)
    with pytest.raises(RuntimeError, match="^a bug$"):
        atomic.torch_save({}, tmp_path / "x.pth")
    assert list(tmp_path.iterdir()) == []


# the real PyTorch writer and the real file system, in a process whose file-size limit (RLIMIT_FSIZE, no root
# needed) is smaller than the checkpoint: the write fails part-way, as on a full disk
LIMITED = """
import resource, signal, sys, torch
from detr_nb_utils.data import atomic
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
try:
    if sys.argv[2] == "torch":
        atomic.torch_save({"model": torch.ones(200_000)}, sys.argv[1])
    else:
        atomic.write_bytes(sys.argv[1], bytes(300_000))
except atomic.WriteError as e:
    print(e)
    sys.exit(3)
"""


@pytest.mark.parametrize("how", ["torch", "bytes"])
def test_a_real_write_failing_part_way_leaves_the_earlier_checkpoint(tmp_path, how):
    target = tmp_path / runs.LAST
    atomic.torch_save({"model": torch.zeros(100_000)}, target)  # 400 kB, beyond the child's limit: rename is free
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    child = subprocess.run([sys.executable, "-c", LIMITED, str(target), how], capture_output=True, text=True)
    assert child.returncode == 3, child.stderr
    reason = "PyTorch's writer could not write all of it" if how == "torch" else "the file is larger than the file"
    assert child.stdout.startswith(f"cannot write {target}: {reason}")
    assert hashlib.sha256(target.read_bytes()).hexdigest() == digest
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_a_run_whose_checkpoint_cannot_be_written_stops_naming_it_and_resumes_later(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, run_name="full", epochs=1)
    engine.run_experiment(cfg)
    saved = (cfg.run_dir / runs.LAST).read_bytes()
    real_save = atomic.torch.save

    def full_disk(obj, f):
        real_save(obj, f)
        if Path(f).name.startswith(f".{runs.LAST}."):
            raise RuntimeError(TORCH_FULL[0])

    monkeypatch.setattr(atomic.torch, "save", full_disk)
    longer = dataclasses.replace(cfg, epochs=2)
    with pytest.raises(atomic.WriteError, match=rf"cannot write {cfg.run_dir / runs.LAST}: .*{FREE}"):
        engine.run_experiment(longer)
    assert (cfg.run_dir / runs.LAST).read_bytes() == saved  # epoch 1 intact: the run resumes from it
    assert not any(p.name.endswith(".tmp") for p in cfg.run_dir.iterdir())
    monkeypatch.undo()
    assert engine.run_experiment(longer).complete
