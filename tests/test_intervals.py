"""06's tables with intervals, on run folders made by hand: detections of known quality on the real sample."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_stats import perturbed_detections, sample_gt  # noqa: F401 (fixture)

from detr_nb_utils.analysis import comparison
from detr_nb_utils.analysis.conclusions import uncertainty_conclusion
from detr_nb_utils.training import runs as runs
from detr_nb_utils.training.config import make_config, seed_configs, variant_of


def _write_run(out_dir: Path, name: str, split_dir: Path, dec_layers: int, num_queries: int, seed: int,
               epochs: dict[int, dict], gt) -> None:
    """A run folder holding what 06 reads: config, manifest, metrics.jsonl (AP as COCOeval gives it) and the
    detections of each epoch."""
    cfg = dataclasses.replace(make_config("demo", out_dir=str(out_dir), split_dir=str(split_dir),
                                          dec_layers=dec_layers, num_queries=num_queries, epochs=max(epochs)),
                              seed=seed, run_name=name)
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / runs.CONFIG).write_text(cfg.to_json())
    (cfg.run_dir / runs.MANIFEST).write_text(json.dumps({"n_train": 0, "n_val": len(gt.getImgIds())}))
    from detr_nb_utils.analysis.bootstrap import MatchedDetections, ap_interval
    history = []
    for epoch, dets in epochs.items():
        runs.save_detections(cfg.run_dir, epoch, dets)
        ap = ap_interval(MatchedDetections(gt, dets, sorted(gt.getImgIds())), n_resamples=2)["AP"]["point"]
        row = {"epoch": epoch, "random_weights": False, "val_AP": ap, "val_loss_total": 1.0 / (1 + ap)}
        row |= {f"val_AP_layer_{layer}": ap for layer in range(dec_layers)}
        history.append(row)
    runs.write_logs(cfg.run_dir, history)


@pytest.fixture(scope="module")
def run_folders(sample_gt, coco_sample, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("intervals")
    split = tmp / "split"
    split.mkdir()
    shutil.copyfile(coco_sample / "annotations" / "instances_val2017_sample.json", split / "val.json")
    good = perturbed_detections(sample_gt, 0.03, seed=1, drop=0.05)
    bad = perturbed_detections(sample_gt, 0.25, seed=2, drop=0.4)
    mid = perturbed_detections(sample_gt, 0.25, seed=3, drop=0.35)
    out = tmp / "runs"
    # the baseline gains a lot by fine-tuning; the shallow one starts where the baseline's layer 3 was and gains
    # nothing; the 50-query "spread" choice is as bad as the first 50
    _write_run(out, "dec6_q100_seed42", split, 6, 100, 42, {0: bad, 1: good}, sample_gt)
    _write_run(out, "dec6_q100_seed43", split, 6, 100, 43, {0: bad, 1: mid}, sample_gt)
    _write_run(out, "dec3_q100_seed42", split, 3, 100, 42, {0: bad, 1: bad}, sample_gt)
    _write_run(out, "dec3_q50_seed42", split, 3, 50, 42, {0: bad, 1: mid}, sample_gt)
    _write_run(out, "dec3_q50_spread_seed42", split, 3, 50, 42, {0: bad, 1: mid}, sample_gt)
    (out / "not_a_run").mkdir()
    return out


def test_runs_are_found_and_grouped_by_variant(run_folders):
    names = comparison.discover_runs(run_folders)
    assert names == ["dec3_q100_seed42", "dec3_q50_seed42", "dec3_q50_spread_seed42", "dec6_q100_seed42",
                     "dec6_q100_seed43"]
    records = comparison.load_runs(run_folders)
    assert {v: list(r) for v, r in comparison.by_variant(records).items()}["dec6_q100"] == \
        ["dec6_q100_seed42", "dec6_q100_seed43"]
    assert comparison.first_seed_runs(records)["dec6_q100"].config.seed == 42
    assert comparison.missing_variants(records, ["dec6_q100", "dec9_q7"]) == ["dec9_q7"]
    seeds = comparison.seeds_table(records)
    assert seeds.loc["dec6_q100", ("best AP", "seeds")] == 2 and seeds.loc["dec3_q100", ("best AP", "seeds")] == 1


def test_gains_differences_and_conclusion(run_folders):
    records = comparison.load_runs(run_folders)
    bootstrap = comparison.ApBootstrap(records, n_resamples=200)
    first = comparison.first_seed_runs(records)
    main = {v: first[v] for v in ("dec6_q100", "dec3_q100", "dec3_q50")}  # 06's order: the baseline first
    zero = comparison.finetuning_gain_table(bootstrap, main)
    assert zero.loc["dec6_q100", "gain excludes 0"] and zero.loc["dec6_q100", "gain low"] > 0
    assert zero.loc["dec3_q100", "gain"] == 0 and not zero.loc["dec3_q100", "gain excludes 0"]
    for col in ("epoch-0 AP", "best AP"):
        assert (zero[f"{col} low"] <= zero[col]).all() and (zero[col] <= zero[f"{col} high"]).all()
    assert zero.loc["dec6_q100", "best AP"] == pytest.approx(100 * main["dec6_q100"].metrics.loc[1, "val_AP"])
    diffs = comparison.differences_table(bootstrap, main)
    row = diffs.set_index(["a", "b"]).loc[("dec6_q100", "dec3_q100")]
    assert row["AP a - b"] > 0 and row["AP a - b excludes 0"]
    equivalence = comparison.layer_equivalence(main)
    assert equivalence["layers"] == 3 and equivalence["abs_diff"] == 0
    choices = {v: r for v, r in comparison.first_seed_runs(records).items() if v in comparison.QUERY_CHOICES}
    qdiffs = comparison.differences_table(bootstrap, choices, [("dec3_q50_spread", "dec3_q50")])
    assert qdiffs.loc[0, "AP a - b"] == 0 and not qdiffs.loc[0, "AP a - b excludes 0"]
    text = uncertainty_conclusion(zero, diffs, qdiffs, equivalence, comparison.seeds_table(records),
                                         len(bootstrap.img_ids), 200)
    assert "over the 206 validation images (200 resamples" in text
    g = zero.loc["dec6_q100"]
    gain = f"{g['gain']:+.1f} [{g['gain low']:+.1f}, {g['gain high']:+.1f}]"
    assert f"gain over its own epoch 0 {gain} (larger than its interval)" in text
    assert "dec6_q100 - dec3_q100" in text.split("Of these, larger than its interval")[1].split("\n")[0]
    assert "Which 50 queries, best epochs" in text and "none is larger than its interval" in text
    assert "equals the 6-layer model's layer-3 AP" in text
    assert "dec6_q100" in text.split("Best AP over seeds")[1] and "(n=2)" in text


def test_seed_configs_name_each_seed(tmp_path):
    cfg = make_config("demo", out_dir=str(tmp_path), dec_layers=3, num_queries=50)
    configs = seed_configs(cfg)  # the demo's two seeds
    assert [c.run_dir.name for c in configs] == ["dec3_q50_seed42", "dec3_q50_seed43"]
    assert [c.seed for c in configs] == [42, 43]
    assert seed_configs(cfg, 1, name="dec3_q50_spread")[0].run_dir.name == "dec3_q50_spread_seed42"
    with pytest.raises(ValueError, match="n_seeds"):
        seed_configs(cfg, 0)
    assert variant_of(configs[1].run_dir.name) == "dec3_q50"
    assert np.array_equal(sorted(comparison.QUERY_CHOICES.values()), ["first", "most_matched", "spread"])
