"""Which queries to keep (select_queries, match counts), what each slot predicts (query_usage), and the config field
RunConfig.query_indices that carries the choice into a run (validated, saved, passed to the checkpoint surgery)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from detr_nb_utils.analysis.queries import (
    STRATEGIES,
    analysis_loader,
    query_match_counts,
    query_usage,
    select_queries,
    usage_summary,
)
from detr_nb_utils.data.synthetic import make_synthetic_coco
from detr_nb_utils.models.detr import TINY_DETR, build_detr
from detr_nb_utils.training import engine as engine
from detr_nb_utils.training import runs as runs
from detr_nb_utils.training.cli import config_from_args
from detr_nb_utils.training.config import RunConfig, make_config
from detr_nb_utils.training.data_setup import prepare_data

NUM_CLASSES = 91


class StubDETR(nn.Module):
    """Replays prepared outputs, one batch per call: slot ``s`` of image ``i`` predicts target ``j`` exactly
    (box and class) for every ``(i, s, j)`` in ``hits``; every other slot predicts "no object" at a corner."""

    def __init__(self, batches: list[list[dict]], hits: list[list[tuple[int, int, int]]], num_queries: int = 6) -> None:
        super().__init__()
        self.num_queries, self.calls = num_queries, 0
        self.outputs = [self._outputs(targets, batch_hits) for targets, batch_hits in zip(batches, hits)]

    def _outputs(self, targets: list[dict], hits: list[tuple[int, int, int]]) -> dict:
        b, q = len(targets), self.num_queries
        logits = torch.zeros(b, q, NUM_CLASSES + 1)
        logits[..., NUM_CLASSES] = 20.0
        boxes = torch.tensor([0.02, 0.02, 0.04, 0.04]).repeat(b, q, 1)
        for i, s, j in hits:
            logits[i, s, NUM_CLASSES] = 0.0
            logits[i, s, targets[i]["labels"][j]] = 20.0
            boxes[i, s] = targets[i]["boxes"][j]
        return {"pred_logits": logits, "pred_boxes": boxes}

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> dict:
        self.calls += 1
        return self.outputs[self.calls - 1]


def _targets(n_boxes: list[int], seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for k, n in enumerate(n_boxes):
        cxcy = torch.rand(n, 2, generator=g) * 0.5 + 0.25
        wh = torch.rand(n, 2, generator=g) * 0.3 + 0.1
        out.append({"labels": torch.randint(1, NUM_CLASSES, (n,), generator=g), "boxes": torch.cat([cxcy, wh], 1),
                    "image_id": torch.tensor(100 + k)})
    return out


def _loader(targets_per_batch: list[list[dict]], size=(32, 32)) -> list[tuple]:
    return [(torch.zeros(len(t), 3, *size), torch.zeros(len(t), *size, dtype=torch.bool), t)
            for t in targets_per_batch]


# ---- select_queries ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_queries, total", [(50, 100), (3, 10), (10, 10), (1, 100), (99, 100)])
def test_first_and_spread_are_distinct_sorted_and_in_range(num_queries, total):
    assert select_queries("first", num_queries, total) == list(range(num_queries))
    spread = select_queries("spread", num_queries, total)
    assert len(spread) == len(set(spread)) == num_queries and spread == sorted(spread)
    assert spread[0] == 0 and (num_queries == 1 or spread[-1] == total - 1)
    gaps = np.diff(spread)
    assert num_queries < 3 or gaps.max() - gaps.min() <= 1  # evenly spread: steps differ by at most one


def test_spread_fifty_of_a_hundred():
    spread = select_queries("spread")
    assert spread[:4] == [0, 2, 4, 6] and spread[-1] == 99 and all(type(i) is int for i in spread)


def test_most_matched_takes_the_highest_counts_ties_by_lower_index():
    counts = np.array([5, 1, 5, 0, 7, 5])
    assert select_queries("most_matched", 3, 6, counts) == [0, 2, 4]  # 7 at 4, then the 5s at 0 and 2 (not 5)
    assert select_queries("most_matched", 1, 6, counts) == [4]
    assert all(type(i) is int for i in select_queries("most_matched", 3, 6, counts))


@pytest.mark.parametrize("kwargs, message", [
    (dict(strategy="best"), r"strategy must be one of \('first', 'most_matched', 'spread'\), got 'best'"),
    (dict(strategy="most_matched"), r"counts is required for strategy='most_matched'"),
    (dict(strategy="most_matched", counts=np.ones(50)), r"counts must have one entry per slot \(total=100\)"),
    (dict(strategy="first", num_queries=101), r"num_queries must be an integer in 1\.\.total \(100\), got 101"),
    (dict(strategy="spread", num_queries=0), r"num_queries must be an integer in 1\.\.total"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        select_queries(**kwargs)
    assert set(STRATEGIES) == {"first", "most_matched", "spread"}


# ---- match counts --------------------------------------------------------------------------------------------

def test_match_counts_count_the_slots_that_predict_the_objects():
    batches = [_targets([2, 1]), _targets([3], seed=1), _targets([0, 2], seed=2)]
    hits = [[(0, 4, 0), (0, 1, 1), (1, 4, 0)], [(0, 0, 2), (0, 4, 1), (0, 5, 0)], [(1, 1, 0), (1, 4, 1)]]
    counts = query_match_counts(StubDETR(batches, hits), _loader(batches))
    assert counts.tolist() == [1, 2, 0, 0, 4, 1] and counts.dtype == np.int64


def test_match_counts_of_a_real_model_add_up_to_the_objects():
    torch.manual_seed(0)
    model = build_detr(enc_layers=1, dec_layers=2, num_queries=10, hidden_dim=64, nheads=4, dim_feedforward=128)
    model.train()
    batches = [_targets([3, 0]), _targets([7, 10], seed=1)]
    counts = query_match_counts(model, _loader(batches, (64, 96)))
    assert counts.shape == (10,) and counts.sum() == 20  # every object is matched once: Q >= objects per image
    assert model.training  # the caller's mode is restored


# ---- query usage ---------------------------------------------------------------------------------------------

def test_query_usage_records_every_prediction_with_its_checkpoint_slot():
    batches = [_targets([2, 1]), _targets([1], seed=1)]
    hits = [[(0, 4, 0), (0, 1, 1), (1, 4, 0)], [(0, 2, 0)]]
    slots = [10, 20, 30, 40, 50, 60]
    records = query_usage(StubDETR(batches, hits), _loader(batches), query_indices=slots)
    assert len(records) == 3 * 6
    assert records["query"].tolist()[:6] == list(range(6)) and records["slot"].tolist()[:6] == slots
    assert records["image_id"].tolist() == [100] * 6 + [101] * 6 + [100] * 6
    objects = records[records["is_object"]]
    assert sorted(zip(objects["image_id"], objects["query"])) == [(100, 1), (100, 2), (100, 4), (101, 4)]
    first = records.iloc[4]  # image 100, query 4 predicts target 0 exactly
    assert np.allclose(first[["cx", "cy", "w", "h"]].to_numpy(float), batches[0][0]["boxes"][0].numpy())
    assert first["label"] == int(batches[0][0]["labels"][0]) and first["score"] > 0.99

    summary = usage_summary(records)
    assert summary.loc[50, "object_rate"] == pytest.approx(2 / 3) and summary.loc[10, "objects"] == 0
    assert (summary["predictions"] == 3).all()
    assert usage_summary(records, score_threshold=0.999)["objects"].sum() == 4
    assert usage_summary(records, score_threshold=0.0)["objects"].sum() == 18


def test_query_usage_of_a_real_model_gives_boxes_in_the_unit_square():
    torch.manual_seed(0)
    model = build_detr(enc_layers=1, dec_layers=2, num_queries=10, hidden_dim=64, nheads=4, dim_feedforward=128)
    records = query_usage(model.eval(), _loader([_targets([1, 2])], (64, 96)))
    assert len(records) == 20 and set(records["slot"]) == set(range(10))
    assert records[["cx", "cy", "w", "h", "score"]].apply(lambda c: c.between(0, 1)).all().all()
    with pytest.raises(ValueError, match="query_indices must list the model's 10 queries"):
        query_usage(model, [], query_indices=[1, 2])


def test_analysis_loader_reads_the_train_split_without_augmentation(tmp_path):
    make_synthetic_coco(tmp_path / "coco", n_images=6, seed=0, image_size=(64, 96))
    cfg = make_config("demo", data_root=str(tmp_path / "coco"), split_dir=str(tmp_path / "split"), n_train=4,
                      n_val=2, min_size=64, max_size=96, train_scales=(64,), eval_batch_size=3)
    cfg = dataclasses.replace(cfg, checkpoint=None)  # nothing to load (make_config reads None as "the default")
    data = prepare_data(cfg)
    first, second = list(analysis_loader(cfg, data)), list(analysis_loader(cfg, data))
    assert [len(b[2]) for b in first] == [3, 1]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, second))  # deterministic: no random crops/flips
    with pytest.raises(ValueError, match="split must be 'train' or 'val'"):
        analysis_loader(cfg, data, "test")


def test_analysis_loader_reads_validation_images_from_the_validation_folder(tmp_path):
    """A dataset whose validation images live in their own folder (your own data's layout): the val loader reads
    them there, the train loader the training folder."""
    from detr_nb_utils.training.data_setup import DataSetup

    make_synthetic_coco(tmp_path / "coco", n_images=6, seed=0, image_size=(64, 96))
    cfg = make_config("demo", data_root=str(tmp_path / "coco"), split_dir=str(tmp_path / "split"), n_train=4,
                      n_val=2, min_size=64, max_size=96, train_scales=(64,))
    cfg = dataclasses.replace(cfg, checkpoint=None)
    data = engine.prepare_data(cfg)
    val_images = tmp_path / "val_images"
    val_images.mkdir()
    for image in data.image_dir.iterdir():  # the validation folder holds the images; the training one loses them
        image.rename(val_images / image.name)
    moved = DataSetup(tmp_path / "no_train_images", data.train_file, data.val_file, data.manifest_file,
                      data.annotation_file, val_image_dir=val_images)
    assert len(list(analysis_loader(cfg, moved, "val"))) == 1
    with pytest.raises((FileNotFoundError, RuntimeError)):
        list(analysis_loader(cfg, moved, "train"))


# ---- RunConfig.query_indices ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value, reason", [
    ((1, 2), r"it lists 2 slots"),
    (tuple(range(49)) + (3,), r"it repeats slot\(s\) \[3\]"),
    (tuple(range(51, 101)), r"slot\(s\) \[100\] are out of range"),
    (tuple(range(-1, 49)), r"slot\(s\) \[-1\] are out of range"),
    ((1.0,) * 50, r"it is not a tuple of integers"),
    ("0,1", r"it is not a tuple of integers"),
])
def test_bad_query_indices_are_refused_with_the_reason(value, reason):
    with pytest.raises(ValueError, match=r"RunConfig\.query_indices = .* invalid \(" + reason
                       + r".*num_queries \(50\) distinct integers in 0\.\.99"):
        make_config("demo", dec_layers=3, num_queries=50, query_indices=value)


def test_query_indices_need_a_checkpoint():
    cfg = make_config("demo", num_queries=3, query_indices=(5, 1, 9))
    with pytest.raises(ValueError, match="checkpoint is None"):
        dataclasses.replace(cfg, checkpoint=None)


def test_query_indices_round_trip_and_name_their_own_run_folder(tmp_path):
    spread = make_config("demo", dec_layers=3, num_queries=50, query_indices=select_queries("spread"))
    assert isinstance(spread.query_indices, tuple)
    assert RunConfig.from_json(spread.to_json(tmp_path / "c.json")) == spread
    first = make_config("demo", dec_layers=3, num_queries=50, query_indices=list(range(50)))
    assert first.query_indices is None and first == make_config("demo", dec_layers=3, num_queries=50)
    assert first.run_dir.name == "dec3_q50" and spread.run_dir.name.startswith("dec3_q50_idx")
    other = dataclasses.replace(spread, query_indices=tuple(select_queries("most_matched", counts=np.arange(100))))
    assert other.run_dir != spread.run_dir
    assert dataclasses.replace(spread, run_name="mine").run_dir.name == "mine"
    cli = config_from_args(["--config", str(tmp_path / "c.json"), "--set", "query_indices=" +
                            ",".join(map(str, range(50, 100)))])
    assert cli.query_indices == tuple(range(50, 100))


def test_a_run_folder_refuses_another_query_choice(tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text("{}")
    cfg = make_config("demo", dec_layers=3, num_queries=50, query_indices=select_queries("spread"),
                      out_dir=str(tmp_path), run_name="q")
    runs.prepare_run_dir(cfg, manifest)
    runs.prepare_run_dir(RunConfig.from_json(cfg.run_dir / runs.CONFIG), manifest)  # the same choice resumes
    with pytest.raises(runs.RunConfigMismatch, match=r"query_indices: \[0, 2, .*\] in the folder, None now"):
        runs.prepare_run_dir(dataclasses.replace(cfg, query_indices=None), manifest)


def test_build_model_keeps_the_chosen_query_embeddings(tmp_path):
    torch.manual_seed(3)
    sd = build_detr(**TINY_DETR).state_dict()  # the demo profile's architecture
    torch.save({"model": sd}, tmp_path / "detr.pth")
    cfg = make_config("demo", checkpoint=str(tmp_path / "detr.pth"), dec_layers=1, num_queries=3,
                      query_indices=(90, 3, 50))
    model, _, report = engine.build_model(cfg, torch.device("cpu"))
    assert torch.equal(model.query_embed.weight, sd["query_embed.weight"][[90, 3, 50]])
    assert report.keys("sliced") == ["query_embed.weight"]
