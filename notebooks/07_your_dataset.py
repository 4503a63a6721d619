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
# # 07 · Your own dataset: other classes, other ids
#
# **Question.** How do you fine-tune DETR on your own COCO-format dataset, with classes that are not COCO's, and
# does it help to start the classes COCO also has from the checkpoint's rows for them?
#
# The published code has no way to change the number of classes (a checkpoint with 91 classes does not load into
# a model with another head), and Hugging Face re-initialises the whole class head. Here the class head is rebuilt
# for your K classes: a class whose name is a COCO category's (case, spaces, underscores and hyphens ignored, plus
# the PASCAL VOC spellings such as "motorbike") starts from that category's row, the others start fresh, and the
# "no object" row is carried over. The notebook validates the data first, fine-tunes with the same engine as 03-05,
# evaluates in your category ids, measures the surgery against the whole head re-initialised, and shows
# predictions.
#
# Give your data as `-p dataset_dir DIR` (a folder laid out like COCO: `annotations/instances_train*.json` with
# `train*/`, and the same for `val`; or `train/_annotations.coco.json` and `valid/`) or as the four files below.
# In the demo profile it is a synthetic dataset with six shape classes and ids unlike COCO's: three of its names
# are COCO's, two are looks the tiny DETR knows under other COCO names, renamed, and one is a new shape.

# %% tags=["parameters"]
profile = None  # "study" or "demo"; None: $DETR_NB_PROFILE, else "study"
dataset_dir = None  # a folder laid out like COCO (see above); None in the demo: the synthetic one
train_annotation_file = None  # or the four files: COCO instances JSON of the training set
train_image_dir = None  # its images
val_annotation_file = None
val_image_dir = None
checkpoint = None  # None: the profile's (the official DETR-R50; the demo's tiny DETR)
out_dir = None  # run folders go to <out_dir>/<run_name>
run_name = "own"  # the run folder's name; the re-initialised comparison gets "<run_name>_reinit"
class_head = "match"  # "match": rows by name (above); "reinit": the whole head fresh
compare_reinit = True  # also train with the whole head re-initialised, to measure the surgery
report_dir = None  # figures and tables; None: report/ (study) or <out_dir>/report (demo)
device = None
precision = None
seed = None
epochs = None  # None: 5 (the study's, also in the demo)
batch_size = None  # None: 2 (the study's)
lr = None  # None: 1e-4 (the study's)
lr_backbone = None
recipe = None  # None: the recipe arm the demo's measurement supports for your data ("original"; printed with why)
dec_layers = None  # decoder layers kept from the checkpoint (None: 6)
num_queries = None  # object queries kept (None: 100)
max_train_images = None
max_val_images = None
min_size = None
max_size = None
num_workers = None
threads = None
parallel_runs = None  # runs at a time (the surgery and its comparison); None: as many as the cores hold
progress = None
threshold = 0.7  # the score a prediction needs to be drawn
predict_paths = None  # images (files or folders) to predict at the end; None: the first 6 validation images
n_resamples = 1000  # bootstrap resamples of the validation images

# %%
import os

from detr_nb_utils.notebook import config_parameters
from detr_nb_utils.training import DEMO_OWN_DATA, RECOMMENDED_RECIPE, make_config

params = config_parameters(globals())  # the cell above, handed over in one call
own_files = [train_annotation_file, train_image_dir, val_annotation_file, val_image_dir]
demo_data = ((profile or os.environ.get("DETR_NB_PROFILE")) == "demo" and dataset_dir is None
             and all(v is None for v in own_files))
if demo_data:  # the demo's own dataset (made in the setup cell when missing) and the study's 5 epochs
    params |= {"dataset_dir": DEMO_OWN_DATA["dataset_dir"], "epochs": epochs or DEMO_OWN_DATA["epochs"]}
cfg = make_config(**params | {"recipe": recipe or RECOMMENDED_RECIPE})
if not cfg.own_data:
    raise ValueError("07_your_dataset needs your dataset: pass -p dataset_dir DIR, or train_annotation_file, "
                     "train_image_dir, val_annotation_file and val_image_dir (the demo profile brings its own)")

# %% [markdown]
# ## Setup

# %%
from dataclasses import replace

import pandas as pd

from detr_nb_utils.data import CocoDetection, make_own_dataset, read_image
from detr_nb_utils.training import build_model, model_from_run, predict_images, prepare_data, run_all
from detr_nb_utils.training import write_outputs
from detr_nb_utils.analysis import class_groups, group_ap_table, group_difference, run_change, runs_note
from detr_nb_utils.analysis import surgery_takeaway
from detr_nb_utils.notebook import plot_ap_curves, plot_detections, run_table, save_fig, save_table
from detr_nb_utils.notebook import plan, recipe_advice, setup_notebook, shown, with_train_views
from detr_nb_utils.notebook import diagnostics_sentence, finetune_lines, show_diagnostics, show_takeaway

device, report_dir = setup_notebook(cfg, report_dir)
if demo_data:
    make_own_dataset(cfg.dataset_dir)  # paths are relative to the project root, where setup_notebook moved

# %% [markdown]
# ## 1. Validate the data
# Every check runs before any training: the file's structure, ids used twice, annotations pointing at unknown
# images or categories, boxes outside their image or of no size, and every image file present, decodable and of
# its annotated size. A bad dataset stops here with one error that names each kind of problem, its count and the
# first offending entries.

# %%
data = prepare_data(cfg)  # validates both sets (validate_coco_dataset) and makes the label map
shown(pd.DataFrame({split: summary.to_frame()["value"] for split, summary in data.summaries.items()}))

