"""06's tables with intervals, on run folders made by hand: detections of known quality on the real sample, found by
what the folders hold, compared at the final epoch, with a fine-tuning that loses AP."""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_bootstrap import perturbed_detections, sample_gt  # noqa: F401 (fixture)

from detr_nb_utils.analysis import comparison
from detr_nb_utils.analysis.baseline import best_of, versus_baseline
from detr_nb_utils.analysis.bootstrap import MatchedDetections, holm, top_per_image
from detr_nb_utils.analysis.run_bootstrap import ApBootstrap
from detr_nb_utils.analysis.conclusions import (
    ANSWER_WORDS,
    agreements,
    rankings,
    study_findings,
)
from detr_nb_utils.analysis.findings import by_key, findings_json, read_findings
from detr_nb_utils.analysis.limitations import study_limitations
from detr_nb_utils.analysis.queries import select_queries
from detr_nb_utils.analysis.templates import (
    answer,
    changes_paragraph,
    differences_paragraph,
    words,
)
from detr_nb_utils.training import runs
from detr_nb_utils.training.config import make_config, seed_configs, variant_of

TERMS = ("loss_ce", "loss_bbox", "loss_giou")


def _losses(layers: int, base: float) -> dict:
    """Loss terms that differ for every layer (layer k: base + k, aux layers suffixed ``_k``), and their views."""
    row = {}
    for k in range(layers):
        suffix = "" if k == layers - 1 else f"_{k}"
        row |= {f"val_{t}{suffix}": base + k + i / 10 for i, t in enumerate(TERMS)}
    per_layer = [sum(row[f"val_{t}{'' if k == layers - 1 else f'_{k}'}"] for t in TERMS) for k in range(layers)]
    return row | {"val_loss_total": sum(per_layer), "val_loss_final": per_layer[-1],
                  "val_loss_layer_mean": sum(per_layer) / layers}


def _write_run(out_dir: Path, name: str, split_dir: Path, dec_layers: int, num_queries: int, seed: int,
               epochs: dict[int, dict], gt, query_indices=None, precision: str = "fp32",
               layer_ap: dict[int, list[float]] | None = None, loss_base: dict[int, float] | None = None) -> None:
    """A run folder holding what 06 reads: config, manifest, metrics.jsonl (AP as COCOeval gives it, a different AP
    for every decoder layer: ``layer_ap[epoch]`` or the final AP x (k + 1) / layers; loss terms that differ per
    layer) and the detections of each epoch."""
    cfg = dataclasses.replace(make_config("demo", out_dir=str(out_dir), split_dir=str(split_dir),
                                          dec_layers=dec_layers, num_queries=num_queries, epochs=max(epochs),
                                          query_indices=query_indices, precision="auto"), seed=seed, run_name=name)
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / runs.CONFIG).write_text(cfg.to_json())
    (cfg.run_dir / runs.MANIFEST).write_text(json.dumps({"n_train": 0, "n_val": len(gt.getImgIds())}))
    history = []
    for epoch, dets in epochs.items():
        runs.save_detections(cfg.run_dir, epoch, dets)
        ap = MatchedDetections(gt, dets, sorted(gt.getImgIds())).point[0]
        layer = (layer_ap or {}).get(epoch) or [ap * (k + 1) / dec_layers for k in range(dec_layers)]
        row = {"epoch": epoch, runs.PRECISION_FIELD: precision, "val_AP": ap,
               "val_num_images": len(gt.getImgIds()), **_losses(dec_layers, (loss_base or {}).get(epoch, 10.0 - ap))}
        row |= {f"val_AP_layer_{k}": a for k, a in enumerate(layer)}
        if epoch > 0:  # training terms 0.25 below the validation ones: a final-layer gap of 0.25 x (1 + 5 + 2)
            row |= {k.replace("val_", "train_", 1): v - 0.25 for k, v in row.items()
                    if k.startswith("val_loss_") and not k.startswith(("val_loss_total", "val_loss_final",
                                                                          "val_loss_layer_mean"))}
        history.append(row)
    runs.write_logs(cfg.run_dir, history)


