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
# # 03 · Baseline: 6 decoder layers, 100 queries
#
# **Question.** How much does the published DETR-R50 gain from fine-tuning on the 4,000 mini-COCO images with the
# original study's recipe, and when it loses AP, why?
#
# The original study's recipe: 5 epochs, batch 2, AdamW with learning rate 1e-4 (backbone 1e-5), weight decay 1e-4,
# gradient clipping at 0.1, the original set-prediction loss with its auxiliary decoder losses. This is the
# reference the two smaller decoders of notebooks 04 and 05 are compared with. The checkpoint finished its own
# training at ten times lower rates (1e-5, backbone 1e-6); restarting it at the original rates with a fresh AdamW
# state moves every weight by about the learning rate at every step. Two declared recipe arms test whether that is
# why fine-tuning loses AP: `checkpoint_rates` (the checkpoint's own final rates) and `warmup` (the original rates,
# reached by a linear warm-up). Every run is trained with several seeds, so the change can be told from training
# noise.
#
# Run it top to bottom in JupyterLab, or headless: `papermill notebooks/03_baseline.ipynb out.ipynb -p profile
# demo`. Every value in the `parameters` cell can be passed with `-p name value`; `None` means the profile's default
# (`study`: the original study's settings; `demo`, or `DETR_NB_PROFILE=demo`: offline, synthetic data, a tiny
# DETR, minutes on a CPU). Paths are relative to the project root.

# %% tags=["parameters"]
profile = None  # "study" (the original study's settings) or "demo"; None: $DETR_NB_PROFILE, else "study"
data_root = None  # folder holding COCO val2017
split_dir = None  # the split made by notebook 01
n_train, n_val = None, None  # the split's sizes (checked against its manifest)
checkpoint = None  # the official detr-r50-e632da11.pth
out_dir = None  # run folders go to <out_dir>/<run_name>
run_name = None  # None: dec<layers>_q<queries>[_<recipe>]; each seed's folder is <run_name>_seed<seed>
n_seeds = None  # training seeds (seed, seed+1, ...), one run folder each; None: 3 (both profiles)
report_dir = None  # figures and tables; None: report/ (study) or <out_dir>/report (demo)
device = None  # "auto", "cpu", "cuda"
precision = None  # "fp32" (published), "bf16" (fast; see 02), "auto"; None: fp32 (both profiles)
seed = None
epochs = None  # 5 in the study
batch_size = None  # 2 in the study
lr, lr_backbone = None, None  # learning rates: 1e-4 and its backbone's 1e-5 in the study
recipe = None  # the recipe arm of the baseline's runs; None: "original" (the original study's)
recipe_arms = None  # arms trained beside it; None: the profile's (demo: checkpoint_rates and warmup; study: none)
dec_layers, num_queries = 6, 100  # the variant: decoder layers and object queries kept (the checkpoint's first)
max_train_images = None  # None: the profile's (demo: the first 120 of the 400; study: every one)
max_val_images = None
min_size, max_size = None, None  # evaluation: the shorter image side, the longer at most (800, 1333 in the study)
train_scales = None  # shorter sides drawn in training (480..800 in the study)
num_workers = None
threads = None  # torch threads per run; None: the profile's (demo: 1, so that runs side by side give the same bits)
parallel_runs = None  # runs at a time; None: as many as the cores hold on the CPU (fixed threads), 1 on a GPU
progress = None  # progress bars; None: widgets in JupyterLab, none when headless
n_resamples = 1000  # bootstrap resamples of the val images for the changes and the arms

# %%
from detr_nb_utils.notebook import config_parameters
from detr_nb_utils.training import make_config

params = config_parameters(globals())  # the cell above, handed over in one call
cfg = make_config(**params)

# %% [markdown]
# ## Setup
# Imports, the project root as working directory, the device; the profile is printed, with a warning when the data
# and weights are the demo's.

# %%
from detr_nb_utils.analysis import render, runs_note
from detr_nb_utils.notebook import plot_findings, save_fig
from detr_nb_utils.notebook import arm_configs, change_findings, check_data, plan, seeded, show_runs
from detr_nb_utils.notebook import variant_of_config
from detr_nb_utils.notebook import setup_notebook
from detr_nb_utils.notebook import diagnostics_sentence, finetune_lines, show_diagnostics, show_takeaway
from detr_nb_utils.notebook import save_table, shown
from detr_nb_utils.training import DEFAULT_ARMS
from detr_nb_utils.training import run_all

device, report_dir = setup_notebook(cfg, report_dir)

# %% [markdown]
# ## 1. Check the data
# The split must be the one its manifest describes, and every image must be there before hours of
# training start.

# %%
data = check_data(cfg)

# %% [markdown]
# ## 2. One batch through the set loss
# Before training, what one training step computes, on a batch of two validation images with the loaded checkpoint
# (evaluation mode: no dropout). The Hungarian matcher prices every (query, object) pair: the class term
# (minus the probability the query gives the object's class), the L1 distance of the two boxes and minus their
# generalised IoU, weighted 1, 5 and 2. It then picks the one-to-one assignment of lowest total cost; every query
# left over must predict "no object". Below, the first image's cost matrix term by term, the assignment ringed.

# %%
import torch

