"""The training command line prints one line ``error: …`` and exits 2 for the errors a user can act on (a bad value
or field, a broken config.json named with its path, missing data, a damaged checkpoint or run folder, a refused
resume, a folder in use, a full disk, a diverged run); a bug still shows its traceback."""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_run import lock_holder, tiny_config  # noqa: F401 (a fixture)

from detr_nb_utils.data.atomic import WriteError
from detr_nb_utils.models.checkpoint import CheckpointError
from detr_nb_utils.training import cli as cli
from detr_nb_utils.training import engine as engine
from detr_nb_utils.training import runs as runs
from detr_nb_utils.training.config import CHECKPOINT_SHAPES, RunConfig
from detr_nb_utils.training.non_finite import NonFiniteLossError
from detr_nb_utils.training.run_lock import RunFolderLocked


def _run(argv: list[str], capsys) -> tuple[int, str]:
    status = cli.main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return status, err


def _config_file(tmp_path: Path, cfg: RunConfig | None = None, **changes) -> Path:
    path = tmp_path / "run.json"
    (cfg or tiny_config(tmp_path)).to_json(path)
    if changes:
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return path


@pytest.mark.parametrize("argv, message", [
    (["--profile", "demo", "--set", "lr=-1"], r"RunConfig\.lr = -1\.0 is invalid: must be a finite number in \(0\.0"),
    (["--profile", "demo", "--set", "lr=inf"], r"RunConfig\.lr = inf is invalid"),
    (["--profile", "demo", "--set", "epochs=three"], r"--set epochs=three: not a valid int"),
    (["--profile", "demo", "--set", "colour=red"], r"--set 'colour=red': expected KEY=VALUE with KEY one of"),
    (["--config", "no/such/run.json"], r"--config no/such/run\.json: no such file"),
])
def test_bad_arguments_are_one_line_errors(argv, message, capsys):
    status, err = _run(argv, capsys)
    assert status == 2 and err.strip().splitlines()[-1].startswith(("error: ", "python -m detr_nb_utils.training: "))
    assert re.search(message, err), err


@pytest.mark.parametrize("text, message", [
    ('{"epochs": 2, "lr": ', r"is not valid JSON \(Expecting value at line 1, column \d+\)"),
    ("[1, 2]", r"holds a JSON list, not a config"),
    ('{"epochs": 2, "colour": "red"}', r": unknown config field\(s\) \['colour'\]"),
    ('{"epochs": -1}', r": RunConfig\.epochs = -1 is invalid"),
])
def test_a_broken_config_file_is_named_with_its_path(tmp_path, text, message, capsys):
    path = tmp_path / "config.json"
    path.write_text(text)
    status, err = _run(["--config", str(path)], capsys)
    assert status == 2 and err.startswith(f"error: {path}"), err
    assert re.search(message, err), err


def test_missing_data_and_a_damaged_checkpoint_are_named(tmp_path, capsys):
    missing = _config_file(tmp_path, dataclasses.replace(tiny_config(tmp_path), dataset_dir=str(tmp_path / "nowhere")))
    status, err = _run(["--config", str(missing)], capsys)
    assert status == 2 and err.startswith(f"error: no train and no val set in the dataset folder {tmp_path}/nowhere")
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(b"PK\x03\x04" + bytes(100))
    cfg = dataclasses.replace(tiny_config(tmp_path), checkpoint=str(damaged), **CHECKPOINT_SHAPES["tiny"])
    status, err = _run(["--config", str(_config_file(tmp_path, cfg))], capsys)
    assert status == 2 and err.startswith("error: ") and str(damaged) in err, err
    assert not (tmp_path / "runs").exists()  # nothing was left behind by the refused starts


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    cfg = tiny_config(tmp_path_factory.mktemp("cli"), run_name="cli")
    engine.run_experiment(cfg)
    return cfg.run_dir


def test_a_refused_resume_and_a_damaged_run_folder_are_one_line_errors(run_folder, tmp_path, capsys):
    status, err = _run(["--config", str(run_folder / runs.CONFIG), "--set", "lr=2e-4"], capsys)
    assert status == 2 and err.startswith(f"error: {run_folder} holds a run with a different configuration (lr: "), err
    copy = tmp_path / "copy"
    shutil.copytree(run_folder, copy)
    (copy / runs.LAST).write_bytes((copy / runs.LAST).read_bytes()[:1000])
    status, err = _run(["--config", str(copy / runs.CONFIG), "--set", "epochs=2"], capsys)
    assert status == 2 and err.startswith(f"error: {copy / runs.LAST} is damaged: it is truncated"), err


def test_a_second_process_on_the_same_folder_exits_2_naming_the_first(run_folder, lock_holder):
    environment = (run_folder / runs.ENVIRONMENT).read_bytes()
    holder = lock_holder(run_folder)
    child = subprocess.run([sys.executable, "-m", "detr_nb_utils.training", "--config", str(run_folder / runs.CONFIG),
                            "--set", "epochs=2"], capture_output=True, text=True, timeout=300)
    assert child.returncode == 2, child.stderr
    assert child.stderr.startswith(f"error: {run_folder} is in use by process {holder.pid} on host ")
    assert "Traceback" not in child.stderr and child.stdout == ""
    assert (run_folder / runs.ENVIRONMENT).read_bytes() == environment  # not rewritten by the refused process


@pytest.mark.parametrize("error", [
    RunFolderLocked("runs/x is in use"), WriteError(Path("runs/x/checkpoint_last.pth"), "no space left", 0, 28),
    NonFiniteLossError(2, 0, {"loss_ce": float("nan")}), CheckpointError("x.pth is damaged"),
    runs.DamagedRunFolder("runs/x/checkpoint_last.pth is damaged"), FileNotFoundError("data/coco is missing"),
])
def test_expected_errors_exit_2_and_bugs_keep_their_traceback(error, tmp_path, monkeypatch, capsys):
    config = _config_file(tmp_path)

    def fails(cfg):
        raise error

    monkeypatch.setattr(cli, "run_experiment", fails)
    status, err = _run(["--config", str(config)], capsys)
    assert (status, err) == (2, f"error: {error}\n")

    def bug(cfg):
        raise KeyError("area")

    monkeypatch.setattr(cli, "run_experiment", bug)
    with pytest.raises(KeyError):
        cli.main(["--config", str(config)])
