"""NaN and infinity are caught where they start: non-finite model outputs are named (which output, epoch, step,
images, what to do) before the matcher would fail on them inside scipy, in the training step and in evaluation;
nothing of the failing step reaches the weights or the run folder."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from pycocotools.coco import COCO
from tiny_run import tiny_config

from detr_nb_utils.training import engine as engine
from detr_nb_utils.training import runs as runs
from detr_nb_utils.training.config import RunConfig
from detr_nb_utils.training.evaluation import evaluate
from detr_nb_utils.training.non_finite import NonFiniteOutputError, finite_flags, output_names


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory) -> RunConfig:
    return tiny_config(tmp_path_factory.mktemp("non_finite"))


def _poison_boxes(model) -> None:
    """Make every decoder layer's ``pred_boxes`` NaN (the box head's last layer), leaving ``pred_logits`` finite."""
    with torch.no_grad():
        model.bbox_embed.layers[-1].bias.fill_(float("nan"))


def _setup(cfg):
    data = engine.prepare_data(cfg)
    model, criterion, _ = engine.build_model(cfg, torch.device("cpu"), data.labels)
    return data, model, criterion


def test_flags_name_each_output_of_each_layer(tiny_cfg):
    data, model, _ = _setup(tiny_cfg)
    loader = engine.build_loader(tiny_cfg, data, "val", torch.device("cpu"))
    images, mask, _ = next(iter(loader))
    model.eval()
    with torch.no_grad():
        outputs = model(images, mask)
    assert output_names(outputs) == ["aux_outputs[0].pred_logits", "pred_logits",
                                     "aux_outputs[0].pred_boxes", "pred_boxes"]
    assert finite_flags(outputs).tolist() == [True] * 4
    outputs["aux_outputs"][0]["pred_logits"] = outputs["aux_outputs"][0]["pred_logits"].clone()
    outputs["aux_outputs"][0]["pred_logits"][1, 3, 0] = float("inf")
    outputs["pred_boxes"] = outputs["pred_boxes"].clone()
    outputs["pred_boxes"][0, 0, 2] = float("nan")
    assert finite_flags(outputs).tolist() == [False, True, True, False]
    outputs["pred_logits"] = torch.full_like(outputs["pred_logits"], 3e38)  # huge but finite: no false alarm
    assert finite_flags(outputs).tolist() == [False, True, True, False]
    outputs["pred_logits"][0, 0, 0] = -float("inf")
    assert finite_flags(outputs).tolist() == [False, False, True, False]


def test_non_finite_outputs_stop_the_training_step_before_the_matcher(tiny_cfg):
    data, model, criterion = _setup(tiny_cfg)
    _poison_boxes(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = engine.build_optimizer(model, tiny_cfg)
    loader = engine.build_loader(tiny_cfg, data, "train", torch.device("cpu"))
    with pytest.raises(NonFiniteOutputError) as info:  # was scipy's "matrix contains invalid numeric entries"
        engine.train_one_epoch(model, criterion, loader, optimizer, "cpu", 3, tiny_cfg)
    message = str(info.value)
    assert message.startswith("non-finite model output at epoch 3, step 0 (image ids [")
    assert "aux_outputs[0].pred_boxes, pred_boxes hold NaN or infinite values" in message
    assert "pred_logits" not in message and "Lower lr or clip_max_norm" in message
    assert info.value.outputs == ["aux_outputs[0].pred_boxes", "pred_boxes"]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) or before[k].isnan().any() for k in before)  # no step taken


def test_non_finite_outputs_are_named_in_evaluation(tiny_cfg):
    data, model, criterion = _setup(tiny_cfg)
    _poison_boxes(model)
    loader = engine.build_loader(tiny_cfg, data, "val", torch.device("cpu"))
    with pytest.raises(NonFiniteOutputError, match=r"at evaluation batch 0 \(image ids \[\d+, \d+\]\): "
                                                   r"aux_outputs\[0\]\.pred_boxes, pred_boxes hold NaN"):
        evaluate(model, criterion, loader, COCO(str(data.val_file)), "cpu", cocoeval_workers=0)


def test_a_diverging_run_is_stopped_with_the_project_error_and_keeps_its_last_epoch(tiny_cfg):
    cfg = dataclasses.replace(tiny_cfg, run_name="diverges", lr=1e30)  # finite, accepted: the first step explodes
    with pytest.raises(engine.NonFiniteError) as info:
        engine.run_experiment(cfg)
    message = str(info.value)
    assert isinstance(info.value, NonFiniteOutputError), message  # caught at the outputs, not inside the matcher
    assert message.startswith("non-finite model output at epoch 1, step 1 (image ids [")
    assert message.endswith(f"Lower lr or clip_max_norm. Last good checkpoint: {cfg.run_dir / runs.LAST}")
    assert torch.load(cfg.run_dir / runs.LAST, weights_only=True)["epoch"] == 0  # epoch 0 kept, nothing after


def test_weights_that_start_non_finite_are_named_at_epoch_0(tiny_cfg, monkeypatch, tmp_path):
    real = engine.build_model

    def damaged(*args, **kwargs):
        model, criterion, report = real(*args, **kwargs)
        _poison_boxes(model)
        return model, criterion, report

    monkeypatch.setattr(engine, "build_model", damaged)
    # its own out_dir: the poisoned weights are invisible to the key of the epoch-0 evaluations other tests shared
    cfg = dataclasses.replace(tiny_cfg, run_name="starts_damaged", out_dir=str(tmp_path / "runs"))
    with pytest.raises(NonFiniteOutputError, match=r"at the evaluation of epoch 0, evaluation batch 0 .* the weights "
                                                   r"it starts from \(random weights\), before any training") as info:
        engine.run_experiment(cfg)
    assert "Last good checkpoint" not in str(info.value) and not (cfg.run_dir / runs.LAST).exists()
    with pytest.raises(NonFiniteOutputError, match="evaluation of epoch 0"):
        engine.evaluate_checkpoint(cfg)
