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
# # 06 · Analysis: the three decoders compared
#
# **Question.** Which decoder is best on mini-COCO, and does the original study's ranking by total validation loss
# survive measuring with COCO AP and depth-fair losses?
#
# This notebook reads the run folders written by 03-05 and never retrains. It finds them by what they hold (each
# folder's `config.json`: layers, queries, query slots, seed, recipe), refuses to compare runs made on different
# splits, in different precisions or with different recipes (naming the field and both folders), works with whatever
# runs exist and says which are missing. Runs of a declared recipe arm (03's `checkpoint_rates`, `warmup`) are their
# own family: the headline compares the variants within one recipe, and section 13 asks whether the ranking holds
# under each other arm.
#
# The comparison is fixed before any result is seen. **Primary: the final epoch** of every run: the headline
# table, the rankings and the differences use it. The best epoch is picked on the very validation images it is
# scored on, so it is **secondary**, labelled so, and its interval re-picks the best epoch inside every bootstrap
# resample. Changes from epoch 0 are signed: fine-tuning may lose AP. A 50-query model outputs only 50 detections
# per image, so every variant is also scored at 50 detections per image (`AP@50det`), and the 100- against
# 50-query comparisons are made on it. Pairwise differences are Holm-adjusted over their family, one per question
# (which decoder; which 50 queries), the same families 04 and 05 report.
#
# Run it top to bottom in JupyterLab, or headless: `papermill notebooks/06_analysis.ipynb out.ipynb -p profile
# demo`. Every value in the `parameters` cell can be passed with `-p name value`; `None` means the profile's default
# (`study`: the original study's settings; `demo`, or `DETR_NB_PROFILE=demo`: offline, synthetic data, a tiny
# DETR, minutes on a CPU). Paths are relative to the project root.

# %% tags=["parameters"]
profile = None  # "study" or "demo"; None: $DETR_NB_PROFILE, else "study"
out_dir = None  # where 03-05 wrote their run folders
run_names = None  # None: every run folder in out_dir (found by its config.json, whatever its name)
recipe = None  # the recipe whose runs make the headline; None: "original" (the other arms: section 13)
n_resamples = 1000  # bootstrap resamples of the validation images (95% intervals)
latency_size = None  # [h, w] of the GFLOPs and latency; None: 800x1066 (study), 96x134 (demo)
report_dir = None  # figures and tables; None: report/ (study) or <out_dir>/report (demo)
progress = None  # unused here; kept so every notebook takes the same names

# %%
from detr_nb_utils.notebook import config_parameters
from detr_nb_utils.training import make_config

cfg = make_config(**config_parameters(globals()))  # the cell above, handed over in one call

# %% [markdown]
# ## Setup
# Imports, the project root as working directory, the device; the profile is printed, with a warning when the data
# and weights are the demo's.

# %%
from detr_nb_utils.analysis import ApBootstrap, QUERY_CHOICES, VARIANTS, ap_per_layer, by_variant, comparison_table
from detr_nb_utils.analysis import cost_vs_ap, differences_table, finetuning_gain_table, first_seed_runs, headline_table
from detr_nb_utils.analysis import layer_equivalence, load_runs, missing_variants, original_study_table
from detr_nb_utils.analysis import ranking_conclusion, ranking_table, rankings, seeds_table, uncertainty_conclusion
from detr_nb_utils.analysis import QUERY_PAIRS, VARIANT_PAIRS, by_recipe, ranking_under_arms, render, variant_costs
from detr_nb_utils.notebook import parameter_counts, plot_ap_curves, plot_ap_intervals, plot_ap_per_layer
from detr_nb_utils.notebook import plot_loss_curves, save_fig, save_table, save_takeaway, setup_notebook
from detr_nb_utils.notebook import with_train_views

device, report_dir = setup_notebook(cfg, report_dir)

