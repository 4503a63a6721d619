"""One run folder, one process: a second process is refused naming the holder's process id and host, a lock left by
a dead process is taken over with a warning, and the lock goes when the run ends or fails. Two real processes."""
from __future__ import annotations

import dataclasses
import json
import signal
import socket
import warnings
from pathlib import Path

import pytest
from tiny_run import lock_holder, tiny_config  # noqa: F401 (a fixture)

from detr_nb_utils.training import engine as engine
from detr_nb_utils.training import runs as runs
from detr_nb_utils.training.config import RunConfig
from detr_nb_utils.training.run_lock import LOCK, RunFolderLocked, RunLock, StaleRunLock

def _refusal(pid: int) -> str:
    return rf"is in use by process {pid} on host '{socket.gethostname()}' \(since .*\): one run folder trains in one"


def test_a_second_process_is_refused_naming_the_holder_until_it_ends(tmp_path, lock_holder):
    proc = lock_holder(tmp_path / "run")
    with pytest.raises(RunFolderLocked, match=_refusal(proc.pid)):
        RunLock(tmp_path / "run").acquire()
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0
    assert not (tmp_path / "run" / LOCK).exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # released cleanly: nothing stale to warn about
        with RunLock(tmp_path / "run") as lock:
            assert json.loads(lock.path.read_text())["pid"] != proc.pid
    assert not (tmp_path / "run").exists()  # made for the lock, left empty: removed again


def test_the_lock_of_a_killed_process_is_taken_over_with_a_warning(tmp_path, lock_holder):
    proc = lock_holder(tmp_path / "run")
    proc.send_signal(signal.SIGKILL)  # kill -9: no chance to release
    proc.wait(timeout=30)
    assert json.loads((tmp_path / "run" / LOCK).read_text())["pid"] == proc.pid  # the file stays behind
    with pytest.warns(StaleRunLock, match=rf"taking over the lock of process {proc.pid} on host .* no longer running"):
        lock = RunLock(tmp_path / "run").acquire()
    with pytest.raises(RunFolderLocked):  # now held by this process
        RunLock(tmp_path / "run").acquire()
    lock.release()
    assert not (tmp_path / "run" / LOCK).exists()


def test_a_stale_lock_file_is_taken_over_with_a_warning(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LOCK).write_text(json.dumps({"pid": 4242, "host": "gpu-node-7", "started": "yesterday"}))
    with pytest.warns(StaleRunLock, match=r"process 4242 on host 'gpu-node-7' \(since yesterday\)"):
        with RunLock(tmp_path / "run"):
            pass
    assert list((tmp_path / "run").iterdir()) == []  # the folder existed before: kept


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> RunConfig:
    cfg = tiny_config(tmp_path_factory.mktemp("lock"), run_name="locked")
    engine.run_experiment(cfg)
    return cfg


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_training_in_a_folder_another_process_holds_is_refused_and_changes_nothing(finished, lock_holder):
    before = _snapshot(finished.run_dir)
    proc = lock_holder(finished.run_dir)
    with pytest.raises(RunFolderLocked, match=_refusal(proc.pid)):
        engine.run_experiment(dataclasses.replace(finished, epochs=2))
    assert {k: v for k, v in _snapshot(finished.run_dir).items() if k != LOCK} == before  # environment.jsonl too
    proc.stdin.close()
    proc.wait(timeout=30)
    record = engine.run_experiment(dataclasses.replace(finished, epochs=2))  # the holder has gone: it trains
    assert record.complete and [e["from_epoch"] for e in record.environment] == [None, 1]
    assert not (finished.run_dir / LOCK).exists()


def test_the_lock_is_released_when_the_run_fails(finished):
    with pytest.raises(runs.RunConfigMismatch):
        engine.run_experiment(dataclasses.replace(finished, lr=2e-4))
    assert not (finished.run_dir / LOCK).exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RunLock(finished.run_dir).acquire().release()
