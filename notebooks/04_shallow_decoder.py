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
# # 04 · Shallow decoder: 3 decoder layers, 100 queries
#
# **Question.** Does a decoder cut to its first 3 layers generalise better on little data, as the original study
# concluded?
#
# The model keeps the checkpoint's first 3 decoder layers (and its final decoder norm): at epoch 0 its output is
# exactly the baseline's third-layer prediction. Same recipe as 03. Its total loss sums 3 layer losses instead
# of 6, so compare it with 03 on AP and on the final-layer loss, not on the total. What depth does is seen layer by
# layer: every decoder layer's predictions can be scored, so the 6-layer model's AP after each of its layers sits
# beside the cut model's.
#
# Run it top to bottom in JupyterLab, or headless: `papermill notebooks/04_shallow_decoder.ipynb out.ipynb -p
# profile demo`. Every value in the `parameters` cell can be passed with `-p name value`; `None` means the profile's
# default (`study`: the original study's settings; `demo`, or `DETR_NB_PROFILE=demo`: offline, synthetic data,
# a tiny DETR, minutes on a CPU). Paths are relative to the project root.

# %% tags=["parameters"]
profile = None  # "study" (the original study's settings) or "demo"; None: $DETR_NB_PROFILE, else "study"
data_root = None  # folder holding COCO val2017
split_dir = None  # the split made by notebook 01
n_train, n_val = None, None  # the split's sizes (checked against its manifest)
checkpoint = None  # the official detr-r50-e632da11.pth
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
dec_layers, num_queries = 3, 100  # the variant: decoder layers and object queries kept (the checkpoint's first)
max_train_images = None  # None: the profile's (demo: the first 120 of the 400; study: every one)
max_val_images = None
min_size, max_size = None, None  # evaluation: the shorter image side, the longer at most (800, 1333 in the study)
train_scales = None  # shorter sides drawn in training (480..800 in the study)
num_workers = None
threads = None  # torch threads per run; None: the profile's (demo: 1)
parallel_runs = None  # runs at a time; None: as many as the cores hold on the CPU (fixed threads), 1 on a GPU
wait_for_runs = 0  # seconds to wait for the compared runs that notebooks beside this one train (make demo)
progress = None  # progress bars; None: widgets in JupyterLab, none when headless
n_resamples = 1000  # bootstrap resamples of the val images for the comparison with the baseline

# %%
from detr_nb_utils.notebook import config_parameters
from detr_nb_utils.training import make_config

cfg = make_config(**config_parameters(globals()))  # the cell above, handed over in one call

# %% [markdown]
# ## Setup
# Imports, the project root as working directory, the device; the profile is printed, with a warning when the data
# and weights are the demo's.

# %%
from detr_nb_utils.analysis import by_recipe, by_variant, load_runs
from detr_nb_utils.analysis import render, runs_note
from detr_nb_utils.notebook import plot_ap_per_layer, save_fig
from detr_nb_utils.notebook import against_baseline, await_family, change_findings, check_data, plan, seeded
from detr_nb_utils.notebook import show_runs
from detr_nb_utils.notebook import variant_of_config
from detr_nb_utils.notebook import setup_notebook
from detr_nb_utils.notebook import layer_ap_table, save_table
from detr_nb_utils.notebook import diagnostics_sentence, finetune_lines, layer_sentence, show_diagnostics
from detr_nb_utils.notebook import WHY_IN_03, show_takeaway, sign_line
from detr_nb_utils.training import run_all

device, report_dir = setup_notebook(cfg, report_dir)

# %% [markdown]
# ## 1. Check the data, and plan the runs
# The split must be the one its manifest describes and every image must be there before training starts. Then the
# runs, one per training seed: which will train, resume or only be read back, and how long the rest should take.

# %%
data = check_data(cfg)
configs = seeded([cfg], n_seeds)
plan(configs, parallel_runs)

# %% [markdown]
# ## 2. Fine-tune
# The same engine and recipe as 03, the seeds side by side where that is faster (the same metrics as one after the
# other). Epoch 0 is the checkpoint cut to 3 layers.

# %%
records = run_all(configs, parallel_runs)
prefix = "04_" + cfg.run_dir.name  # file names of this variant's figures and tables
epochs_table = show_runs(records, prefix, report_dir)
epochs_table

# %% [markdown]
# ## 3. Depth, layer by layer
# AP of every decoder layer's predictions (the paper's Fig. 4), mean over the seeds: the 6-layer baseline's (03's
# runs) and the cut model's, at epoch 0 and at the final epoch. At epoch 0 the cut model *is* the baseline stopped
# after its third layer, so the two start from the same point; the question is what the three layers above it add
# before and after fine-tuning, and whether the cut model's own layer 3 catches up.

# %%
await_family(cfg, n_seeds, wait_for_runs)  # make demo trains 03-05 side by side
family = by_variant(by_recipe(load_runs(cfg.out_dir)).get(cfg.recipe, {}))
depth = {v: family[v] for v in ("dec6_q100", variant_of_config(cfg)) if v in family}
layers = layer_ap_table(depth)
save_table(100 * layers, "04_ap_per_layer", report_dir, floatfmt=".1f")
fig = plot_ap_per_layer(layers)
save_fig(fig, "04_ap_per_layer", report_dir)

# %% [markdown]
# ## 4. Against the baseline
# The question is answered against 03's baseline (6 layers, 100 queries, the same recipe; its runs are in the same
# `out_dir`): the difference of the final AP, signed 3-layer - 6-layer (the smaller model minus the one it was cut
# from: negative when the cut loses AP), with its paired 95% interval over the validation images (and the
# seeds, from three), Holm-adjusted over the family of the three decoder pairs as 06 does, and each model's
# validation minus training loss gap (positive: worse on images it did not train on). Then what fine-tuning changed
# for this variant, from its own epoch 0.

# %%
versus, versus_findings = against_baseline(cfg, [variant_of_config(cfg)], prefix, report_dir, n_resamples)
changes, change = change_findings(records, variant_of_config(cfg), n_resamples)
print(render(change))

# %% [markdown]
# ## 5. What the cut model gets wrong
# As in 03, from the saved detections of the first seed at its final epoch: AP per class and by size, the
# precision-recall curves, the confusion matrix, the kinds of error, the errors of each of its 3 decoder layers
# (compare with 03's six: which errors did the layers it lost remove?), and the loss term by term, every seed.

# %%
diagnosed = show_diagnostics(records, "04", report_dir, n_resamples=n_resamples)

# %% [markdown]
# ## Takeaway

# %%
lines = finetune_lines(variant_of_config(cfg), changes, change, cfg.recipe, cfg.lr, cfg.lr_backbone,
                       where="03_recipe_arms", why=WHY_IN_03)
sign = sign_line(variant_of_config(cfg), "dec6_q100",
                 f"the {cfg.dec_layers}-layer model minus the 6-layer one it was cut from")
versus_text = [f.text() for f in versus_findings[:1]]
lines = [sign, *versus_text, *lines[:2], diagnostics_sentence(diagnosed), layer_sentence(diagnosed)]
show_takeaway(lines, f"{prefix}_takeaway", report_dir, runs_note(records.values()))
