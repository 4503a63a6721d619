"""Runs side by side: the same metrics, to the bit, whether a notebook's seeds run one after the other in this process or
each in its own process at the same time (threads fixed per run); epoch 0 evaluated once and shared by the seeds and
recipe arms without changing what they train; the warm-up arm's schedule, resumed where it stopped; and the plan a
training notebook prints before it trains."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from test_engine import TIMES, TINY  # the engine tests' tiny DETR

from detr_nb_utils.data.synthetic import make_synthetic_coco
from detr_nb_utils.training import engine, runs
from detr_nb_utils.training.config import RunConfig, make_config, seed_configs
from detr_nb_utils.training.epoch_zero import CACHE
from detr_nb_utils.training.side_by_side import (core_slot, default_jobs, plan_runs, plan_text, run_all, run_finished,
                                                 wait_for_runs)



@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory) -> RunConfig:
    root = tmp_path_factory.mktemp("side_by_side")
    make_synthetic_coco(root / "coco", n_images=10, seed=0, image_size=(64, 96))
    cfg = make_config("demo", data_root=str(root / "coco"), split_dir=str(root / "split"), out_dir=str(root / "a"),
                      n_train=6, n_val=4, min_size=64, max_size=96, train_scales=(64,), epochs=2, precision="fp32",
                      progress=False, num_workers=0, dropout=0.1)
    return dataclasses.replace(cfg, **TINY)


def _metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / runs.METRICS).read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMES} for r in rows]


def test_side_by_side_gives_the_metrics_of_one_after_the_other(tiny_cfg, tmp_path):
    """Three seeds run in this process one after the other, and again in two worker processes at once (one of them
    making two runs in turn): every metric of every epoch (losses, AP, per-category AP) is the same float, and so
    are the saved detections."""
    assert tiny_cfg.threads == 1  # the demo profile fixes one torch thread per run
    one_by_one = run_all(seed_configs(tiny_cfg, 3), jobs=1)
    together = run_all(seed_configs(dataclasses.replace(tiny_cfg, out_dir=str(tmp_path / "b")), 3), jobs=2)
    assert list(one_by_one) == list(together) == ["dec2_q10_seed42", "dec2_q10_seed43", "dec2_q10_seed44"]
    for name in one_by_one:
        a, b = one_by_one[name].run_dir, together[name].run_dir
        assert _metrics(a) == _metrics(b), name
        assert len(_metrics(a)) == 3 and _metrics(a)[2]["train_loss"] > 0
        for epoch in (0, 1, 2):
            da, db = runs.load_detections(a, epoch), runs.load_detections(b, epoch)
            assert all((da[k] == db[k]).all() for k in da), (name, epoch)
    assert _metrics(one_by_one["dec2_q10_seed42"].run_dir) != _metrics(one_by_one["dec2_q10_seed43"].run_dir)


def test_epoch0_is_shared_and_changes_nothing(tiny_cfg, tmp_path):
    """A run that reads epoch 0 from the shared evaluation trains exactly as one that evaluates it itself; a
    checkpoint-free model draws its weights from the seed, so each seed keeps its own epoch 0."""
    cfg = dataclasses.replace(tiny_cfg, out_dir=str(tmp_path / "alone"), seed=43, run_name="alone")
    engine.run_experiment(cfg)
    shared = dataclasses.replace(tiny_cfg, out_dir=str(tmp_path / "shared"), seed=43, run_name="shared")
    first = engine.run_experiment(dataclasses.replace(shared, run_name="first"))  # makes the shared epoch 0
    cached = list((tmp_path / "shared" / CACHE).glob("*.json"))
    assert len(cached) == 1
    again = engine.run_experiment(shared)  # reads it
    assert _metrics(cfg.run_dir) == _metrics(again.run_dir) == _metrics(first.run_dir)
    other_seed = engine.run_experiment(dataclasses.replace(shared, seed=44, run_name="seed44"))
    assert len(list((tmp_path / "shared" / CACHE).glob("*.json"))) == 2  # random weights: one epoch 0 per seed
    assert _metrics(other_seed.run_dir)[0]["val_loss_total"] != _metrics(again.run_dir)[0]["val_loss_total"]


def test_evaluate_checkpoint_reads_the_runs_epoch0(tiny_cfg, tmp_path):
    cfg = dataclasses.replace(tiny_cfg, out_dir=str(tmp_path / "runs"))
    record = engine.run_experiment(cfg)
    alone = engine.evaluate_checkpoint(cfg)
    assert alone["loss_total"] == record.metrics.loc[0, "val_loss_total"]
    assert alone[runs.PRECISION_FIELD] == "fp32"
    assert len(list((tmp_path / "runs" / CACHE).glob("*.json"))) == 1


def test_warmup_ramps_the_rates_per_step_and_resumes(tiny_cfg, tmp_path):
    """The warm-up arm: step k at (k + 1) / warmup_steps of each rate, then the rates themselves; the scheduler
    steps with the optimizer, and a run stopped after epoch 1 and resumed ends bit-identical to one run straight."""
    cfg = dataclasses.replace(tiny_cfg, recipe="warmup", warmup_steps=4, lr_backbone=1e-5, epochs=2,
                              out_dir=str(tmp_path / "straight"))
    model, _, _ = engine.build_model(cfg, torch.device("cpu"))
    optimizer = engine.build_optimizer(model, cfg)
    engine.build_scheduler(optimizer, cfg, steps_per_epoch=3)
    seen = []
    for _ in range(6):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
    want = [[cfg.lr * k / 4, 1e-5 * k / 4] for k in (1, 2, 3, 4)] + [[cfg.lr, 1e-5]] * 2
    assert [x for pair in seen for x in pair] == pytest.approx([x for pair in want for x in pair])
    straight = engine.run_experiment(cfg)
    resumed_cfg = dataclasses.replace(cfg, out_dir=str(tmp_path / "resumed"), epochs=1)
    engine.run_experiment(resumed_cfg)
    resumed = engine.run_experiment(dataclasses.replace(resumed_cfg, epochs=2))
    # the same metrics; the resumed run's epoch 1 was once its final epoch, so it also holds every layer's AP
    both = [{k: v for k, v in a.items() if k in b} for a, b in zip(_metrics(resumed.run_dir), _metrics(straight.run_dir))]
    assert both == _metrics(straight.run_dir)
    # the rate the next step takes, logged after each epoch: the ramp's 4th step, then the full rate
    assert straight.metrics["lr"].tolist()[1:] == pytest.approx([cfg.lr, cfg.lr])


def test_the_plan_names_every_run_and_its_time(tiny_cfg, tmp_path):
    cfg = dataclasses.replace(tiny_cfg, out_dir=str(tmp_path / "plan"))
    configs = seed_configs(cfg, 2)
    engine.run_experiment(configs[0])
    plan = plan_runs(configs)
    assert plan["state"].tolist() == ["finished", "to train"] and plan["seed"].tolist() == [42, 43]
    assert plan.loc["dec2_q10_seed43", "minutes"] > 0 and plan.loc["dec2_q10_seed42", "minutes"] == 0
    assert "1 of 2 runs to train" in plan_text(plan) and "s per training step" in plan_text(plan)
    assert default_jobs(cfg, cores=2) == 2 and default_jobs(dataclasses.replace(cfg, threads=None), cores=2) == 1
    assert not (Path(cfg.out_dir) / "dec2_q10_seed43").exists()  # timing writes nothing


def test_a_finished_folder_of_another_configuration_is_refused(tiny_cfg, tmp_path):
    cfg = dataclasses.replace(tiny_cfg, out_dir=str(tmp_path / "mismatch"), epochs=1)
    run_all([cfg], jobs=1)
    with pytest.raises(runs.RunConfigMismatch, match=r"min_size: 64 in the folder, 96 now"):
        run_all([dataclasses.replace(cfg, min_size=96)], jobs=1)


def test_a_run_that_fails_side_by_side_is_named_and_the_others_finish(tiny_cfg, tmp_path):
    good = dataclasses.replace(tiny_cfg, out_dir=str(tmp_path / "runs"), epochs=1)
    bad = dataclasses.replace(good, data_root=str(tmp_path / "nowhere"), split_dir=str(tmp_path / "no_split"),
                              profile="study", run_name="broken")
    with pytest.raises(RuntimeError, match=r"runs side by side failed(.|\n)*broken(.|\n)*FileNotFoundError"):
        run_all([bad, *seed_configs(good, 2)], jobs=2)
    assert all((Path(good.out_dir) / f"dec2_q10_seed{s}" / runs.METRICS).is_file() for s in (42, 43))


def test_a_notebook_waits_for_the_runs_another_one_is_training(tiny_cfg, tmp_path, capsys):
    """While runs train elsewhere (here: a thread; in make demo: 03 beside 04 and 05), wait_for_runs returns once
    every folder holds a finished run; without waiting it names them all; a folder whose metrics stop before its
    own config's last epoch is unfinished; when nothing trains them, the wait ends (no 30-minute hang behind a
    notebook that failed); await_family waits for the decoder question's runs (every seed of the
    baseline, the shallow and the reduced-query variant) and says which are missing when time runs out."""
    import threading

    from detr_nb_utils.notebook.fine_tune import await_family

    cfg = dataclasses.replace(tiny_cfg, out_dir=str(tmp_path / "runs"), epochs=1)
    configs = seed_configs(cfg, 2)
    dirs = [c.run_dir for c in configs]
    assert wait_for_runs(dirs, 0)[0] == dirs
    trainer = threading.Thread(target=run_all, args=(configs, 1))
    trainer.start()
    left, waited = wait_for_runs(dirs, 600, poll_s=0.2)
    trainer.join()
    assert left == [] and all(run_finished(d) for d in dirs) and waited > 0
    config = json.loads((dirs[0] / runs.CONFIG).read_text())
    (dirs[0] / runs.CONFIG).write_text(json.dumps({**config, "epochs": 2}))  # one epoch of two
    assert not run_finished(dirs[0]) and run_finished(dirs[1]) and not run_finished(tmp_path / "nothing")
    assert wait_for_runs(dirs, 0.3, poll_s=0.1)[0] == [dirs[0]]
    left, waited = wait_for_runs([dirs[0], tmp_path / "never"], 600, poll_s=0.05, stall_s=0.5)  # nothing trains
    assert left == [dirs[0], tmp_path / "never"] and waited < 60

    await_family(dataclasses.replace(cfg, dec_layers=3, num_queries=100), 2, 0.2)
    said = capsys.readouterr().out
    expected = [f"dec{layers}_q{queries}_seed{seed}" for layers, queries in ((6, 100), (3, 100), (3, 50))
                for seed in (42, 43)]
    assert f"6 of the 6 runs of the comparison are unfinished ({', '.join(expected)})" in said
    await_family(cfg, 2, 0)  # 0: no waiting, nothing said
    assert capsys.readouterr().out == ""


def test_runs_side_by_side_never_outnumber_the_cores(tiny_cfg, tmp_path):
    """Runs of several notebooks share the machine's slots (here one core: one run at a time): a second run waits
    until the first lets its slot go, and with two cores both go at once."""
    import threading
    import time

    cfg = dataclasses.replace(tiny_cfg, out_dir=str(tmp_path))
    entered = []

    def second(cores: int) -> None:
        with core_slot(cfg, cores=cores, poll_s=0.02):
            entered.append(time.monotonic())

    for cores, waits in ((1, True), (2, False)):
        entered.clear()
        with core_slot(cfg, cores=cores):
            other = threading.Thread(target=second, args=(cores,))
            other.start()
            time.sleep(0.5)
            released = time.monotonic()
        other.join()
        assert (entered[0] >= released) is waits, cores