from detr_nb_utils.analysis import assignment_table, cost_terms, layer_loss_sentence, layer_loss_table
from detr_nb_utils.data import COCO_NAMES
from detr_nb_utils.data import collate_fn
from detr_nb_utils.notebook import plot_cost_terms, plot_layer_losses
from detr_nb_utils.training import make_dataset
from detr_nb_utils.training import build_model

model, criterion, _ = build_model(cfg, device)
val_set = make_dataset(cfg, data, "val")
first = next(i for i in range(len(val_set)) if len(val_set[i][1]["labels"]) >= 2)  # an image with 2+ objects
images, mask, targets = collate_fn([val_set[first], val_set[first + 1]])
targets = [{k: t[k].to(device) for k in ("labels", "boxes")} for t in targets]
with torch.no_grad():
    outputs = model.eval()(images.to(device), mask.to(device))
terms = cost_terms(outputs, targets[0], criterion.matcher, 0)
assignment = assignment_table(terms, targets[0]["labels"].tolist(), COCO_NAMES)
fig = plot_cost_terms(terms, assignment)
save_fig(fig, "03_matcher_cost", report_dir)

# %%
shown(assignment)

# %% [markdown]
# Then the loss: for every decoder layer, the same three terms on its own predictions and its own matching (the
# auxiliary losses), weighted and summed. The training loss, and the original study's validation loss, is the sum
# over the layers.

# %%
layer_losses = layer_loss_table(criterion(outputs, targets), criterion.weight_dict, cfg.dec_layers)
save_table(layer_losses, "03_layer_losses", report_dir, floatfmt=".3f")
fig = plot_layer_losses(layer_losses)
save_fig(fig, "03_layer_losses", report_dir)
print(layer_loss_sentence(layer_losses, criterion.eos_coef))
del model, outputs  # each run builds its own model
shown(layer_losses)

# %% [markdown]
# ## 3. The runs
# One run per training seed and recipe arm, each in its own run folder (`runs/<profile>/dec6_q100[_<arm>]_seed<k>`).
# The plan below says which runs will train, resume or only be read back, and how long the rest should take,
# timed on a few steps here. Runs that do not depend on each other train side by side, one process each, with
# the metrics they would have one after the other.

# %%
arms = recipe_arms if recipe_arms is not None else DEFAULT_ARMS[cfg.profile]
configs = seeded(arm_configs(cfg, lambda **arm: make_config(**params | arm), arms), n_seeds)
plan(configs, parallel_runs)

# %% [markdown]
# `run_all` loads the checkpoint (sliced to the variant) and evaluates it (epoch 0: once for every seed and arm, since
# none of them changes the checkpoint), then trains and evaluates once per epoch, saving everything into the run
# folder, with each evaluated epoch's detections for 06's bootstrap. A folder holding finished epochs of the same
# configuration is resumed, so running this cell again after an interruption continues.

# %%
records = run_all(configs, parallel_runs)

# %% [markdown]
# ## 4. Curves
# The validation loss in three views: the total (the original study's number; it sums one loss per decoder layer, so
# it grows with depth), the final layer's loss (what a user gets) and the total divided by the number of
# layers. Training losses are dashed. Then COCO AP per epoch: every seed of the baseline's recipe.

# %%
prefix = "03_" + cfg.run_dir.name  # file names of this variant's figures and tables
main = {name: r for name, r in records.items() if r.config.recipe == cfg.recipe}
show_runs(main, prefix, report_dir)

# %% [markdown]
# ## 5. Why fine-tuning loses AP: the recipe arms
# Every arm starts from the same epoch 0. For each, AP's change from epoch 0 to the first fine-tuned epoch (the
# shock of the restart) and to the final epoch, then each arm against the original recipe at those epochs, paired
# (the same resampled images): 95% intervals over the validation images, and over the seeds when there are three
# or more (with fewer, their values are listed beside).

# %%
arms_table, arm_findings = change_findings(records, variant_of_config(cfg), n_resamples)
save_table(arms_table, "03_recipe_arms", report_dir, floatfmt=".2f")
fig = plot_findings(arm_findings, "The baseline's AP change, and each recipe arm against the original")
save_fig(fig, "03_recipe_arms", report_dir)
print(render(arm_findings))

# %% [markdown]
# ## 6. What the detector gets wrong
# All from the saved detections of the baseline's first seed at its final epoch (nothing is re-run): AP per class
# with its 95% interval over the validation images; AP by object size for every seed, with the objects of each size;
# COCOeval's precision-recall curves at IoU 0.5 and 0.75; the confusion matrix at IoU >= 0.5 (its score threshold in
# the title; the background row holds detections of no object, the background column objects nobody found); the
# errors sorted into the kinds of the TIDE analysis, with the AP50 each would give back if fixed alone; the same for
# every decoder layer's predictions (what each extra layer removes; the paper's Fig. 4 and its remark on
# duplicates); the loss term by term and layer by layer, every seed; and galleries of the highest-scoring false
# positives and the largest missed objects, ground truth beside the prediction.

# %%
diagnosed = show_diagnostics(main, "03", report_dir, gallery=True, n_resamples=n_resamples)

# %% [markdown]
# ## Takeaway

# %%
lines = finetune_lines(variant_of_config(cfg), arms_table, arm_findings, cfg.recipe, cfg.lr, cfg.lr_backbone)
lines.append(diagnostics_sentence(diagnosed))
show_takeaway(lines, f"{prefix}_takeaway", report_dir, runs_note(main.values()))