# %% [markdown]
# ## 2. The label map and the class head
# Your categories, in ascending id, get the class indices 0..K-1 the model predicts; every prediction is mapped back
# to your id before evaluation, so AP is computed in your ids. The class head gets K + 1 rows; the table says where
# each starts from.

# %%
model, criterion, load_report = build_model(cfg, device, data.labels)
head = load_report.class_sources.assign(id=[*data.labels.ids, ""])[["id", "name", "row", "from"]]
save_table(head, "07_class_head", report_dir)

# %% [markdown]
# ## 3. Fine-tune
# The same engine as 03-05: epoch 0 is the loaded checkpoint with its rebuilt head, then `epochs` epochs with the
# recipe arm below, chosen by what the demo's measurement of the arms supports unless `recipe` is given. The run
# folder also holds `categories.json` (the label map) and `class_head.csv`. With `compare_reinit`, the same run again
# with the whole class head re-initialised, beside it (one process each).

# %%
print(recipe_advice(cfg.recipe, given=recipe is not None))
configs = {"match": cfg}
if compare_reinit and cfg.class_head == "match":
    configs["reinit"] = replace(cfg, class_head="reinit", run_name=f"{cfg.run_dir.name}_reinit")
plan(list(configs.values()), parallel_runs)
runs_by_name = run_all(configs.values(), parallel_runs)
records = {label: runs_by_name[c.run_dir.name] for label, c in configs.items()}
record = records[cfg.class_head]

# %%
fig = plot_ap_curves({f"class head: {k}": with_train_views(r) for k, r in records.items()})
save_fig(fig, "07_ap_curves", report_dir)

# %%
save_table(run_table(record), "07_epochs", report_dir, floatfmt=".2f")

# %% [markdown]
# ## 4. Per class
# AP of each of your classes (in points) before training and at the end; a class the checkpoint knows under a
# matching COCO name starts where the checkpoint left it.

# %%
per_class = (100 * record.per_category_ap.loc[[0, record.final_epoch]].T).set_axis(["epoch 0", "final"], axis=1)
per_class.insert(0, "row from", head.set_index("name").loc[per_class.index, "from"])
save_table(per_class.rename_axis("class"), "07_per_class_ap", report_dir, floatfmt=".1f")

# %% [markdown]
# ## 5. Does the surgery help?
# The classes that started from a matching COCO row ("matched") and those that started fresh, with the surgery and
# with the whole head re-initialised, at epoch 0 and at the end: AP in points with its 95% interval over the
# validation images; then the paired difference (surgery minus re-initialised) at the end.

# %%
val_set = CocoDetection(*data.files("val"), labels=data.labels)
val_gt = val_set.coco
if "reinit" in records:
    groups = class_groups(records["match"])
    groups_table = group_ap_table(val_gt, records, groups, n_resamples)
    diffs = {g: group_difference(val_gt, records["match"], records["reinit"], cats, n_resamples=n_resamples)
             for g, cats in groups.items() if cats}
    surgery_text = surgery_takeaway(groups_table, diffs, len(val_gt.getImgIds()), cfg.epochs)
    print(surgery_text)
    save_table(groups_table, "07_surgery", report_dir, floatfmt=".1f")
else:
    surgery_text = "The comparison with the re-initialised head was not run (compare_reinit=False)."

# %% [markdown]
# ## 6. What the detector gets wrong on your data
# From the saved detections of the run at its final epoch (nothing is re-run): AP per class with its 95% interval
# over your validation images, AP and recall by object size with the objects of each size, the precision-recall
# curves, the confusion matrix between your classes, the kinds of error, the errors of each decoder layer, the loss
# term by term, and galleries of the highest-scoring false positives and the largest missed objects.

# %%
diagnosed = show_diagnostics({record.run_dir.name: record}, "07", report_dir, gallery=True, n_resamples=n_resamples)

# %% [markdown]
# ## 7. Predict
# The fine-tuned model (its best epoch) on images of your choice (`predict_paths`, files or folders), detections
# scoring at least `threshold`; the same as `python -m detr_nb_utils.predict --run RUN_DIR IMAGES... --out DIR`,
# which writes the drawn images and a COCO results file.

# %%
predictor, labels, run_cfg = model_from_run(record.run_dir)
paths = predict_paths or [val_set.image_path(i) for i in range(min(6, len(val_set)))]
result = predict_images(predictor, labels, paths, min_size=run_cfg.min_size, max_size=run_cfg.max_size,
                        threshold=threshold, device=str(device), progress=cfg.progress)
written = write_outputs(result, record.run_dir / "predictions")
print(result.summary(), *(f"{path}: {reason}" for path, reason in result.failed), sep="\n")
fig = plot_detections([read_image(p.path) for p in result.images],
                      [{"title": f"{p.path.name}: {len(p)} detections >= {threshold}", "boxes": p.boxes,
                        "labels": p.indices, "scores": p.scores} for p in result.images],
                      labels.index_names, title="the fine-tuned model's predictions")
save_fig(fig, "07_predictions", report_dir)

# %% [markdown]
# ## Takeaway

# %%
change_table, change = run_change(record, val_gt, n_resamples)
hint = ("To measure the recipe's part on your data: run again with `-p recipe checkpoint_rates` (or `warmup`) and "
        "another `run_name`.")
lines = finetune_lines(record.run_dir.name, change_table, change, cfg.recipe, cfg.lr, cfg.lr_backbone, hint=hint)
lines += [surgery_text, diagnostics_sentence(diagnosed)]
show_takeaway(lines, "07_takeaway", report_dir, runs_note([record]))
