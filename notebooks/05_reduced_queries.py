# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
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
# self-attention. Images with more than 50 objects (notebook 01) cannot be fully detected. Section 3 asks
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
n_train, n_val = None, None  # the split's sizes (checked against its manifest)
min_size, max_size = None, None  # evaluation: the shorter image side, the longer at most (800, 1333 in the study)
train_scales = None  # shorter sides drawn in training (480..800 in the study)
max_train_images = None  # None: the profile's (demo: the first 120 of the 400; study: every one)
max_val_images = None
checkpoint = None  # the official detr-r50-e632da11.pth
dec_layers, num_queries = 3, 50  # the variant: decoder layers and object queries kept (the checkpoint's first)
strategies = ["most_matched", "spread"]  # which 50 queries, besides the first 50 (select_queries)
strategy_seeds = None  # seeds per extra choice of queries (below); None: as n_seeds (study), 1 (demo)
out_dir = None  # run folders go to <out_dir>/<run_name>; 03's baseline runs are read from here too
run_name = None  # None: dec<layers>_q<queries>[_<recipe>]; each seed's folder is <run_name>_seed<seed>
n_seeds = None  # training seeds (seed, seed+1, ...), one run folder each; None: 3 (both profiles)
report_dir = None  # figures and tables; None: report/ (study) or <out_dir>/report (demo)
device = None  # "auto", "cpu", "cuda"
precision = None  # "fp32" (published), "bf16" (fast; see 02), "auto"; None: fp32 (both profiles)
seed = None
epochs = None  # 5 in the study
batch_size = None  # 2 in the study
lr, lr_backbone = None, None  # learning rates: 1e-4 and its backbone's 1e-5 in the study
recipe = None  # the recipe arm (as 03's); None: "original". Compared only with 03's runs of the same arm
num_workers = None
threads = None  # torch threads per run; None: the profile's (demo: 1)
parallel_runs = None  # runs at a time; None: as many as the cores hold on the CPU (fixed threads), 1 on a GPU
wait_for_runs = 0  # seconds to wait for the compared runs that notebooks beside this one train (make demo)
progress = None  # progress bars; None: widgets in JupyterLab, none when headless
n_resamples = 1000  # bootstrap resamples of the val images for the comparisons

# %%
from detr_nb_utils.notebook import config_parameters
from detr_nb_utils.training import make_config

cfg = make_config(**config_parameters(globals()))  # the cell above, handed over in one call

# %% [markdown]
# ## Setup
# Imports, the project root as working directory, the device; the profile is printed, with a warning when the data
# and weights are the demo's.

# %%
from dataclasses import replace

import pandas as pd

from detr_nb_utils.analysis import best_of, untrained_choice
from detr_nb_utils.analysis import render, runs_note
from detr_nb_utils.analysis import analysis_loader, query_choice_table, query_match_counts, query_usage
from detr_nb_utils.analysis import select_queries, usage_summary
from detr_nb_utils.notebook import save_fig
from detr_nb_utils.notebook import plot_match_counts, plot_query_usage
from detr_nb_utils.notebook import against_baseline, await_family, change_findings, check_data, choice_run_name
from detr_nb_utils.notebook import plan
from detr_nb_utils.notebook import seeded, show_runs, variant_of_config
from detr_nb_utils.notebook import setup_notebook
from detr_nb_utils.notebook import save_table
from detr_nb_utils.notebook import diagnostics_sentence, finetune_lines, show_diagnostics
from detr_nb_utils.notebook import WHY_IN_03, best_line, show_takeaway, untrained_line
from detr_nb_utils.training import QUERY_CHOICE_SEEDS
from detr_nb_utils.training import build_model, evaluate_checkpoint
from detr_nb_utils.training import run_all

device, report_dir = setup_notebook(cfg, report_dir)

# %% [markdown]
# ## 1. Which 50 queries could be kept?
# Before any training: the original study kept the first 50 query embeddings. Are they the useful ones? The data is
# checked first; then the original model (6 layers, 100 queries, straight from the checkpoint) runs over the train
# split and the Hungarian matcher says which slot predicts each object. Three choices of 50: the `first`, the
# `most_matched` on the train split (the validation images never decide), and 50 `spread` evenly over the 100.

# %%
data = check_data(cfg)
original, _, _ = build_model(replace(cfg, dec_layers=6, num_queries=100, query_indices=None), device)
counts = query_match_counts(original, analysis_loader(cfg, data, "train"), device=device, progress=cfg.progress)
choices = {s: select_queries(s, cfg.num_queries, len(counts), counts) for s in ["first", *strategies]}
fig = plot_match_counts(counts, choices)
save_fig(fig, "05_query_match_counts", report_dir)

# %% [markdown]
# Each choice at epoch 0 (the checkpoint's query embeddings at those slots, nothing trained). These evaluations are
# the runs' epoch 0: evaluated here once, each run below reads its own.

