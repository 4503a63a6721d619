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
# own family: the headline compares the variants within one recipe, and section 12 asks whether the ranking holds
# under each other arm.
#
# The comparison is fixed before any result is seen. **Primary: the final epoch** of every run: the headline
# table, the rankings and the differences use it. The best epoch is picked on the very validation images it is
# scored on, so it is **secondary**, labelled so, and its interval re-picks the best epoch inside every bootstrap
# resample. Changes from epoch 0 are signed: fine-tuning may lose AP. A 50-query model outputs only 50 detections
# per image, so every variant is also scored at 50 detections per image (`AP@50det`), and the 100- against
# 50-query comparisons are made on it. Pairwise differences are Holm-adjusted over their family, one per question
# (which decoder; which 50 queries), the same families 04 and 05 report, with one sign convention everywhere: **a −
# b is the smaller model minus the one it was cut from** (3 layers − 6 layers, 50 queries − 100), so a negative
# difference is what the cut loses. AP is in points (COCOeval's fractions × 100).
#
# Run it top to bottom in JupyterLab, or headless: `papermill notebooks/06_analysis.ipynb out.ipynb -p profile
# demo`. Every value in the `parameters` cell can be passed with `-p name value`; `None` means the profile's default
# (`study`: the original study's settings; `demo`, or `DETR_NB_PROFILE=demo`: offline, synthetic data, a tiny
# DETR, minutes on a CPU). Paths are relative to the project root.

# %% tags=["parameters"]
profile = None  # "study" or "demo"; None: $DETR_NB_PROFILE, else "study"
out_dir = None  # where 03-05 wrote their run folders
run_names = None  # None: every run folder in out_dir (found by its config.json, whatever its name)
recipe = None  # the recipe whose runs make the headline; None: "original" (the other arms: section 12)
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
import pandas as pd
from IPython.display import Markdown

from detr_nb_utils.analysis import ApBootstrap, QUERY_CHOICES, QUERY_PAIRS, VARIANTS, VARIANT_PAIRS, by_recipe
from detr_nb_utils.analysis import by_variant, comparison_table, cost_vs_ap, differences_table, finetuning_gain_table
from detr_nb_utils.analysis import first_seed_runs, headline_table, layer_equivalence, load_runs, missing_variants
from detr_nb_utils.analysis import original_study_table, ranking_table, rankings, reported_losses, seeds_table
from detr_nb_utils.analysis import answer, ranking_under_arms, render, study_findings, variant_costs
from detr_nb_utils.analysis import RunDiagnostics, SubgroupAp, errors_by_kind, errors_sentence, layer_change_sentence
from detr_nb_utils.analysis import layer_changes, sizes_table, subgroup_findings, subgroup_paragraph, variant_errors
from detr_nb_utils.analysis import class_ap_by_variant, sizes_sentence
from detr_nb_utils.analysis.arms import arm_table
from detr_nb_utils.analysis.findings import by_key
from detr_nb_utils.notebook import layer_ap_table, parameter_counts, plot_ap_by_size, plot_error_breakdown
from detr_nb_utils.notebook import plot_forest, plot_layer_errors, plot_subgroup_changes, plot_variant_curves
from detr_nb_utils.notebook import plot_class_ap, plot_confusion, plot_loss_terms, plot_pr_curves
from detr_nb_utils.analysis import runs_loss_terms
from detr_nb_utils.notebook import plot_variant_layers, save_fig, save_findings, save_table, save_takeaway
from detr_nb_utils.notebook import setup_notebook

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
records = {v: r for v, r in first_seed_runs(runs).items() if v in main}  # the first seed of each variant
missing = missing_variants(runs, list(VARIANTS))
print("found:", {v: list(g) for v, g in groups.items()}, "| missing:", missing, "| recipe arms:",
      {arm: len(family) for arm, family in families.items()})

# %% [markdown]
# ## 2. The headline: AP at the final epoch
# Each variant's AP at its final epoch (mean over its seeds) and at 50 detections per image, with 95% intervals:
# a bootstrap over the validation images (`n_resamples` resamples with replacement; the matching of detections to
# objects is done once, each resample only re-weights the images), which with three seeds or more also redraws the
# seeds. 03-05 scored the same runs on the same resamples: their scores are read back from `<out_dir>/.bootstrap`.

