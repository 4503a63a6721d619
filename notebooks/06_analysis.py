# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · Analysis: the three decoders compared
#
# **Question.** Which decoder is best on mini-COCO, and does the original study's ranking by total validation loss
# survive measuring with COCO AP and depth-fair losses?
#
# This notebook reads the run folders written by 03-05 and never retrains. It works with whatever runs
# exist and says which are missing. Sections 1-6 compare the three variants (the first seed of each);
# 7-11 ask how sure the answer is: seeds, bootstrap intervals over the validation images, each variant
# against its own starting point, which 50 queries, and what each variant costs.
#
# Run it top to bottom in JupyterLab, or headless: `papermill notebooks/06_analysis.ipynb out.ipynb -p profile
# demo`. Every value in the `parameters` cell can be passed with `-p name value`; `None` means the profile's default
# (`study`: the original study's settings; `demo`, or `DETR_NB_PROFILE=demo`: offline, synthetic data, random
# weights, minutes on a CPU). Paths are relative to the project root.

# %% tags=["parameters"]
profile = None  # "study" or "demo"; None: $DETR_NB_PROFILE, else "study"
out_dir = None  # where 03-05 wrote their run folders
run_names = None  # None: every <variant>_seed<seed> folder in out_dir
n_resamples = 1000  # bootstrap resamples of the validation images (95% intervals)
latency_size = None  # [h, w] of the latency measurement; None: 800x1066 (study), 128x192 (demo)
report_dir = None  # figures and tables; None: report/ (study) or <out_dir>/report (demo)
progress = None  # unused here; kept so every notebook takes the same names

# %%
from detr_nb_utils import make_config, progress_policy

cfg = make_config(
    profile=profile, out_dir=out_dir,
    progress=progress_policy(progress),
)

# %% [markdown]
# ## Setup
# Imports, the project root as working directory, the device; the profile is printed, with a warning when the data
# and weights are the demo's.

# %%
from detr_nb_utils import QUERY_CHOICES, VARIANTS, first_seed_runs, load_runs, missing_variants
from detr_nb_utils import ap_per_layer, comparison_table, original_study_table, parameter_counts, with_train_views
from detr_nb_utils import ApBootstrap, differences_table, finetuning_gain_table, layer_equivalence, seeds_table
from detr_nb_utils import cost_vs_ap, ranking_conclusion, uncertainty_conclusion, variant_costs
from detr_nb_utils import plot_ap_curves, plot_ap_intervals, plot_ap_per_layer, plot_loss_curves
from detr_nb_utils import plot_parameter_counts, save_fig, save_table, save_takeaway, setup_notebook

device, report_dir = setup_notebook(cfg, report_dir)

# %% [markdown]
# ## 1. The run folders

# %%
runs = load_runs(cfg.out_dir, run_names)  # every seed of every variant
first = first_seed_runs(runs)
records = {v: first[v] for v in VARIANTS if v in first}  # the first seed of each variant
missing = missing_variants(runs, list(VARIANTS))
print("found:", list(runs), "| missing:", missing)
{name: f"{len(r.metrics) - 1} of {r.config.epochs} epochs" for name, r in runs.items()}

# %% [markdown]
# ## 2. The original study's table, and what it leaves out
# The original study ranked the variants by their best total validation loss. Beside it: the same runs' best
# final-layer loss, best per-layer mean loss, and best COCO AP (percent).

# %%
original = original_study_table(records)
save_table(original, "06_original_study", report_dir, floatfmt=".2f")
original

# %% [markdown]
# ## 3. Epoch 0 and the best epoch
# For each run: the checkpoint before fine-tuning, the epoch the original study would pick (lowest total loss) and
# the epoch of highest AP.

# %%
comparison = comparison_table(records)
save_table(comparison, "06_comparison", report_dir, floatfmt=".2f")
comparison

# %% [markdown]
# ## 4. Curves of all runs

# %%
curves = {name: with_train_views(r) for name, r in records.items()}
fig = plot_loss_curves(curves)
save_fig(fig, "06_loss_curves", report_dir)

# %%
fig = plot_ap_curves(curves)
save_fig(fig, "06_ap_curves", report_dir)