# %%
epoch0 = {s: evaluate_checkpoint(replace(cfg, query_indices=tuple(idx))) for s, idx in choices.items()}
query_choices = query_choice_table(counts, choices, epoch0)
save_table(query_choices, "05_query_choices", report_dir, floatfmt=".2f")
query_choices.drop(columns="query slots")

# %% [markdown]
# ## 2. Fine-tune every choice
# The first 50 with `n_seeds` seeds, each other choice with `strategy_seeds` (in the demo one: their comparisons then
# cover the images, not the training noise, and say so), in run folders named after it; the plan first, then the
# runs, side by side where that is faster. The curves and the epoch table are the first 50's.

# %%
chosen = {s: replace(cfg, query_indices=tuple(choices[s]), run_name=choice_run_name(cfg, s)) for s in strategies}
choice_seeds = strategy_seeds or QUERY_CHOICE_SEEDS[cfg.profile] or n_seeds
configs = seeded([cfg], n_seeds) + seeded(chosen.values(), choice_seeds)
plan(configs, parallel_runs)

# %%
records = run_all(configs, parallel_runs)
first = {name: r for name, r in records.items() if r.config.query_indices is None}
prefix = "05_" + cfg.run_dir.name  # file names of this variant's figures and tables
show_runs(first, prefix, report_dir)

# %% [markdown]
# ## 3. What each query slot predicts, before and after the reduction
# The paper's Fig. 7: for every slot, the centres of its boxes over the validation images (green small, red
# large and wide, blue large and tall). Before: the original model's 100 slots. After: this variant's 50
# (the first seed's best epoch), drawn under the checkpoint slot they came from.

# %%
val_loader = analysis_loader(cfg, data, "val")
before = query_usage(original, val_loader, device)
fig = plot_query_usage(before, title="Before: the original model's 100 query slots (val images)")
save_fig(fig, "05_query_usage_before", report_dir)

# %%
record = next(iter(first.values()))
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
# ## 4. Against the baseline, and the choices against each other
# This variant's final AP against 03's baseline (6 layers, 100 queries, the same recipe; its runs are in the same
# `out_dir`), on AP at 50 detections per image since the baseline can output 100, Holm-adjusted over the three
# decoder pairs as 06 does; then each other choice of 50 queries against the first 50 (the original study's
# choice), and which choice is best, from the paired differences of the three choices (their own Holm family, as in
# 06): a choice within sampling of the best is named as tied with it. A positive validation minus training loss
# gap means the model does worse on images it did not train on.

# %%
await_family(cfg, n_seeds, wait_for_runs)  # make demo trains 03-05 side by side
variant = variant_of_config(cfg)
versus, versus_findings = against_baseline(cfg, [variant, *(f"{variant}_{s}" for s in strategies)], prefix,
                                           report_dir, n_resamples, ["dec6_q100", *[variant] * len(strategies)])
best = best_of(cfg.out_dir, [variant, *(f"{variant}_{s}" for s in strategies)], n_resamples, cfg.recipe)
changes, change = change_findings(first, variant, n_resamples)
print(best.text(), render(change), sep="\n")

# %% [markdown]
# ## 5. Picking queries against fine-tuning them
# Each other choice of 50 (the most matched on the training images, the spread ones) with no training at all (its
# run's epoch 0), against the first 50 fine-tuned (their final epoch, every seed): paired on the same resampled
# validation images (and the seeds, from three). If picking beats training, which slots are kept matters more than
# what the recipe does with them.

# %%
picked = {s: next(r for r in records.values() if tuple(r.config.query_indices or ()) == tuple(choices[s]))
          for s in strategies}  # each choice's first seed: its epoch 0 is the same for every seed
untrained = {s: untrained_choice(r, first, n_resamples) for s, r in picked.items()}
print(*(untrained_line(f, s) for s, f in untrained.items()), sep="\n")

# %% [markdown]
# ## 6. What the 50-query model gets wrong
# As in 03, from the saved detections of the first 50's first seed at its final epoch: AP per class and by size
# (crowded images hold many small objects), the precision-recall curves, the confusion matrix, the kinds of error
# (with 50 slots, more objects can go missed), the errors of each decoder layer and the loss term by term.

# %%
diagnosed = show_diagnostics(first, "05", report_dir, n_resamples=n_resamples)

# %% [markdown]
# ## Takeaway

# %%
strongest = "most_matched" if "most_matched" in untrained else max(untrained, key=lambda s: untrained[s].value,
                                                                      default=None)
lines = finetune_lines(variant, changes, change, cfg.recipe, cfg.lr, cfg.lr_backbone, why=WHY_IN_03)[:2]
lines += [f.text() for f in versus_findings[:1]] + [best_line(best)]
lines += [untrained_line(untrained[strongest], strongest)] if strongest else []
lines.append(diagnostics_sentence(diagnosed))
show_takeaway(lines, f"{prefix}_takeaway", report_dir, runs_note(first.values()))
