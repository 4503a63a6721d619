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
# # 04 · Shallow decoder: 3 decoder layers, 100 queries
#
# **Question.** Does a decoder cut to its first 3 layers generalise better on little data, as the original study
# concluded?
#
# The model keeps the checkpoint's first 3 decoder layers (and its final decoder norm): at epoch 0 its output is
# exactly the baseline's third-layer prediction. Same recipe as 03. Its total loss sums 3 layer losses instead
# of 6, so compare it with 03 on AP and on the final-layer loss, not on the total.
#
# Run it top to bottom in JupyterLab, or headless: `papermill notebooks/04_shallow_decoder.ipynb out.ipynb -p
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
num_queries = 100  # object queries kept from the checkpoint (its first ones)
max_train_images = None  # None: the whole training side
max_val_images = None
min_size = None  # shorter image side at evaluation (800 in the study)
max_size = None  # longer side at most (1333 in the study)
train_scales = None  # shorter sides drawn in training (480..800 in the study)
num_workers = None
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
from detr_nb_utils.analysis import versus_baseline
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
prefix = "04_" + cfg.run_dir.name  # file names of this variant's figures and tables
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
# ## 4. Against the baseline
# The question is answered against 03's baseline (6 layers, 100 queries; its runs are in the same `out_dir`): the
# difference of the final AP with its paired 95% interval over the validation images (and the seeds), and each
# model's validation minus training loss gap (positive: worse on images it did not train on).

# %%
versus, versus_text = versus_baseline(cfg.out_dir, cfg.run_dir.name, n_resamples)
save_table(versus, f"{prefix}_versus_baseline", report_dir, floatfmt=".2f")
print(versus_text)
shown(versus, ".2f")

# %% [markdown]
# ## Takeaway

# %%
takeaway = "\n".join([*(run_takeaway(r) for r in records.values()), *[versus_text]])
save_takeaway(takeaway, f"{prefix}_takeaway", report_dir)
print(takeaway)
