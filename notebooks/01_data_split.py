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
# # 01 · The mini-COCO split
#
# **Question.** Does a seeded 4,000 / 1,000 split of COCO val2017 keep COCO's mix of categories and of crowded
# images?
#
# The original study fine-tuned DETR on COCO val2017 cut into 4,000 training and 1,000 validation images. This
# notebook makes that split reproducibly (a seeded permutation, recorded with checksums in a manifest) and
# looks at what each side holds.
#
# Run it top to bottom in JupyterLab, or headless: `papermill notebooks/01_data_split.ipynb out.ipynb -p profile
# demo`. Every value in the `parameters` cell can be passed with `-p name value`; `None` means the profile's default
# (`study`: the original study's settings; `demo`, or `DETR_NB_PROFILE=demo`: offline, synthetic data, a tiny
# DETR, minutes on a CPU). Paths are relative to the project root.

# %% tags=["parameters"]
profile = None  # "study" (the original study's settings) or "demo"; None: $DETR_NB_PROFILE, else "study"
data_root = None  # folder holding COCO val2017 (val2017/ + annotations/)
split_dir = None  # where train.json, val.json and split_manifest.json are written
n_train = None  # 4000 in the study
n_val = None  # 1000 in the study
split_seed = None  # 42 in the study
report_dir = None  # figures and tables; None: report/ (study) or <out_dir>/report (demo)
progress = None  # progress bars; None: widgets in JupyterLab, none when headless

# %%
from detr_nb_utils.notebook import config_parameters
from detr_nb_utils.training import make_config

cfg = make_config(**config_parameters(globals()))  # the cell above, handed over in one call

# %% [markdown]
# ## Setup
# Imports, the project root as working directory, the device; the profile is printed, with a warning when the data
# and weights are the demo's.

# %%
import matplotlib.pyplot as plt
import pandas as pd

from detr_nb_utils.data import COCO_NAMES, CROWDED_THRESHOLD, CocoDetection, make_split, split_diversity, verify_split
from detr_nb_utils.data import largest_share_gap, random_split_gaps
from detr_nb_utils.training import prepare_data
from detr_nb_utils.notebook import gt_panels, objects_per_image, plot_category_distribution, plot_detections
from detr_nb_utils.notebook import plot_objects_per_image, save_fig, save_table, setup_notebook
from detr_nb_utils.notebook import show_takeaway, split_lines, split_summary

device, report_dir = setup_notebook(cfg, report_dir)

# %% [markdown]
# ## 1. The source
# The split is cut from one COCO instances file. `prepare_data` (the same call notebooks 03-05 make) finds it,
# and makes what is missing: in the demo profile a pool of 500 synthetic COCO-format images (coloured shapes
# labelled with real COCO category ids, crowd regions, empty images, every 10th image crowded with 8-12 smaller
# shapes), and the split itself.

# %%
data = prepare_data(cfg)
data.image_dir, data.annotation_file

# %% [markdown]
# ## 2. The split and its manifest
# `make_split` permutes the image ids with `numpy.random.default_rng(split_seed)`: the first `n_train` go to
# train, the next `n_val` to val. Each side keeps all annotations of its images. The manifest records the seed,
# the ids and the SHA-256 of every file, so the same seed and source give byte-identical files: writing the
# split again here changes nothing that `prepare_data` wrote.

# %%
manifest = make_split(data.annotation_file, cfg.split_dir, n_train=cfg.n_train, n_val=cfg.n_val,
                      seed=cfg.split_seed)
{k: manifest[k] for k in ("seed", "rng", "n_train", "n_val")}

# %% [markdown]
# `verify_split` re-reads everything and raises, listing every problem, if a file was changed afterwards.

# %%
verify_split(cfg.split_dir, data.annotation_file)["source"]["sha256"]

# %%
summary = split_summary(manifest)
save_table(summary, "01_split_summary", report_dir)

# %% [markdown]
# ## 3. Categories
# A share is a category's fraction of a side's boxes; a ratio of 1.0 means the side keeps the source's
# share exactly.

# %%
diversity = split_diversity(manifest)
present = diversity[diversity["source"] > 0]  # the categories the source holds (COCO has 80; the demo a few)
save_table(present, "01_category_distribution", report_dir)
present.nlargest(10, "source")[["name", "source", "train", "val", "train_ratio", "val_ratio"]]

# %%
fig = plot_category_distribution(diversity)
save_fig(fig, "01_category_distribution", report_dir)

# %% [markdown]
# Is that mix kept well? One number sums it up: the largest gap, in points, between a category's share of the val
# boxes and its share of the source's. Its yardstick is what chance gives: the same gap for 200 random splits of the
# same images with the same sizes. A seeded split is one such draw, so its gap should sit inside their spread.

# %%
gaps = random_split_gaps(data.annotation_file, cfg.n_train, cfg.n_val, n_splits=200, seed=0)
gap, widest = largest_share_gap(diversity)
yardstick = pd.Series({"this split": gap, f"{len(gaps)} random splits: median": pd.Series(gaps).median(),
                       "95th percentile": pd.Series(gaps).quantile(0.95), "largest": gaps.max()})
save_table(yardstick.rename_axis("split").to_frame("largest share gap (points)"), "01_split_yardstick", report_dir,
           floatfmt=".2f")

# %%
fig, ax = plt.subplots(figsize=(6, 3), layout="constrained")
ax.hist(gaps, bins=30, color="0.7")
ax.axvline(gap, color="crimson", label=f"this split: {gap:.2f} ({widest})")
ax.set(xlabel="largest category-share gap, val vs source (points)", ylabel="random splits",
       title=f"The split's gap among {len(gaps)} random {cfg.n_train}/{cfg.n_val} splits of the same images")
ax.legend()
save_fig(fig, "01_split_yardstick", report_dir)

# %% [markdown]
# ## 4. Objects per image
# DETR predicts one set of `num_queries` boxes per image, so an image with more objects than queries cannot be
# fully detected. The 50-query variant of notebook 05 meets this limit on the images right of the line.

# %%
counts = objects_per_image(cfg.split_dir)
fig = plot_objects_per_image(counts, CROWDED_THRESHOLD)
save_fig(fig, "01_objects_per_image", report_dir)

# %%
crowded = counts[counts["boxes"] > CROWDED_THRESHOLD].sort_values("boxes", ascending=False)
save_table(crowded, "01_crowded_images", report_dir)

# %% [markdown]
# The most crowded validation images, with their ground-truth boxes:

# %%
val_images = CocoDetection(data.val_file, data.image_dir)
most = counts.query("side == 'val'").nlargest(3, "boxes")["image_id"]
images, panels = gt_panels(val_images, [val_images.ids.index(i) for i in most])
fig = plot_detections(images, panels, COCO_NAMES, title="Most crowded val images (ground truth)")
save_fig(fig, "01_crowded_val_images", report_dir)

# %% [markdown]
# ## Takeaway

# %%
lines = split_lines(summary, diversity, gaps)
show_takeaway(lines, "01_takeaway", report_dir)