# %% [markdown]
# ## 1. The run folders
# Every folder of `out_dir` with a `config.json` is a run; its variant comes from the config, not the folder name.
# `load_runs` stops here, naming both folders, when two runs used different split manifests, computed in
# different precisions or were made with different recipes (naming the field); runs of a declared recipe arm are
# grouped apart, and the headline uses the runs of `recipe`.

# %%
families = by_recipe(load_runs(cfg.out_dir, run_names))  # every run, by recipe arm
runs = families.get(cfg.recipe, {})  # every seed of every variant, the headline's recipe
groups = by_variant(runs)
main = {v: groups[v] for v in VARIANTS if v in groups}  # the three variants, every seed
first = first_seed_runs(runs)
records = {v: first[v] for v in main}  # the first seed of each variant
missing = missing_variants(runs, list(VARIANTS))
print("found:", {v: list(g) for v, g in groups.items()}, "| missing:", missing, "| recipe arms:",
      {arm: len(family) for arm, family in families.items()})
{name: f"{len(r.metrics) - 1} of {r.config.epochs} epochs, {r.effective_precision}" for name, r in runs.items()}

# %% [markdown]
# ## 2. The headline: AP at the final epoch
# Each variant's AP at its final epoch (mean over its seeds) and at 50 detections per image, with 95% intervals:
# a bootstrap over the validation images (`n_resamples` resamples with replacement; the matching of detections to
# objects is done once, each resample only re-weights the images), which with several seeds also redraws the seeds.

# %%
bootstrap = ApBootstrap({n: r for family in families.values() for n, r in family.items()}, n_resamples)
headline = headline_table(bootstrap, main)
save_table(headline, "06_headline", report_dir, floatfmt=".2f")

# %% [markdown]
# The rankings every criterion gives (1 is the best; ties share a rank):

# %%
ranked = rankings(main, headline)
ranking_table(ranked)

# %% [markdown]
# ## 3. The original study's table, and what it leaves out
# The original study ranked the variants by their lowest total validation loss. Beside it: the same runs' lowest
# final-layer and per-layer mean loss (fine-tuned epochs only: epoch 0 never counts as "best"), AP at the final
# epoch and its signed change from epoch 0 (percent; means over the seeds).

# %%
original = original_study_table(main)
save_table(original, "06_original_study", report_dir, floatfmt=".2f")

# %% [markdown]
# ## 4. Epoch 0, the final epoch, and the picked epochs
# For each run: the checkpoint before fine-tuning, the final epoch (primary), the epoch the original study would
# pick (lowest total loss) and the epoch of highest AP (secondary).

# %%
comparison = comparison_table(records)
save_table(comparison, "06_comparison", report_dir, floatfmt=".2f")

# %% [markdown]
# ## 5. Curves of all runs

# %%
curves = {name: with_train_views(r) for name, r in records.items()}
fig = plot_loss_curves(curves)
save_fig(fig, "06_loss_curves", report_dir)

# %%
fig = plot_ap_curves(curves)
save_fig(fig, "06_ap_curves", report_dir)

# %% [markdown]
# ## 6. AP per decoder layer
# Every decoder layer's output goes through the same heads, so each layer can be scored (the paper's Fig. 4).
# At the final epoch of each run:

# %%
layers = ap_per_layer(records)
save_table(100 * layers, "06_ap_per_layer", report_dir, floatfmt=".1f")
fig = plot_ap_per_layer(layers)
save_fig(fig, "06_ap_per_layer", report_dir)

# %% [markdown]
# The 3-layer model at epoch 0 *is* the 6-layer model stopped after its third decoder layer (same weights,
# same final norm), so its epoch-0 AP and loss terms must equal the 6-layer run's epoch-0 AP of layer 3 and its
# third auxiliary loss terms (the losses still tell when AP is 0):

# %%
equivalence = layer_equivalence(records)
equivalence

# %% [markdown]
# ## 7. Parameters

# %%
found = {n: (r.config.dec_layers, r.config.num_queries) for n, r in records.items()}
arch = next(iter(records.values())).config.arch if records else cfg.arch  # the runs' model: DETR-R50 or the tiny one
params = parameter_counts(found or VARIANTS, arch)
save_table(params, "06_parameter_counts", report_dir)  # 02 draws them

