# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Shallow decoder with 50 queries
#
# **Question.** Does DETR need 100 detection slots on this data, or do the first 50 suffice, and are they the right
# 50?
#
# As 04, and only the first 50 of the checkpoint's 100 query embeddings are kept. Unlike the decoder cut, this
# changes the outputs at epoch 0 even for the kept queries: queries interact through the decoder's
# self-attention. Images with more than 50 objects (notebook 01) cannot be fully detected. Section 4 asks
# whether another 50 would do better.
#
# Run it top to bottom in JupyterLab, or headless: `papermill notebooks/05_reduced_queries.ipynb out.ipynb -p
# profile demo`. Every value in the `parameters` cell can be passed with `-p name value`; `None` means the profile's
# default (`study`: the original study's settings; `demo`, or `DETR_NB_PROFILE=demo`: offline, synthetic data,
# a tiny DETR, minutes on a CPU). Paths are relative to the project root.

# %% tags=["parameters"]
profile = None  # "study" (the original study's settings) or "demo"; None: $DETR_NB_PROFILE, else "study"
data_root = None  # folder holding COCO val2017
split_dir = None  # the split made by notebook 01
n_train = None  # the split's sizes (checked against its manifest)
n_val = None
checkpoint = None  # the official detr-r50-e632da11.pth
out_dir = None  # run folders go to <out_dir>/<run_name>
run_name = None  # None: dec<layers>_q<queries>; each seed's folder is <run_name>_seed<seed>
n_seeds = None  # training seeds (seed, seed+1, ...), one run folder each; None: 1 (study), 2 (demo)
report_dir = None  # figures and tables; None: report/ (study) or <out_dir>/report (demo)
device = None  # "auto", "cpu", "cuda"
precision = None  # "fp32" (published), "bf16" (fast; see 02), "auto"; None: fp32 (both profiles)
seed = None
epochs = None  # 5 in the study
batch_size = None  # 2 in the study
lr = None  # 1e-4 in the study
lr_backbone = None  # 1e-5 in the study
dec_layers = 3  # decoder layers kept from the checkpoint (its first ones)
num_queries = 50  # object queries kept from the checkpoint (its first ones)
max_train_images = None  # None: the whole training side
max_val_images = None
min_size = None  # shorter image side at evaluation (800 in the study)
max_size = None  # longer side at most (1333 in the study)
train_scales = None  # shorter sides drawn in training (480..800 in the study)
num_workers = None
strategies = ["most_matched", "spread"]  # which 50 queries, besides the first 50 (select_queries)
strategy_seeds = None  # seeds per extra strategy; None: as n_seeds
progress = None  # progress bars; None: widgets in JupyterLab, none when headless
n_resamples = 1000  # bootstrap resamples of the val images for the comparison with the baseline

# %%
from detr_nb_utils.training import make_config
from detr_nb_utils.notebook import progress_policy

cfg = make_config(
    profile=profile, data_root=data_root, split_dir=split_dir, n_train=n_train, n_val=n_val,
    checkpoint=checkpoint, out_dir=out_dir, run_name=run_name, device=device, precision=precision,
    seed=seed, epochs=epochs, batch_size=batch_size, lr=lr, lr_backbone=lr_backbone, dec_layers=dec_layers,
    num_queries=num_queries, max_train_images=max_train_images, max_val_images=max_val_images,
    min_size=min_size, max_size=max_size, train_scales=train_scales, num_workers=num_workers,
    progress=progress_policy(progress),
)

# %% [markdown]
# ## Setup
# Imports, the project root as working directory, the device; the profile is printed, with a warning when the data
# and weights are the demo's.

# %%
from detr_nb_utils.data import CocoDetection, verify_split
from detr_nb_utils.training import prepare_data, run_experiment, seed_configs
from detr_nb_utils.analysis import best_of, versus_baseline
from detr_nb_utils.notebook import plot_ap_curves, plot_loss_curves, run_table, run_takeaway, save_fig, save_table
from detr_nb_utils.notebook import save_takeaway, setup_notebook, shown, with_train_views

device, report_dir = setup_notebook(cfg, report_dir)

# %% [markdown]
# ## 1. Check the data
# The split must be the one its manifest describes, and every image must be there before hours of
# training start.

# %%
data = prepare_data(cfg)
verify_split(cfg.split_dir, data.annotation_file)["seed"]

# %%
for split_file in (data.train_file, data.val_file):
    found = CocoDetection(split_file, data.image_dir).verify(decode=False, progress=cfg.progress)
    print(f"{split_file.name}: {found} images present, of the annotated size")

# %% [markdown]
# ## 2. Fine-tune
# `run_experiment` loads the checkpoint (sliced to this variant), evaluates it (epoch 0), then trains and
# evaluates once per epoch, saving everything into the run folder (with each evaluated epoch's detections,
# which 06 bootstraps). A folder that already holds finished epochs of the same configuration is resumed,
# so re-running this cell after an interruption continues. One run per training seed: the spread between
# seeds is part of the answer.

# %%
configs = seed_configs(cfg, n_seeds)
records = {c.run_dir.name: run_experiment(c) for c in configs}
record = records[configs[0].run_dir.name]  # the first seed's run: the table and figures below
sorted(p.name for p in record.run_dir.iterdir())

# %% [markdown]
# ## 3. Curves
# The validation loss in three views: the total (the original study's number; it sums one loss per decoder layer, so
# it grows with depth), the final layer's loss (what a user gets) and the total divided by the number of
# layers. Training losses are dashed. Then COCO AP per epoch.

