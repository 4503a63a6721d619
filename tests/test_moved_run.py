"""A moved run folder resumes: where a run folder is (out_dir, its name) is not part of what the run is. Trained
into one place, moved (and renamed), it is extended where it is now, from Python and from the command line, and
its config.json then says where it is."""
from __future__ import annotations

import dataclasses
import shutil

from tiny_run import tiny_config

from detr_nb_utils.training import cli as cli
from detr_nb_utils.training import engine as engine
from detr_nb_utils.training import runs as runs
from detr_nb_utils.training.config import RunConfig


def test_a_moved_and_renamed_run_folder_resumes_where_it_is_now(tmp_path, capsys):
    cfg = tiny_config(tmp_path, out_dir=str(tmp_path / "A"), epochs=1)  # run_name None: dec2_q10
    engine.run_experiment(cfg)
    moved = tmp_path / "B" / "renamed"
    moved.parent.mkdir()
    shutil.move(cfg.run_dir, moved)

    assert runs.load_run(moved).config.run_dir == moved  # read back, it says where it is
    record = engine.run_experiment(dataclasses.replace(cfg, out_dir=str(tmp_path / "B"), run_name="renamed",
                                                       epochs=2))
    assert record.run_dir == moved and list(record.metrics.index) == [0, 1, 2]
    assert [e["from_epoch"] for e in record.environment] == [None, 1]  # resumed after epoch 1, not started over
    written = RunConfig.from_json(moved / runs.CONFIG)
    assert (written.out_dir, written.run_name) == (str(tmp_path / "B"), "renamed")
    assert not cfg.run_dir.exists()

    again = tmp_path / "C" / "dec2_q10"  # moved again, back to its default name; its config.json still says B
    again.parent.mkdir()
    shutil.move(moved, again)
    assert cli.main(["--config", str(again / runs.CONFIG), "--set", "epochs=3"]) == 0
    assert f"{again}: 3 epochs finished" in capsys.readouterr().out
    record = runs.load_run(again)
    assert [e["from_epoch"] for e in record.environment] == [None, 1, 2] and record.complete
    written = RunConfig.from_json(again / runs.CONFIG)
    assert (written.out_dir, written.run_name) == (str(tmp_path / "C"), None)
    assert not moved.exists()


def test_moving_is_not_a_change_but_other_fields_still_are(tmp_path):
    cfg = tiny_config(tmp_path)
    elsewhere = dataclasses.replace(cfg, out_dir="elsewhere", run_name="other")
    assert runs.config_diff(cfg, elsewhere) == []
    assert runs.config_diff(cfg, dataclasses.replace(elsewhere, lr=2e-4)) == [("lr", 1e-4, 2e-4)]
    assert runs.config_diff(cfg, dataclasses.replace(cfg, split_dir="other_split")) == [
        ("split_dir", cfg.split_dir, "other_split")]  # an input path is part of the run