# %%
bootstrap = ApBootstrap({n: r for family in families.values() for n, r in family.items()}, n_resamples)
headline = headline_table(bootstrap, main)
save_table(headline, "06_headline", report_dir, floatfmt=".2f")

# %% [markdown]
# ## 3. The rankings, and the original study's
# The ranks every criterion gives (1 is the best; ties share a rank): the original study's (the lowest total
# validation loss over the fine-tuned epochs), the three losses and AP at the final epoch.

# %%
ranked = rankings(main, headline)
save_table(ranking_table(ranked), "06_rankings", report_dir)

# %% [markdown]
# What the original study reported, in a table of its own: DETR-R50's losses on COCO, another model on other data
# (in the demo, a tiny DETR on shapes), so never set in one table with these runs' losses.

# %%
save_table(reported_losses(list(main)), "06_original_study", report_dir, floatfmt=".2f")

# %% [markdown]
# The original study's criterion measured on these runs: each variant's lowest total, final-layer and per-layer mean
# validation loss over its fine-tuned epochs (epoch 0 never counts as "best"), beside its AP at the final epoch and
# its signed change from epoch 0 (points; means over the seeds).

# %%
save_table(original_study_table(main), "06_losses", report_dir, floatfmt=".2f")

# %% [markdown]
# For each variant's first seed: the checkpoint before fine-tuning, the final epoch (primary), the epoch the
# original study would pick (lowest total loss) and the epoch of highest AP (secondary).

# %%
comparison = comparison_table(records)
save_table(comparison, "06_comparison", report_dir, floatfmt=".2f")

# %% [markdown]
# ## 4. Curves of every seed
# Each variant's mean over its seeds, with a band from its lowest to its highest seed: the last point of each AP
# line is the headline's AP.

# %%
save_fig(plot_variant_curves(main, "loss"), "06_loss_curves", report_dir)

# %%
save_fig(plot_variant_curves(main, "AP"), "06_ap_curves", report_dir)

# %% [markdown]
# ## 5. AP per decoder layer
# Every decoder layer's output goes through the same heads, so each layer can be scored (the paper's Fig. 4): at
# the final epoch (mean over the seeds, band: lowest to highest) and at epoch 0 (dashed).

# %%
layers = layer_ap_table(main)
save_table(100 * layers, "06_ap_per_layer", report_dir, floatfmt=".1f")
save_fig(plot_variant_layers(main), "06_ap_per_layer", report_dir)

# %% [markdown]
# The 3-layer model at epoch 0 *is* the 6-layer model stopped after its third decoder layer (same weights,
# same final norm), so its epoch-0 AP and loss terms must equal the 6-layer run's epoch-0 AP of layer 3 and its
# third auxiliary loss terms (the losses still tell when AP is 0):

# %%
equivalence = layer_equivalence(records)
equivalence

# %% [markdown]
# ## 6. Parameters

# %%
found = {n: (r.config.dec_layers, r.config.num_queries) for n, r in records.items()}
arch = next(iter(records.values())).config.arch if records else cfg.arch  # the runs' model: DETR-R50 or the tiny one
params = parameter_counts(found or VARIANTS, arch)
save_table(params, "06_parameter_counts", report_dir)  # 02 draws them

# %% [markdown]
# ## 7. Seeds
# Epoch 0 does not depend on the seed (same weights, same images); the final AP does, through the data order and
# dropout. Per variant and epoch, over its seeds: mean, sample standard deviation, lowest and highest AP (points).
# This spread covers the training runs only, the images held fixed.

# %%
save_table(seeds_table(runs), "06_seeds", report_dir, floatfmt=".2f")

# %% [markdown]
# ## 8. What fine-tuning changed, from each variant's own epoch 0
# Every variant starts from the checkpoint, so its change is measured against its own epoch 0, on paired
# resamples (the same images for both epochs); negative when fine-tuning lost AP. Secondary: the best fine-tuned
# epoch, re-picked inside every resample, so the interval includes the selection.