# %%
prefix = "05_" + cfg.run_dir.name  # file names of this variant's figures and tables
curves = {name: with_train_views(r) for name, r in records.items()}
fig = plot_loss_curves(curves)
save_fig(fig, f"{prefix}_loss_curves", report_dir)

# %%
fig = plot_ap_curves(curves)
save_fig(fig, f"{prefix}_ap_curves", report_dir)

# %%
epochs_table = run_table(record)
save_table(epochs_table, f"{prefix}_epochs", report_dir, floatfmt=".2f")

# %% [markdown]
# ## 4. Which 50 queries?
# The original study kept the first 50 query embeddings. Are they the useful ones? The original model (6 layers, 100
# queries, straight from the checkpoint) is run over the train split, and the Hungarian matcher says which
# slot predicts each object. Three choices of 50: the `first`, the `most_matched` on the train split (the
# validation images never decide), and 50 `spread` evenly over the 100.

# %%
from dataclasses import replace

import pandas as pd

from detr_nb_utils.training import build_model, evaluate_checkpoint
from detr_nb_utils.analysis import analysis_loader, query_choice_table, query_match_counts, query_usage, select_queries
from detr_nb_utils.analysis import usage_summary
from detr_nb_utils.notebook import plot_match_counts, plot_query_usage

# %%
original, _, _ = build_model(replace(cfg, dec_layers=6, num_queries=100, query_indices=None), device)
counts = query_match_counts(original, analysis_loader(cfg, data, "train"), device=device,
                            progress=cfg.progress)
choices = {s: select_queries(s, cfg.num_queries, len(counts), counts) for s in ["first", *strategies]}
fig = plot_match_counts(counts, choices)
save_fig(fig, "05_query_match_counts", report_dir)

# %% [markdown]
# Each choice at epoch 0 (the checkpoint's query embeddings at those slots, nothing trained):

# %%
epoch0 = {s: evaluate_checkpoint(replace(cfg, query_indices=tuple(idx))) for s, idx in choices.items()}
query_choices = query_choice_table(counts, choices, epoch0)
save_table(query_choices, "05_query_choices", report_dir, floatfmt=".2f")
query_choices.drop(columns="query slots")

# %% [markdown]
# Then each extra choice is fine-tuned with the same recipe, in run folders named after it (the first-50 runs
# are the ones above). 06_analysis compares them with bootstrap intervals.

# %%
for s in strategies:
    chosen = replace(cfg, query_indices=tuple(choices[s]))
    for c in seed_configs(chosen, strategy_seeds or n_seeds,
                          name=f"{cfg.run_dir.name}_{s}"):
        records[c.run_dir.name] = run_experiment(c)
{name: round(100 * r.metrics["val_AP"].max(), 2) for name, r in records.items()}

# %% [markdown]
# ## 5. What each query slot predicts, before and after the reduction
# The paper's Fig. 7: for every slot, the centres of its boxes over the validation images (green small, red
# large and wide, blue large and tall). Before: the original model's 100 slots. After: this variant's 50
# (the first seed's best epoch), drawn under the checkpoint slot they came from.

# %%
val_loader = analysis_loader(cfg, data, "val")
before = query_usage(original, val_loader, device)
fig = plot_query_usage(before, title="Before: the original model's 100 query slots (val images)")
save_fig(fig, "05_query_usage_before", report_dir)

# %%
reduced, _, _ = build_model(replace(cfg, checkpoint=str(record.best_checkpoint), query_indices=None), device)
after = query_usage(reduced, val_loader, device, query_indices=choices["first"])
fig = plot_query_usage(after, title=f"After: the {cfg.num_queries} slots of {record.run_dir.name}, best epoch")
save_fig(fig, "05_query_usage_after", report_dir)

# %%
columns = ["object_rate", "mean_score"]
usage = pd.concat({"before": usage_summary(before)[columns], "after": usage_summary(after)[columns]}, axis=1)
save_table(usage, "05_query_usage", report_dir)
usage.sort_values(("before", "object_rate"), ascending=False).head(10)

# %% [markdown]
# ## Against the baseline, and the choices against the first 50
# This variant's final AP against 03's baseline (6 layers, 100 queries; its runs are in the same `out_dir`), on AP
# at 50 detections per image since the baseline can output 100; then each other choice of 50 queries against the
# first 50 (the original study's choice), with paired 95% intervals over the validation images and the seeds.
# A positive validation minus training loss gap means the model does worse on images it did not train on.

# %%
versus, versus_text = versus_baseline(cfg.out_dir, cfg.run_dir.name, n_resamples)
texts = [versus_text]
for s in strategies:
    table, text = versus_baseline(cfg.out_dir, f"{cfg.run_dir.name}_{s}", n_resamples, baseline=cfg.run_dir.name)
    versus, texts = pd.concat([versus, table]), texts + [text]
texts.append(best_of(cfg.out_dir, [cfg.run_dir.name, *(f"{cfg.run_dir.name}_{s}" for s in strategies)]))
save_table(versus, f"{prefix}_versus_baseline", report_dir, floatfmt=".2f")
print("\n".join(texts))
shown(versus, ".2f")

# %% [markdown]
# ## Takeaway

# %%
takeaway = "\n".join([*(run_takeaway(r) for r in records.values()), *texts])
save_takeaway(takeaway, f"{prefix}_takeaway", report_dir)
print(takeaway)