@pytest.fixture(scope="module")
def quality(sample_gt):  # noqa: F811
    """Detection sets of known quality: ``good`` (and ``good too``, as good) > ``mid`` > ``bad``, with more than 50 detections on every image
    (as a 100-query model), and ``layer3`` the 6-layer model's third layer at epoch 0."""
    return {"good": perturbed_detections(sample_gt, 0.03, seed=1, drop=0.05, n_false=60),
            "bad": perturbed_detections(sample_gt, 0.25, seed=2, drop=0.4, n_false=60),
            "mid": perturbed_detections(sample_gt, 0.12, seed=3, drop=0.2, n_false=60),
            "good too": perturbed_detections(sample_gt, 0.03, seed=5, drop=0.05, n_false=60),
            "layer3": perturbed_detections(sample_gt, 0.2, seed=4, drop=0.3, n_false=60)}


@pytest.fixture(scope="module")
def run_folders(sample_gt, coco_sample, quality, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("intervals")
    split = tmp / "split"
    split.mkdir()
    shutil.copyfile(coco_sample / "annotations" / "instances_val2017_sample.json", split / "val.json")
    q = quality
    q50 = {k: top_per_image(v, 50) for k, v in q.items()}  # a 50-query model outputs 50 detections per image
    img_ids = sorted(sample_gt.getImgIds())
    ap = {k: MatchedDetections(sample_gt, v, img_ids).point[0] for k, v in q.items()}
    out = tmp / "runs"
    # the baseline improves with fine-tuning; at epoch 0 its layer 3 scores like `layer3`, with the loss terms of
    # layer index 2 (base 10 + 2)
    deep_layers = [ap["bad"] / 4, ap["bad"] / 3, ap["layer3"], ap["bad"] / 2, ap["bad"] * 0.9, ap["bad"]]
    _write_run(out, "dec6_q100_seed42", split, 6, 100, 42, {0: q["bad"], 1: q["mid"], 2: q["good"]}, sample_gt,
               layer_ap={0: deep_layers}, loss_base={0: 10.0})
    _write_run(out, "dec6_q100_seed43", split, 6, 100, 43, {0: q["bad"], 1: q["mid"], 2: q["mid"]}, sample_gt,
               layer_ap={0: deep_layers}, loss_base={0: 10.0})
    # the shallow decoder, under a custom run_name: it starts where the baseline's layer 3 was, peaks at epoch 1 and
    # LOSES AP by its final epoch
    _write_run(out, "shallow_try", split, 3, 100, 42, {0: q["layer3"], 1: q["good"], 2: q["bad"]}, sample_gt,
               loss_base={0: 10.0})
    _write_run(out, "dec3_q50_seed42", split, 3, 50, 42, {0: q50["bad"], 1: q50["mid"], 2: q50["mid"]}, sample_gt)
    _write_run(out, "evenly_spread", split, 3, 50, 42, {0: q50["bad"], 1: q50["mid"], 2: q50["mid"]}, sample_gt,
               query_indices=tuple(select_queries("spread", 50, 100)))
    # two fine-tuned epochs alike: which is best depends on the images drawn
    _write_run(out, "dec3_q50_most_matched_seed42", split, 3, 50, 42,
               {0: q50["bad"], 1: q50["good"], 2: q50["good too"]}, sample_gt, query_indices=tuple(range(50, 100)))
    (out / "not_a_run").mkdir()
    (out / "report").mkdir()
    return out


@pytest.fixture(scope="module")
def analysed(run_folders):
    records = comparison.load_runs(run_folders)
    groups = comparison.by_variant(records)
    main = {v: groups[v] for v in ("dec6_q100", "dec3_q100", "dec3_q50")}  # 06's order: the baseline first
    bootstrap = ApBootstrap(records, n_resamples=300)
    return records, groups, main, bootstrap


def test_runs_are_found_by_content(run_folders, analysed):
    records, groups, _, _ = analysed
    folders = {p.name for p in run_folders.iterdir() if not p.name.startswith(".")}  # not the stored scores
    assert set(comparison.discover_runs(run_folders)) == folders - {"not_a_run", "report"}
    assert {v: list(r) for v, r in groups.items()} == {
        "dec3_q100": ["shallow_try"],  # a custom run_name is found, as the variant its config says
        "dec3_q50": ["dec3_q50_seed42"],
        "dec3_q50_most_matched": ["dec3_q50_most_matched_seed42"],  # slots 05 chose from match counts: named
        "dec3_q50_spread": ["evenly_spread"],  # the evenly spread slots are recognised from the config
        "dec6_q100": ["dec6_q100_seed42", "dec6_q100_seed43"]}
    assert comparison.first_seed_runs(records)["dec6_q100"].config.seed == 42
    assert comparison.missing_variants(records, ["dec6_q100", "dec9_q7"]) == ["dec9_q7"]
    seeds = comparison.seeds_table(records)
    assert seeds.loc[("dec6_q100", "final epoch"), "seeds"] == 2 and seeds.loc[("dec3_q100", "final epoch"), "seeds"] == 1
    assert not isinstance(seeds.columns, pd.MultiIndex)  # flat headers: no tuple printed in a report


def _copy(src: Path, dst: Path, **changes) -> None:
    """``src`` copied to ``dst`` with metrics rows or manifest changed."""
    shutil.copytree(src, dst)
    if "manifest" in changes:
        (dst / runs.MANIFEST).write_text(json.dumps(changes["manifest"]))
    if "precision" in changes:
        rows = [json.loads(line) for line in (dst / runs.METRICS).read_text().splitlines()]
        rows = [{k: v for k, v in r.items() if k != runs.PRECISION_FIELD} | (
            {runs.PRECISION_FIELD: changes["precision"]} if changes["precision"] else {}) for r in rows]
        runs.write_logs(dst, rows)
    if "seed" in changes:
        cfg = json.loads((dst / runs.CONFIG).read_text()) | {"seed": changes["seed"]}
        (dst / runs.CONFIG).write_text(json.dumps(cfg))


@pytest.mark.parametrize(("change", "message"), [
    ({"manifest": {"n_train": 1, "n_val": 24}}, r"were trained on different splits .*differ in n_train"),
    ({"precision": "bf16"}, r"computed in fp32 and .* in bf16"),
    ({"precision": None}, r"unknown \(precision 'auto', no effective_precision recorded\)"),
    ({"seed": 42}, r"both hold dec6_q100 with seed 42"),
])
def test_incomparable_runs_are_refused_naming_both(run_folders, tmp_path, change, message):
    out = tmp_path / "runs"
    out.mkdir()
    shutil.copytree(run_folders / "dec6_q100_seed42", out / "dec6_q100_seed42")
    _copy(run_folders / "dec6_q100_seed43", out / "other_run", **change)
    with pytest.raises(comparison.IncomparableRuns, match=message) as err:
        comparison.load_runs(out)
    assert str(out / "dec6_q100_seed42") in str(err.value) and str(out / "other_run") in str(err.value)
    comparison.load_runs(out, ["other_run"])  # one run alone compares with nothing


@pytest.mark.parametrize(("field", "value"), [("min_size", 128), ("lr", 2e-4), ("epochs", 3),
                                             ("checkpoint", "data/pretrained/other.pth"), ("eval_batch_size", 4),
                                             ("max_val_images", 12)])
def test_runs_of_another_recipe_are_refused_naming_the_field_and_both_folders(run_folders, tmp_path, field, value):
    out = tmp_path / "runs"
    out.mkdir()
    shutil.copytree(run_folders / "dec6_q100_seed42", out / "dec6_q100_seed42")
    shutil.copytree(run_folders / "dec3_q100_seed42" if (run_folders / "dec3_q100_seed42").is_dir()
                    else run_folders / "shallow_try", out / "other")
    cfg = json.loads((out / "other" / runs.CONFIG).read_text()) | {field: value}
    (out / "other" / runs.CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(comparison.IncomparableRuns, match=rf"different recipes, which differ in {field} ") as err:
        comparison.load_runs(out)
    message = str(err.value)
    assert str(out / "dec6_q100_seed42") in message and str(out / "other") in message and repr(value) in message


def test_a_declared_recipe_arm_is_its_own_family(run_folders, tmp_path):
    """A run of the warm-up arm beside the original's: not refused, grouped apart; the same seed twice is no
    duplicate across arms. An arm that also changes another recipe field is refused."""
    out = tmp_path / "runs"
    shutil.copytree(run_folders, out)
    cfg = json.loads((out / "dec6_q100_seed43" / runs.CONFIG).read_text())
    shutil.copytree(out / "dec6_q100_seed43", out / "dec6_q100_warmup_seed42")
    arm = cfg | {"recipe": "warmup", "warmup_steps": 100, "seed": 42}
    (out / "dec6_q100_warmup_seed42" / runs.CONFIG).write_text(json.dumps(arm))
    families = comparison.by_recipe(comparison.load_runs(out))
    assert list(families) == ["original", "warmup"] and list(families["warmup"]) == ["dec6_q100_warmup_seed42"]
    assert "dec6_q100_warmup_seed42" not in comparison.by_variant(families["original"]).get("dec6_q100", {})
    (out / "dec6_q100_warmup_seed42" / runs.CONFIG).write_text(json.dumps(arm | {"min_size": 128}))
    with pytest.raises(comparison.IncomparableRuns, match=r"recipe arms 'original' and 'warmup'\), which differ in "
                                                          r"min_size "):
        comparison.load_runs(out)


def test_headline_is_the_final_epoch_with_seeds_and_the_cap(analysed, sample_gt, quality):  # noqa: F811
    _, _, main, bootstrap = analysed
    head = comparison.headline_table(bootstrap, main)
    final = {v: [r.metrics.loc[r.final_epoch, "val_AP"] for r in g.values()] for v, g in main.items()}
    for v in main:
        assert head.loc[v, "AP"] == pytest.approx(100 * np.mean(final[v]))  # the final epoch, mean over seeds
        for col in ("AP", comparison.AP_CAPPED):
            assert head.loc[v, f"{col} low"] <= head.loc[v, col] <= head.loc[v, f"{col} high"]
    assert head.loc["dec6_q100", "seeds"] == 2 and head.loc["dec6_q100", "final epoch"] == 2
    assert head.loc["dec6_q100", "seed std"] == pytest.approx(100 * np.std(final["dec6_q100"], ddof=1))
    assert np.isnan(head.loc["dec3_q100", "seed std"])
    # the cap: the 50-query model's 50 detections are all kept; the 100-query model's are cut to its 50 best
    assert head.loc["dec3_q50", comparison.AP_CAPPED] == pytest.approx(head.loc["dec3_q50", "AP"])
    img_ids = sorted(sample_gt.getImgIds())
    capped = [MatchedDetections(sample_gt, top_per_image(quality[q], 50), img_ids).point[0] for q in ("good", "mid")]
    assert head.loc["dec6_q100", comparison.AP_CAPPED] == pytest.approx(100 * np.mean(capped))  # seeds' finals
    assert head.loc["dec6_q100", comparison.AP_CAPPED] < head.loc["dec6_q100", "AP"]  # true boxes below rank 50
    # two seeds are not redrawn (that would halve their variance): the interval is the images' alone, of their mean
    a, b = main["dec6_q100"].values()
    mean = (bootstrap.run_ap(a, a.final_epoch)[1] + bootstrap.run_ap(b, b.final_epoch)[1]) / 2
    assert head.loc["dec6_q100", "AP low"] == pytest.approx(100 * np.nanpercentile(mean, 2.5))
    assert head.loc["dec6_q100", "AP high"] == pytest.approx(100 * np.nanpercentile(mean, 97.5))
    assert not bootstrap.stat("dec6_q100", [a, b])["seeds_resampled"]
    # three seeds far apart are redrawn: the interval widens beyond what the images alone give
    three = bootstrap.stat("dec6_q100", [a, b, b])
    assert three["seeds_resampled"] and three["high"] - three["low"] > np.nanpercentile(mean, 97.5) - \
        np.nanpercentile(mean, 2.5)


def test_changes_are_signed_and_the_best_epoch_is_repicked(analysed):
    _, groups, main, bootstrap = analysed
    gains = comparison.finetuning_gain_table(bootstrap, main)
    shallow = main["dec3_q100"]["shallow_try"]
    assert gains.loc["dec3_q100", "change"] < 0 and gains.loc["dec3_q100", "change high"] < 0  # a real loss
    assert gains.loc["dec3_q100", "change excludes 0"]
    assert gains.loc["dec6_q100", "change"] > 0 and gains.loc["dec6_q100", "change low"] > 0
    assert gains.loc["dec3_q100", "change"] == pytest.approx(gains.loc["dec3_q100", "AP"]
                                                             - gains.loc["dec3_q100", "epoch-0 AP"])
    # secondary: the best fine-tuned epoch (1, never 0), its interval re-picked in every resample
    assert gains.loc["dec3_q100", "best epochs"] == "1" and shallow.best_epoch_ap == 1
    assert gains.loc["dec3_q100", "best AP (secondary)"] == pytest.approx(100 * shallow.metrics.loc[1, "val_AP"])
    close = groups["dec3_q50_most_matched"]["dec3_q50_most_matched_seed42"]  # epochs 1 and 2 alike
    best, at = bootstrap.quantity(close, "best")[1], [bootstrap.run_ap(close, e)[1] for e in (1, 2)]
    assert (best == np.maximum(*at)).all()  # each resample takes its own best epoch: the selection is inside
    assert ((at[0] > at[1]).any() and (at[1] > at[0]).any())  # and the resamples disagree on which it is
    fixed = comparison.finetuning_gain_table(bootstrap, {"mm": [close]}).loc["mm"]
    assert fixed["best AP (secondary)"] == pytest.approx(100 * max(bootstrap.run_ap(close, e)[0] for e in (1, 2)))


def test_differences_are_holm_adjusted_and_the_query_pairs_use_the_cap(analysed):
    _, groups, main, bootstrap = analysed
    diffs = comparison.differences_table(bootstrap, main)
    assert diffs.attrs["family"] == 3 and len(diffs) == 3
    on = diffs.set_index(["a", "b"])["compared on"].to_dict()
    # one sign convention: the smaller model minus the one it was cut from
    assert on == {("dec3_q100", "dec6_q100"): "AP", ("dec3_q50", "dec6_q100"): comparison.AP_CAPPED,
                  ("dec3_q50", "dec3_q100"): comparison.AP_CAPPED}
    assert diffs["p Holm"].to_numpy() == pytest.approx(holm(diffs["p"].to_numpy()))
    assert (diffs["p Holm"] >= diffs["p"]).all()
    assert (diffs["excludes 0 (Holm)"] == (diffs["p Holm"] < 0.05)).all()
    row = diffs.set_index(["a", "b"]).loc[("dec3_q50", "dec6_q100")]
    assert row["a - b"] == pytest.approx(row[f"{comparison.AP_CAPPED} a - b"])
    assert row["a - b"] > row["AP a - b"]  # the baseline's 100 detections per image counted for it before the cap
    choices = {v: groups[v] for v in comparison.QUERY_CHOICES}
    qdiffs = comparison.differences_table(bootstrap, choices, [(v, "dec3_q50") for v in choices if v != "dec3_q50"])
    spread = qdiffs.set_index("a").loc["dec3_q50_spread"]  # the same detections as the first 50
    assert spread["a - b"] == 0 and spread["p"] == 1 and not spread["excludes 0 (Holm)"]
    assert qdiffs.attrs["family"] == 2


def test_layer_equivalence_compares_the_right_layer_and_its_losses(analysed):
    _, _, main, _ = analysed
    first = {v: next(iter(g.values())) for v, g in main.items()}
    e = comparison.layer_equivalence(first)
    assert e["layers"] == 3 and e["same"] and e["abs_diff"] == 0 and e["max_loss_rel_diff"] == 0
    assert e["losses"]["loss_ce"] == (12.0, 12.0)  # layer index 2 of the deep run, the final layer of the shallow
    shallow = first["dec3_q100"]
    m = shallow.metrics.copy()
    m.loc[0, "val_loss_ce"] = 13.0  # the deep run's layer index 3
    off = comparison.layer_equivalence(first | {"dec3_q100": dataclasses.replace(shallow, metrics=m)})
    assert off["same_AP"] and not off["same_losses"] and not off["same"]
    m = m.copy()
    m.loc[0, "val_AP"] = 0.0  # AP 0 on both sides: the losses still decide
    deep = first["dec6_q100"]
    d = deep.metrics.copy()
    d.loc[0, "val_AP_layer_2"] = 0.0
    zero = comparison.layer_equivalence({"dec6_q100": dataclasses.replace(deep, metrics=d),
                                         "dec3_q100": dataclasses.replace(shallow, metrics=m)})
    assert zero["same_AP"] and not zero["same"]


def _findings(analysed):
    records, groups, main, bootstrap = analysed
    head, gains = comparison.headline_table(bootstrap, main), comparison.finetuning_gain_table(bootstrap, main)
    diffs = comparison.differences_table(bootstrap, main)
    choices = {v: groups[v] for v in comparison.QUERY_CHOICES}
    qdiffs = comparison.differences_table(bootstrap, choices, comparison.QUERY_PAIRS)
    first = {v: next(iter(g.values())) for v, g in main.items()}
    found = study_findings(main, head, gains, diffs, qdiffs, choices,
                           equivalence=comparison.layer_equivalence(first))
    return found, head, gains, diffs


def test_findings_and_the_answer_from_the_data(analysed):
    _, _, main, bootstrap = analysed
    found, head, gains, diffs = _findings(analysed)
    ranked = rankings(main, head)
    assert ranked["AP"].tiers[0] == ["dec6_q100"] and ranked["AP"].ranks["dec6_q100"] == 1
    assert ranked["AP"].values["dec3_q100"] == pytest.approx(head.loc["dec3_q100", "AP"])
    assert set(agreements(ranked)) == {("total", "final_layer"), ("total", "AP"), ("original", "AP")}
    f = by_key(found)
    assert f["best"].data["variant"] == "dec6_q100" and f["best"].value == pytest.approx(head["AP"].max())
    assert (f["best"].low, f["best"].high) == (head.loc["dec6_q100", "AP low"], head.loc["dec6_q100", "AP high"])
    for _, row in diffs.iterrows():  # every pair, its value and its Holm verdict, as the table has them
        d = f[f"diff/{row['a']} - {row['b']}"]
        assert d.value == pytest.approx(row["a - b"])
        assert (d.verdict == "beyond sampling") == bool(row["excludes 0 (Holm)"])
    assert f["change/dec3_q100"].value == pytest.approx(gains.loc["dec3_q100", "change"])
    assert f["ranking"].data["verdict"] in ("survives", "overturned", "not confirmed")
    text = answer(found)
    assert words(text) <= ANSWER_WORDS
    assert text.startswith("**dec6_q100** (6 decoder layers, 100 queries) has the highest COCO AP")
    assert f["best"].interval() in text and f["change/dec3_q100"].interval() in text
    # every number the answer prints is one a finding prints (nothing typed, nothing computed on the side)
    printed = " ".join([x.interval() + " " + x.covers + " " + json.dumps(x.data) for x in found])
    for number in re.findall(r"[+-]?\d+(?:\.\d+)?", text):
        assert number in printed, number
    short = answer(found, limit=words(text) - 1)  # a tighter limit leaves the least needed sentences out
    assert words(short) < words(text) and short.startswith("**dec6_q100**")
    back, meta = read_findings(findings_json(found, n_images=len(bootstrap.img_ids)))
    assert [b.key for b in back] == [x.key for x in found] and meta["n_images"] == len(bootstrap.img_ids)
    assert answer(back) == text  # the report renders the saved findings exactly as 06 does
    assert all(p.label in differences_paragraph(found) for p in by_key(found, "diff").values())
    _, _, main_, _ = analysed
    one = {"dec6_q100": main_["dec6_q100"]}  # the others not run yet: said, not hidden
    alone = study_findings(one, head.loc[["dec6_q100"]], gains.loc[["dec6_q100"]], diffs.iloc[:0],
                           missing=["dec3_q100", "dec3_q50"])
    assert "Not compared, no run folders: dec3_q100 and dec3_q50." in answer(alone)


def test_limitations_are_computed_from_the_runs(analysed):
    records, _, _, bootstrap = analysed
    items = study_limitations(comparison.by_recipe(records))
    text = "\n".join(items)
    n = len(bootstrap.img_ids)
    assert f"**Images.** {n} validation images carry every interval" in text and "Fewer than 100" in text
    assert "dec6_q100 2 (42, 43)" in text and "dec3_q100 1 (42)" in text  # the seeds, per variant
    assert "No recipe arm ran" in text and "**Published numbers.**" in text
    assert study_limitations({}) == ["No run folder: nothing is measured yet."]


def test_a_fine_tuning_loss_is_reported_as_a_loss_everywhere(analysed):
    """The shallow decoder loses AP between epoch 0 and its final epoch: every table has a negative change and every
    sentence about it says "lost"/"a loss", never "gained"."""
    records, _, main, bootstrap = analysed
    shallow = main["dec3_q100"]["shallow_try"]
    loss = 100 * (shallow.metrics.loc[2, "val_AP"] - shallow.metrics.loc[0, "val_AP"])
    assert loss < 0
    gains = comparison.finetuning_gain_table(bootstrap, main)
    assert comparison.original_study_table(main).loc["dec3_q100", "AP change"] == pytest.approx(loss)
    assert gains.loc["dec3_q100", "change"] == pytest.approx(loss)
    comp = comparison.comparison_table({"dec3_q100": shallow})
    assert comp.loc[("shallow_try", "final epoch"), "AP"] < comp.loc[("shallow_try", "epoch 0"), "AP"]
    found = _findings(analysed)[0]
    change = by_key(found, "change")["dec3_q100"]
    assert change.value == pytest.approx(loss) and change.verdict == "beyond sampling" and change.high < 0
    sentence = f"dec3_q100 {change.interval()} (a loss beyond sampling)"
    assert sentence in answer(found)
    ends = f"dec3_q100 from {change.data['epoch 0']:.1f} to {change.data['final']:.1f}, {change.interval()} (a loss"
    assert ends in changes_paragraph(found)
    assert f"dec3_q100 {change.interval()} (a gain" not in answer(found)


def test_seed_configs_name_each_seed(tmp_path):
    cfg = make_config("demo", out_dir=str(tmp_path), dec_layers=3, num_queries=50)
    configs = seed_configs(cfg)  # three seeds, the demo's and the study's default
    assert [c.run_dir.name for c in configs] == ["dec3_q50_seed42", "dec3_q50_seed43", "dec3_q50_seed44"]
    assert [c.seed for c in configs] == [42, 43, 44]
    assert len(seed_configs(make_config("study", out_dir=str(tmp_path)))) == 3
    arm = make_config("demo", out_dir=str(tmp_path), recipe="checkpoint_rates")
    assert [c.run_dir.name for c in seed_configs(arm, 1)] == ["dec6_q100_checkpoint_rates_seed42"]
    assert seed_configs(cfg, 1, name="dec3_q50_spread")[0].run_dir.name == "dec3_q50_spread_seed42"
    with pytest.raises(ValueError, match="n_seeds"):
        seed_configs(cfg, 0)
    assert variant_of(configs[1].run_dir.name) == "dec3_q50"
    assert np.array_equal(sorted(comparison.QUERY_CHOICES.values()), ["first", "most_matched", "spread"])


def test_versus_baseline_answers_04_and_05_against_03(run_folders, analysed):
    table, (found, gap) = versus_baseline(run_folders, "dec3_q100", n_resamples=300)
    row = table.iloc[0]
    assert (row["a"], row["b"], row["compared on"]) == ("dec3_q100", "dec6_q100", "AP")
    assert row["a - b"] < 0 and found.verdict == "beyond sampling"  # the shallow run ends on `bad`, the baseline not
    assert found.value == row["a - b"] and found.low == row["a - b low"] and found.high == row["a - b high"]
    # the same family, the same numbers and the same sign as 06: the smaller model minus the one it was cut from
    _, _, main, bootstrap = analysed
    six = comparison.differences_table(bootstrap, main, comparison.VARIANT_PAIRS).set_index(["a", "b"])
    ref = six.loc[("dec3_q100", "dec6_q100")]
    assert (row["a - b"], row["a - b low"], row["a - b high"]) == pytest.approx(
        (ref["a - b"], ref["a - b low"], ref["a - b high"]))
    assert row["p Holm"] == pytest.approx(ref["p Holm"]) and "Holm-adjusted over the family of 3 pairs" in found.why
    assert f"{row['a - b']:+.1f} points [{row['a - b low']:+.1f}, {row['a - b high']:+.1f}]" in found.text()
    assert "24 validation images (seeds not resampled: 1 and 2)" in found.text()
    assert row["loss gap a"] == pytest.approx(2.0) and gap.value == pytest.approx(2.0) and "+2.000" in gap.text()
    capped, (found50, _) = versus_baseline(run_folders, "dec3_q50", n_resamples=300)
    assert capped.iloc[0]["compared on"] == "AP@50det" and "final AP@50det" in found50.claim
    choice, (same, _) = versus_baseline(run_folders, "dec3_q50_spread", n_resamples=300, baseline="dec3_q50")
    assert choice.iloc[0]["a - b"] == pytest.approx(0.0) and same.verdict == "within sampling"  # same detections
    empty, (missing,) = versus_baseline(run_folders, "dec3_q25", n_resamples=300)
    assert empty.empty and "no finished run of dec3_q25" in missing.text() and "03_baseline" in missing.text()
    _, (other_recipe,) = versus_baseline(run_folders, "dec3_q100", n_resamples=300, recipe="warmup")
    assert "with recipe 'warmup'" in other_recipe.text()


def test_versus_baseline_bounds_holm_until_the_family_is_complete(run_folders, tmp_path):
    """04 runs before 05: the decoder family's third pair has no runs yet, so p Holm is its upper bound, 3 x p."""
    out = tmp_path / "runs"
    out.mkdir()
    for name in ("dec6_q100_seed42", "dec6_q100_seed43", "shallow_try"):
        shutil.copytree(run_folders / name, out / name)
    table, (found, _) = versus_baseline(out, "dec3_q100", n_resamples=300)
    assert table.iloc[0]["p Holm"] == pytest.approx(min(1.0, 3 * table.iloc[0]["p"]))
    assert "at most" in found.why and "06 gives the exact value" in found.why


def test_best_of_names_the_leader_and_its_ties(run_folders):
    found = best_of(run_folders, ["dec3_q50", "dec3_q50_most_matched", "dec3_q50_spread"], n_resamples=300)
    assert found.data["leader"] == "dec3_q50_most_matched"  # it ends on `good too`, the others on `mid`
    assert [f.claim.split(",")[0] for f in found.data["pairs"]] == ["dec3_q50_most_matched - dec3_q50",
                                                                    "dec3_q50_most_matched - dec3_q50_spread"]
    assert all(f.has_interval and "Holm-adjusted over the family of 3 pairs" in f.why for f in found.data["pairs"])
    tied = {f.claim.split(" - ")[1].split(",")[0] for f in found.data["pairs"] if f.data["p Holm"] >= 0.05}
    assert set(found.data["tied"]) == tied
    assert ("tied with" in found.text()) == bool(tied)
    assert "nothing to rank" in best_of(run_folders, ["dec3_q50", "dec3_q25"]).text()


def test_scores_are_kept_for_the_next_notebook(run_folders, monkeypatch):
    """What one notebook scored (a run's epoch matched and resampled) the next reads back from <out_dir>/.bootstrap
    instead of matching again, and gets the same numbers."""
    from detr_nb_utils.analysis import run_bootstrap as boot

    records = comparison.load_runs(run_folders)
    first = comparison.ApBootstrap(records, n_resamples=120, seed=7)
    run = records["dec6_q100_seed42"]
    point, samples = first.run_ap(run, 2)
    assert list((run_folders / boot.SCORES).glob("*.npz"))
    monkeypatch.setattr(boot, "_SCORED", {})  # a new process

    def no_matching(*args):
        raise AssertionError("matched again")
    monkeypatch.setattr(boot.ApBootstrap, "_score", no_matching)
    again = comparison.ApBootstrap(records, n_resamples=120, seed=7).run_ap(run, 2)
    assert again[0] == point and (again[1] == samples).all()