# %%
gains = finetuning_gain_table(bootstrap, main)
save_table(gains, "06_finetuning_gain", report_dir, floatfmt=".2f")

# %% [markdown]
# ## 9. Differences between the variants
# AP(a) − AP(b) at the final epoch, a the smaller model, paired intervals; on `AP@50det` when the two have
# different numbers of queries. The three pairs are one family, as in 04 and 05: `p Holm` is the bootstrap p-value
# adjusted for it.

# %%
diffs = differences_table(bootstrap, main, VARIANT_PAIRS)
save_table(diffs, "06_differences", report_dir, floatfmt=".3f")

# %% [markdown]
# ## 10. Which 50 queries
# The first 50 (the original study's choice), the 50 most matched on the train split, and 50 spread evenly (notebook
# 05), at epoch 0 and fine-tuned; every pair of them at the final epoch, a second family, as in 05 (each choice minus
# the first 50, and spread minus most matched).

# %%
choices = {v: groups[v] for v in QUERY_CHOICES if v in groups}
save_table(finetuning_gain_table(bootstrap, choices), "06_query_choices", report_dir, floatfmt=".2f")
query_diffs = differences_table(bootstrap, choices, QUERY_PAIRS)
save_table(query_diffs, "06_query_differences", report_dir, floatfmt=".3f")

# %% [markdown]
# ## 11. Cost versus accuracy
# Parameters, GFLOPs of one image (800x1066 in the study, the size of a 640x480 COCO image after the validation
# resize; 96x134 in the demo), and the median latency of that same image on the CPU (and the GPU when there is one),
# beside each variant's final AP and interval. A multiply-add counts as 2 FLOPs here; the paper's "86 GFLOPS" for
# DETR-R50 counts multiply-adds, so compare it with the `GMACs` column.

# %%
size = tuple(latency_size or ((96, 134) if cfg.profile == "demo" else (800, 1066)))
cost = cost_vs_ap(variant_costs(VARIANTS, size, device, arch, image_size=size), headline)
save_table(cost, "06_cost_vs_ap", report_dir, floatfmt=".2f")

# %% [markdown]
# ## 12. The recipe arms
# 03 trains the baseline under the declared recipe arms too. Each arm's change from epoch 0 after the first
# fine-tuned epoch and at the end, and each arm against the original (paired), read back from 03's scores; then,
# within each arm that holds several variants, the variants' order by final AP.

# %%
arms_table, arm_findings = arm_table(bootstrap, families, "dec6_q100") if "dec6_q100" in groups else (None, [])
under_arms = ranking_under_arms(bootstrap, families)
print(render(arm_findings + under_arms) or "No run of another recipe arm.")

# %% [markdown]
# ## 13. The findings
# Everything above, as findings (claim, value, interval, verdict), saved for the report at the end; a forest plot
# of the two paired comparisons that matter: each variant's change from its own epoch 0, and the differences between
# the variants (the interval of a difference is its own, not two overlapping intervals).

# %%
findings = study_findings(main, headline, gains, diffs, query_diffs=query_diffs, query_groups=choices,
                          arms=arm_findings, equivalence=equivalence, missing=missing)
fig = plot_forest({"change from epoch 0": list(by_key(findings, "change").values()),
                   "a − b, final epoch": list(by_key(findings, "diff").values())},
                  "Paired 95% intervals (points): fine-tuning's change, and the differences")
save_fig(fig, "06_changes_and_differences", report_dir)

# %% [markdown]
# ## Diagnostics
# From the saved detections, nothing retrained. **Where each smaller model loses**: on small, medium and large
# objects and on crowded images, against the baseline, on the same resamples as the headline (paired); a group
# whose change is below the variant's change on all objects loses more there.

# %%
subgroups = SubgroupAp(bootstrap).table(main)
save_table(subgroups, "06_subgroups", report_dir, floatfmt=".2f")
save_fig(plot_subgroup_changes(subgroups), "06_subgroups", report_dir)
diagnostic = subgroup_findings(subgroups)
print(subgroup_paragraph(diagnostic, subgroups.attrs["baseline"], subgroups.attrs["min_objects"]))

