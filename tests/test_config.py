"""RunConfig: profiles, explicit values winning, JSON round trip, and every bad value refused by name."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from detr_nb_utils.training.cli import config_from_args
from detr_nb_utils.training.config import (
    PROFILE_ENV,
    TINY_CHECKPOINT,
    RunConfig,
    make_config,
)
from detr_nb_utils.training.config_checks import CHECKPOINT_SHAPES


def test_study_profile_is_the_seed_recipe(monkeypatch):
    monkeypatch.delenv(PROFILE_ENV, raising=False)
    cfg = make_config()
    assert (cfg.profile, cfg.epochs, cfg.batch_size, cfg.lr, cfg.lr_backbone) == ("study", 5, 2, 1e-4, 1e-5)
    assert (cfg.weight_decay, cfg.clip_max_norm, cfg.dec_layers, cfg.num_queries) == (1e-4, 0.1, 6, 100)
    assert (cfg.min_size, cfg.max_size, cfg.train_scales) == (800, 1333, tuple(range(480, 801, 32)))
    assert (cfg.n_train, cfg.n_val, cfg.eval_batch_size) == (4000, 1000, 2)
    assert str(cfg.run_dir) == "runs/study/dec6_q100"


def test_one_numeric_regime_per_study(monkeypatch):
    """Both profiles compute in fp32 on every machine; bf16 or "auto" is asked for by name."""
    monkeypatch.delenv(PROFILE_ENV, raising=False)
    assert make_config().precision == make_config("study", device="cuda").precision == RunConfig().precision == "fp32"
    assert make_config("study", precision="bf16").precision == "bf16"
    assert make_config("demo").precision == "fp32" and make_config("demo", precision="auto").precision == "auto"


def test_the_demo_fine_tunes_the_tiny_detr_and_the_study_the_published_one():
    demo, study = make_config("demo"), make_config("study")
    assert (demo.backbone, demo.checkpoint) == ("tiny", TINY_CHECKPOINT) and Path(TINY_CHECKPOINT).is_file()
    assert study.backbone == "resnet50" and study.checkpoint.endswith("detr-r50-e632da11.pth")
    assert {k: v for k, v in demo.arch.items() if k != "backbone"} == CHECKPOINT_SHAPES["tiny"]
    assert (demo.num_queries, demo.dec_layers, demo.n_train + demo.n_val) == (100, 6, 500)
    # the one size the tiny DETR was pre-trained at, without crops and with its dropout; the study's as published
    assert demo.train_scales == (demo.min_size,) == (96,) and not demo.random_crop and demo.dropout == 0.0
    assert study.random_crop and study.dropout == 0.1 and len(study.train_scales) == 11
    with pytest.raises(ValueError, match=r"hidden_dim = 256 .* 64 to load the tiny checkpoint"):
        make_config("demo", hidden_dim=256)
    with pytest.raises(ValueError, match=r"backbone = 'resnet18' .* one of \['resnet50', 'tiny'\]"):
        make_config("demo", backbone="resnet18")


def test_environment_selects_the_profile_and_explicit_values_win(monkeypatch):
    monkeypatch.setenv(PROFILE_ENV, "demo")
    cfg = make_config(epochs=None, dec_layers=3, num_queries=50, lr=None)
    assert cfg.profile == "demo" and cfg.out_dir == "runs/demo" and cfg.min_size < 800
    assert (cfg.epochs, cfg.lr) == (make_config("demo").epochs, 1e-4)  # None means "the profile's default"
    assert str(cfg.run_dir) == "runs/demo/dec3_q50"
    assert make_config("study").profile == "study"  # an explicit profile beats the environment


def test_json_round_trip(tmp_path):
    cfg = make_config("demo", dec_layers=3, run_name="x", train_scales=(64, 96))
    assert RunConfig.from_json(cfg.to_json(tmp_path / "c.json")) == cfg
    assert RunConfig.from_json(tmp_path / "c.json") == cfg
    with pytest.raises(ValueError, match=r"unknown config field\(s\) \['colour'\]"):
        RunConfig.from_dict({**cfg.to_dict(), "colour": 1})


@pytest.mark.parametrize("field, value, message", [
    ("num_queries", 101, r"num_queries = 101 .* 1\.\.100 \(the checkpoint has 100"),
    ("num_queries", 0, r"num_queries = 0"),
    ("dec_layers", 7, r"dec_layers = 7 .* 1\.\.6"),
    ("batch_size", 0, r"batch_size = 0 .* >= 1"),
    ("lr", 0.0, r"lr = 0\.0 .* \(0\.0, inf\)"),
    ("lr", -1e-4, r"lr = -0\.0001"),
    ("precision", "fp16", r"precision = 'fp16' .* \('fp32', 'bf16', 'auto'\)"),
    ("device", "gpu", r"device = 'gpu' .* 'cuda:N'"),
    ("device", "cuda:x", r"device = 'cuda:x'"),
    ("epochs", 2.5, r"epochs = 2\.5 .* integer"),
    ("profile", "fast", r"profile = 'fast' .* \['demo', 'study'\]"),
    ("max_size", 100, r"max_size = 100 .* 800\.\.8192"),
    ("train_scales", (), r"train_scales = \(\)"),
    ("train_scales", (2000,), r"train_scales = \(2000,\) .* 32\.\.max_size"),
    ("dropout", 1.0, r"dropout = 1\.0"),
    ("channels_last", "yes", r"channels_last = 'yes' .* True or False"),
    ("run_name", "../x", r"run_name = '\.\./x'"),
    ("hidden_dim", 128, r"hidden_dim = 128 .* 256 to load the resnet50 checkpoint"),
    ("lr_drop", 0, r"lr_drop = 0 .* or None"),
])
def test_bad_values_are_refused_with_the_field_and_the_allowed_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**{field: value})


def test_without_a_checkpoint_the_architecture_is_free():
    cfg = dataclasses.replace(make_config("demo"), checkpoint=None, hidden_dim=64, nheads=4)
    assert cfg.hidden_dim == 64
    with pytest.raises(ValueError, match=r"hidden_dim = 66 .* divisible by nheads \(4\)"):
        dataclasses.replace(cfg, hidden_dim=66)


def test_unknown_make_config_parameter_is_named():
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['epoch'\]"):
        make_config(epoch=3)


def test_cli_overrides_are_typed(tmp_path):
    path = tmp_path / "run.json"
    make_config("demo").to_json(path)
    cfg = config_from_args(["--config", str(path), "--set", "epochs=3", "--set", "lr_drop=none",
                            "--set", "train_scales=64,96", "--set", "progress=false", "--set", "lr=2e-4"])
    assert (cfg.epochs, cfg.lr_drop, cfg.train_scales, cfg.progress, cfg.lr) == (3, None, (64, 96), False, 2e-4)
    with pytest.raises(ValueError, match="--set epochs=three"):
        config_from_args(["--config", str(path), "--set", "epochs=three"])


def test_study_workers_follow_the_machine(monkeypatch):
    from detr_nb_utils.training import config as config

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(config, "_cuda_available", lambda: True)
    monkeypatch.setattr(config.os, "cpu_count", lambda: 16)
    assert make_config("study").num_workers == 8  # a GPU machine: enough to feed it, two cores left
    assert make_config("study", num_workers=3).num_workers == 3  # an explicit value wins
    assert make_config("study", device="cpu").num_workers == 2
    assert make_config("demo").num_workers == 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun, 4 GPUs: the cores are shared
    assert make_config("study").num_workers == 2
    monkeypatch.setattr(config, "_cuda_available", lambda: False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert make_config("study").num_workers == 2
    assert config.default_num_workers("cuda:0", cores=6) == 4


FLOAT_FIELDS = [f.name for f in dataclasses.fields(RunConfig) if f.type.startswith("float")]


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("field", FLOAT_FIELDS)
def test_non_finite_floats_are_refused_naming_the_field_value_and_range(field, value):
    with pytest.raises(ValueError, match=rf"RunConfig\.{field} = {value!r} is invalid: must be a finite number in "
                                         r"[\[(]-?\d"):
        make_config("demo", **{field: value})


def test_every_float_field_is_checked():
    assert set(FLOAT_FIELDS) == {"dropout", "eos_coef", "lr", "lr_backbone", "weight_decay", "clip_max_norm"}


@pytest.mark.parametrize("text", ["inf", "-inf", "nan", "1e999"])
def test_non_finite_values_from_the_notebooks_and_the_cli_are_refused(text, tmp_path):
    from papermill.cli import _resolve_type  # what `papermill -p lr TEXT` does with TEXT
    from papermill.translators import PythonTranslator

    injected: dict = {}
    exec(PythonTranslator.codify({"lr": _resolve_type(text)}), injected)  # the cell papermill injects
    with pytest.raises(ValueError, match=r"RunConfig\.lr = .* must be a finite number"):
        make_config("demo", lr=injected["lr"])
    path = tmp_path / "run.json"
    make_config("demo").to_json(path)
    with pytest.raises(ValueError, match=r"RunConfig\.lr = .* must be a finite number"):
        config_from_args(["--config", str(path), "--set", f"lr={text}"])
    path.write_text(path.read_text().replace('"lr": 0.0001', '"lr": Infinity'))  # json.loads reads it
    with pytest.raises(ValueError, match=r"RunConfig\.lr = inf .* must be a finite number"):
        config_from_args(["--config", str(path)])
