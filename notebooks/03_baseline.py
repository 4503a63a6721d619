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
# # 03 · Baseline: 6 decoder layers, 100 queries
#
# **Question.** How much does the published DETR-R50 gain from fine-tuning on the 4,000 mini-COCO images with the
# original study's recipe?
#
# The original study's recipe: 5 epochs, batch 2, AdamW with learning rate 1e-4 (backbone 1e-5), weight decay 1e-4,
# gradient clipping at 0.1, the original set-prediction loss with its auxiliary decoder losses. This is the
# reference the two smaller decoders of notebooks 04 and 05 are compared with.
#
# Run it top to bottom in JupyterLab, or headless: `papermill notebooks/03_baseline.ipynb out.ipynb -p profile
# demo`. Every value in the `parameters` cell can be passed with `-p name value`; `None` means the profile's default
# (`study`: the original study's settings; `demo`, or `DETR_NB_PROFILE=demo`: offline, synthetic data, a tiny
# DETR, minutes on a CPU). Paths are relative to the project root.

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
dec_layers = 6  # decoder layers kept from the checkpoint (its first ones)
num_queries = 100  # object queries kept from the checkpoint (its first ones)
max_train_images = None  # None: the whole training side
max_val_images = None
min_size = None  # shorter image side at evaluation (800 in the study)
max_size = None  # longer side at most (1333 in the study)
train_scales = None  # shorter sides drawn in training (480..800 in the study)
num_workers = None
progress = None  # progress bars; None: widgets in JupyterLab, none when headless

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
# ## 2. One batch through the set loss
# Before training, what one training step computes, on a batch of two validation images with the loaded checkpoint
# (evaluation mode: no dropout). The Hungarian matcher prices every (query, object) pair: the class term
# (minus the probability the query gives the object's class), the L1 distance of the two boxes and minus their
# generalised IoU, weighted 1, 5 and 2. It then picks the one-to-one assignment of lowest total cost; every query
# left over must predict "no object". Below, the first image's cost matrix term by term, the assignment ringed.

# %%
import torch

from detr_nb_utils.data import COCO_NAMES, collate_fn
from detr_nb_utils.training import build_model, make_dataset
from detr_nb_utils.analysis import assignment_table, cost_terms, layer_loss_sentence, layer_loss_table
from detr_nb_utils.notebook import plot_cost_terms, plot_layer_losses

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
del model, outputs  # run_experiment builds its own model
shown(layer_losses)

# %% [markdown]
# ## 3. Fine-tune
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
# ## 4. Curves
# The validation loss in three views: the total (the original study's number; it sums one loss per decoder layer, so
# it grows with depth), the final layer's loss (what a user gets) and the total divided by the number of
# layers. Training losses are dashed. Then COCO AP per epoch.

# %%
prefix = "03_" + cfg.run_dir.name  # file names of this variant's figures and tables
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
# ## Takeaway

# %%
takeaway = "\n".join(run_takeaway(r) for r in records.values())
save_takeaway(takeaway, f"{prefix}_takeaway", report_dir)
print(takeaway)