# %% [markdown]
# ## 5. AP per decoder layer
# Every decoder layer's output goes through the same heads, so each layer can be scored (the paper's Fig. 4).
# At the best-AP epoch of each run:

# %%
layers = ap_per_layer(records)
save_table(100 * layers, "06_ap_per_layer", report_dir, floatfmt=".1f")
fig = plot_ap_per_layer(layers)
save_fig(fig, "06_ap_per_layer", report_dir)

# %% [markdown]
# ## 6. Parameters

# %%
found = {n: (r.config.dec_layers, r.config.num_queries) for n, r in records.items()}
params = parameter_counts(found or VARIANTS)
save_table(params, "06_parameter_counts", report_dir)
fig = plot_parameter_counts(params)
save_fig(fig, "06_parameter_counts", report_dir)

# %% [markdown]
# ## 7. Seeds
# Each variant was trained with `n_seeds` seeds (03-05). Epoch 0 does not depend on the seed (same weights,
# same images); the best AP does, through the data order and dropout. Mean, sample standard deviation, min
# and max over seeds (AP in percent):

# %%
seeds = seeds_table(runs)
save_table(seeds, "06_seeds", report_dir, floatfmt=".2f")
seeds

# %% [markdown]
# ## 8. Zero-shot baselines and fine-tuning gains, with intervals
# Every variant starts from the checkpoint, so its fine-tuning gain is measured against its own epoch 0. The
# intervals: a bootstrap over the validation images (`n_resamples` resamples with replacement; the matching
# of detections to objects is done once, each resample only re-weights the images), the gain from *paired*
# resamples (the same images for both epochs).

# %%
bootstrap = ApBootstrap(runs, n_resamples)
gains = finetuning_gain_table(bootstrap, records)
save_table(gains, "06_finetuning_gain", report_dir, floatfmt=".2f")
gains

# %%
fig = plot_ap_intervals(gains)
save_fig(fig, "06_ap_intervals", report_dir)

# %% [markdown]
# The 3-layer model at epoch 0 *is* the 6-layer model stopped after its third decoder layer (same weights,
# same final norm), so its epoch-0 AP must equal the 6-layer run's epoch-0 AP of layer 3:

# %%
equivalence = layer_equivalence(records)
equivalence

# %% [markdown]
# ## 9. Differences between the variants
# AP(a) − AP(b) at each run's best epoch, paired intervals:

# %%
diffs = differences_table(bootstrap, records)
save_table(diffs, "06_differences", report_dir, floatfmt=".2f")
diffs

# %% [markdown]
# ## 10. Which 50 queries
# The first 50 (the original study's choice), the 50 most matched on the train split, and 50 spread evenly (notebook
# 05), at epoch 0 and fine-tuned; each against the first 50.

# %%
choices = {v: first[v] for v in QUERY_CHOICES if v in first}
query_table = finetuning_gain_table(bootstrap, choices)
save_table(query_table, "06_query_choices", report_dir, floatfmt=".2f")
query_table

# %%
query_diffs = differences_table(bootstrap, choices, [(v, "dec3_q50") for v in choices if v != "dec3_q50"])
save_table(query_diffs, "06_query_differences", report_dir, floatfmt=".2f")
query_diffs

# %% [markdown]
# ## 11. Cost versus accuracy
# Parameters, GFLOPs at 800x1066 (counted on PyTorch's meta device: shapes only), and the median latency of
# one image on the CPU (and the GPU when there is one), beside each variant's AP and interval.

# %%
size = latency_size or ((128, 192) if cfg.profile == "demo" else (800, 1066))
cost = cost_vs_ap(variant_costs(VARIANTS, size, device), gains)
save_table(cost, "06_cost_vs_ap", report_dir, floatfmt=".2f")
cost

# %% [markdown]
# ## Conclusion
# Every number and ranking below is read from the run folders.

# %%
text = ranking_conclusion(records, missing, gains) + "\n" + uncertainty_conclusion(
    gains, diffs, query_diffs, equivalence, seeds, len(bootstrap.img_ids), n_resamples)
save_takeaway(text, "06_conclusion", report_dir)
print(text)