# %% [markdown]
# ## 8. Seeds
# Each variant was trained with `n_seeds` seeds (03-05). Epoch 0 does not depend on the seed (same weights,
# same images); the final AP does, through the data order and dropout. Mean, sample standard deviation, min
# and max over seeds (AP in percent); this spread covers the training runs only, the images held fixed:

# %%
seeds = seeds_table(runs)
save_table(seeds, "06_seeds", report_dir, floatfmt=".2f")

# %% [markdown]
# ## 9. What fine-tuning changed, from each variant's own epoch 0
# Every variant starts from the checkpoint, so its change is measured against its own epoch 0, on paired
# resamples (the same images for both epochs); negative when fine-tuning lost AP. Secondary: the best fine-tuned
# epoch, re-picked inside every resample, so the interval includes the selection.

# %%
gains = finetuning_gain_table(bootstrap, main)
save_table(gains, "06_finetuning_gain", report_dir, floatfmt=".2f")

# %%
fig = plot_ap_intervals(gains)
save_fig(fig, "06_ap_intervals", report_dir)

# %% [markdown]
# ## 10. Differences between the variants
# AP(a) − AP(b) at the final epoch, paired intervals; on `AP@50det` when the two have different numbers of
# queries. The three pairs are one family, as in 04 and 05: `p Holm` is the bootstrap p-value adjusted for it.

# %%
diffs = differences_table(bootstrap, main, VARIANT_PAIRS)
save_table(diffs, "06_differences", report_dir, floatfmt=".3f")

# %% [markdown]
# ## 11. Which 50 queries
# The first 50 (the original study's choice), the 50 most matched on the train split, and 50 spread evenly (notebook
# 05), at epoch 0 and fine-tuned; every pair of them at the final epoch, a second family, as in 05.

# %%
choices = {v: groups[v] for v in QUERY_CHOICES if v in groups}
query_table = finetuning_gain_table(bootstrap, choices)
save_table(query_table, "06_query_choices", report_dir, floatfmt=".2f")

# %%
query_diffs = differences_table(bootstrap, choices, QUERY_PAIRS)
save_table(query_diffs, "06_query_differences", report_dir, floatfmt=".3f")

# %% [markdown]
# ## 12. Cost versus accuracy
# Parameters, GFLOPs of one image (800x1066 in the study, the size of a 640x480 COCO image after the validation
# resize; 96x134 in the demo), and the median latency of that same image on the CPU (and the GPU when there is one),
# beside each variant's final AP and interval. A multiply-add counts as 2 FLOPs here; the paper's "86 GFLOPS" for
# DETR-R50 counts multiply-adds, so compare it with the `gmacs` column.

# %%
size = tuple(latency_size or ((96, 134) if cfg.profile == "demo" else (800, 1066)))
cost = cost_vs_ap(variant_costs(VARIANTS, size, device, arch, image_size=size), headline)
save_table(cost, "06_cost_vs_ap", report_dir, floatfmt=".2f")

# %% [markdown]
# ## 13. Does the ranking hold under the other recipe arms?
# 03 trains the baseline under the declared recipe arms too (and 04/05 the other variants, with `-p recipe ARM`).
# Within each arm, the variants' order by final AP and their differences (the decoder family, Holm-adjusted); an
# arm with a single variant says so.

# %%
under_arms = ranking_under_arms(bootstrap, families)
print(render(under_arms) or "No run of another recipe arm.")

# %% [markdown]
# ## Conclusion
# Every number and ranking below is read from the run folders.

# %%
text = ranking_conclusion(main, missing, headline, diffs) + "\n" + uncertainty_conclusion(
    headline, gains, diffs, query_diffs, equivalence, seeds, len(bootstrap.img_ids), n_resamples)
text += ("\n" + render(under_arms)) if under_arms else ""
save_takeaway(text, "06_conclusion", report_dir)
print(text)