# %% [markdown]
# **AP by object size and the kinds of error**, for each variant's first seed (named in the figures): AP and recall
# by COCO's sizes, and the errors of the TIDE analysis, what each costs in AP50.

# %%
diagnostics = {v: RunDiagnostics(r) for v, r in records.items()}
named = {v: f"{v}, seed {r.config.seed}" for v, r in records.items()}  # one run each: its seed in every label
deep = max(records, key=lambda v: records[v].config.dec_layers)  # the baseline
sizes = {named[v]: d.sizes() for v, d in diagnostics.items()}
save_table(sizes_table(sizes), "06_sizes", report_dir, floatfmt=".1f")
save_fig(plot_ap_by_size(sizes), "06_sizes", report_dir)
print(sizes_sentence(sizes))

# %% [markdown]
# **AP per class**, each with its 95% interval over the validation images (a class seen in few images has a wide
# one), and the baseline's **precision-recall curves** (COCOeval's own precision, IoU 0.5 and 0.75) and
# **confusion matrix** (IoU ≥ 0.5, the score threshold on the figure); 03-05 draw them for every variant.

# %%
classes = {named[v]: d.classes(n_resamples) for v, d in diagnostics.items()}
save_table(class_ap_by_variant(classes), "06_class_ap", report_dir, floatfmt=".1f")
save_fig(plot_class_ap(classes[named[deep]], named[deep]), "06_class_ap", report_dir)
save_fig(plot_pr_curves(diagnostics[deep].pr_curves(), named[deep]), "06_pr_curves", report_dir)
save_fig(plot_confusion(diagnostics[deep].confusion(), named[deep]), "06_confusion", report_dir)

# %% [markdown]
# **The loss, term by term** (class, L1 box, GIoU), for every decoder layer of the baseline, training and
# validation, over every seed (mean and band): which term fine-tuning moves, and in which layers.

# %%
base_runs = {n: r.metrics for n, r in main[deep].items()}
fig = plot_loss_terms(runs_loss_terms(base_runs), f"{deep}: loss terms per decoder layer, mean of {len(base_runs)} "
                      "seeds (band: lowest to highest); epoch 0 validation only")
save_fig(fig, "06_loss_terms", report_dir)

# %%
errors = variant_errors(diagnostics).rename(index=named)
save_table(errors_by_kind(errors), "06_errors", report_dir, floatfmt=".1f")
save_fig(plot_error_breakdown(errors), "06_errors", report_dir)
print(errors_sentence(errors))

# %% [markdown]
# **Which errors each decoder layer removes** (the paper's Fig. 4 and its remark on duplicates, measured): every
# decoder layer of the baseline's first seed scored on its own, at epoch 0 and at the final epoch.

# %%
changes = {}
for epoch, name in ((0, "06_layer_errors_epoch0"), (None, "06_layer_errors")):
    table = diagnostics[deep].layer_errors(epoch)
    save_fig(plot_layer_errors(table), name, report_dir)
    at = f"epoch {table.attrs['epoch']}"
    changes[at] = layer_changes(table)
    print(f"{named[deep]} at {at}: {layer_change_sentence(changes[at])}")
save_table(pd.concat(changes, names=["at"]), "06_layer_changes", report_dir, floatfmt=".1f")

# %% [markdown]
# ## Takeaway
# Rendered from the findings above (every number is one of theirs; the report renders the same findings).

# %%
takeaway = answer(findings)
save_findings(findings + diagnostic, "06_findings", report_dir, n_images=len(bootstrap.img_ids),
              n_resamples=n_resamples, missing=missing)
layer_words = " ".join(f"{named[deep]} at {at}: {layer_change_sentence(c)}" for at, c in changes.items())
save_takeaway("\n\n".join([subgroup_paragraph(diagnostic, subgroups.attrs["baseline"], subgroups.attrs["min_objects"]),
                            sizes_sentence(sizes), errors_sentence(errors), layer_words]), "06_diagnostics", report_dir)
save_takeaway(takeaway, "06_takeaway", report_dir)
Markdown(takeaway)
