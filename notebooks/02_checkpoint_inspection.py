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
# # 02 · Inside the published checkpoint
#
# **Question.** What does `detr-r50-e632da11.pth` hold, what does each variant keep of it, and how good is it on our
# validation split before any fine-tuning?
#
# Every variant starts from the official COCO-trained DETR-R50. The shallow variants keep its first 3
# decoder layers; the reduced one also keeps only its first 50 object queries. This notebook shows what
# that surgery does, looks at the queries, and measures the starting point (epoch 0) in COCO AP, in fp32 (the
# published computation, the study's precision) and in bf16 (the fast mode) on the same images.
#
# Run it top to bottom in JupyterLab, or headless: `papermill notebooks/02_checkpoint_inspection.ipynb out.ipynb -p
# profile demo`. Every value in the `parameters` cell can be passed with `-p name value`; `None` means the profile's
# default (`study`: the original study's settings; `demo`, or `DETR_NB_PROFILE=demo`: offline, synthetic data,
# a tiny DETR, minutes on a CPU). Paths are relative to the project root.

# %% tags=["parameters"]
profile = None  # "study" (the original study's settings) or "demo"; None: $DETR_NB_PROFILE, else "study"
data_root = None  # folder holding COCO val2017
split_dir = None  # the split made by notebook 01
checkpoint = None  # the official detr-r50-e632da11.pth (demo: the committed tiny DETR, data/pretrained/)
device = None  # "auto", "cpu", "cuda"
precision = "fp32"  # the published computation, for the comparison with the paper; "bf16": the fast mode
seed = None
max_val_images = None  # evaluate on the first N val images only; None: all
min_size = None  # shorter image side at evaluation (800 in the study)
max_size = None  # longer side at most (1333 in the study)
num_workers = None
n_draw = 6  # val images drawn with their predictions
score_threshold = 0.7  # detections drawn: class probability at least this (the paper's demo uses 0.7)
predict_path = None  # an image (or folder) of yours for section 6; None: a bundled COCO photo and a val image
attention_image = 0  # the val image (index) whose attention maps are drawn
interactive = None  # attention maps as ipywidgets (slider); None: only in a kernel a Jupyter server started
report_dir = None  # figures and tables; None: report/ (study) or <out_dir>/report (demo)
progress = None  # progress bars; None: widgets in JupyterLab, none when headless
n_resamples = 1000  # paired bootstrap resamples of the val images for the bf16 - fp32 AP difference

# %%
from detr_nb_utils.notebook import config_parameters, progress_policy
from detr_nb_utils.training import make_config

cfg = make_config(**config_parameters(globals()))  # the cell above, handed over in one call

# %% [markdown]
# ## Setup
# Imports, the project root as working directory, the device; the profile is printed, with a warning when the data
# and weights are the demo's.

# %%
from dataclasses import replace
from pathlib import Path

from detr_nb_utils.data import read_image
from detr_nb_utils.models import adapt_state_dict
from detr_nb_utils.data import COCO_NAMES, collate_fn
from detr_nb_utils.training import build_model, evaluate_checkpoint, make_dataset, model_from_checkpoint, predict_images
from detr_nb_utils.training import prepare_data
from detr_nb_utils.analysis import VARIANTS, detected_objects, run_with_attention, world_note
from detr_nb_utils.notebook import ap_vs_paper, checkpoint_takeaway, interactive_attention, parameter_counts
from detr_nb_utils.notebook import plot_decoder_attention, plot_detections, plot_encoder_attention
from detr_nb_utils.notebook import plot_parameter_counts, plot_query_norms, plot_query_similarity, precision_ap_table
from detr_nb_utils.notebook import precision_takeaway, predict_panels, reference_ap, save_fig, save_table, show_takeaway
from detr_nb_utils.notebook import setup_notebook, skeleton, surgery_table

device, report_dir = setup_notebook(cfg, report_dir)

# %% [markdown]
# ## 1. Load the checkpoint
# `load_pretrained` reads the file with `weights_only=True` (a file holding pickled objects is refused) and
# loads it strictly: every key and shape must match the model.

# %%
data = prepare_data(cfg)  # the split; in the demo also the synthetic pool (the tiny DETR's file is checked)
model, criterion, load_report = build_model(cfg, device)
print(load_report)

# %% [markdown]
# ## 2. Keys and shapes
# One row per state-dict entry, in the published order:

# %%
keys = load_report.to_frame()
print(len(keys), "entries")
keys.head(8)

# %%
keys["key"].str.split(".").str[0].value_counts()

# %% [markdown]
# ## 3. Parameters per component, for each variant

# %%
params = parameter_counts(arch=cfg.arch)
save_table(params, "02_parameter_counts", report_dir)

# %%
fig = plot_parameter_counts(params)
save_fig(fig, "02_parameter_counts", report_dir)

# %% [markdown]
# ## 4. The surgery each variant needs
# `adapt_state_dict` keeps decoder layers `0 … dec_layers-1` (and the shared final decoder norm) and the first
# `num_queries` rows of `query_embed.weight`, bit for bit; whatever the variant has no place for is dropped.
# The variants are built on PyTorch's `meta` device: shapes only, no memory.

# %%
state = model.state_dict()
reports = {name: adapt_state_dict(state, skeleton(*VARIANTS[name][:2], arch=cfg.arch))[1] for name in VARIANTS}
surgery = surgery_table(reports)
save_table(surgery, "02_surgery", report_dir)

# %%
reports["dec3_q50"].to_frame().query("action != 'loaded'").head(8)

# %% [markdown]
# ## 5. The object queries
# Each of the 100 learned query embeddings is a detection slot. Their norms, and how similar they are to each
# other (cosine similarity); the 50-query variant keeps the first 50 rows.

# %%
queries = model.query_embed.weight.detach().cpu()
fig = plot_query_norms(queries)
save_fig(fig, "02_query_norms", report_dir)

# %%
fig = plot_query_similarity(queries)
save_fig(fig, "02_query_similarity", report_dir)

# %% [markdown]
# ## 6. Predictions on validation images
# Ground truth dashed white; detections scoring at least `score_threshold` in orange.

# %%
val_set = make_dataset(cfg, data, "val")
images, panels = predict_panels(model, val_set, range(min(n_draw, len(val_set))), device, score_threshold)
title = (f"{Path(cfg.checkpoint).name}, {cfg.dec_layers} decoder layers, {cfg.num_queries} queries: "
         f"detections scoring at least {score_threshold} (ground truth dashed)")
fig = plot_detections(images, panels, COCO_NAMES, title=title)
save_fig(fig, "02_predictions", report_dir)

# %% [markdown]
# ### Your own image
# The checkpoint on any image of yours (`-p predict_path PATH`, a file or a folder), as the command line does it:
# `python -m detr_nb_utils.predict --checkpoint CHECKPOINT IMAGES... --threshold 0.7 --out DIR` writes each image
# with its boxes drawn and one COCO results file. An unreadable file is named and skipped. Without a path: a COCO
# photo that comes with the repository (`tests/data/coco_sample`) and the first validation image. The demo's tiny
# DETR has only seen synthetic shapes, so on the photo it may find nothing: that is the demo world, not a fault.

# %%
own_model, own_labels, sizes = model_from_checkpoint(cfg.checkpoint)
own_paths = [predict_path] if predict_path else ["tests/data/coco_sample/images/000000000139.jpg",
                                                 val_set.image_path(0)]
own = predict_images(own_model, own_labels, own_paths, **sizes, threshold=score_threshold, device=str(device),
                     progress=False)
print(own.summary(), *(f"{path}: {reason}" for path, reason in own.failed), sep="\n")
if own.images:
    fig = plot_detections([read_image(p.path) for p in own.images],
                          [{"title": f"{p.path.name}: {len(p)} detections >= {score_threshold}", "boxes": p.boxes,
                            "labels": p.indices, "scores": p.scores} for p in own.images], own_labels.index_names,
                          cols=min(3, len(own.images)))  # no empty panels beside one image

# %% [markdown]
# ## 7. Where the model looks
# Hooks on the attention modules record, for one forward pass, the encoder's self-attention (each cell of the
# backbone's feature map, stride 32 in DETR-R50 and 16 in the demo's tiny DETR, attends to all others; the paper's
# Fig. 3) and the decoder's cross-attention (each query looks at the image; Fig. 6). Below: where each detected
# object's query looks in the last decoder layer (its box in cyan), and where a few image points attend to in the
# last encoder layer. With no detection at `score_threshold`, the 4 best-scoring queries are shown.

# %%
images, mask, _ = collate_fn([val_set[attention_image]])
outputs, attention = run_with_attention(model, images.to(device), mask.to(device))
image = val_set.read_image(attention_image)
objects = detected_objects(outputs, 0, score_threshold)
detected = not objects.empty
if not detected:  # show where the 4 best-scoring queries look instead
    objects = detected_objects(outputs, 0, 0.0).head(4)
objects

# %%
fig = plot_decoder_attention(image, attention, objects, COCO_NAMES, detected=detected)
save_fig(fig, "02_decoder_attention", report_dir)

# %%
h, w = image.shape[-2:]
points = [(h * fy, w * fx) for fy, fx in ((0.3, 0.3), (0.3, 0.7), (0.7, 0.3), (0.7, 0.7))]
fig = plot_encoder_attention(image, attention, points)
save_fig(fig, "02_encoder_attention", report_dir)

# %% [markdown]
# In JupyterLab (or with `interactive=True`): a slider over the objects and a menu over the points.

# %%
live = progress_policy(interactive)
interactive_attention(image, attention, objects, points, COCO_NAMES, interactive=True) if live else None

# %% [markdown]
# ## 8. The starting point: COCO AP at epoch 0
# The checkpoint evaluated on our validation split as published: every query submitted, no threshold, batches
# of 2, beside its reference: for DETR-R50 the paper's AP on all 5,000 val2017 images; for the demo's tiny DETR its
# pre-training's AP on held-out images of the shape world (recorded beside the checkpoint). Our AP comes with its 95%
# interval over the validation images; the reference was measured on other images and has none, so the two are set
# side by side, not subtracted.

# %%
metrics = evaluate_checkpoint(cfg)
ap = ap_vs_paper(metrics, reference_ap(cfg.checkpoint, cfg.backbone), data.val_file, n_resamples)
save_table(ap, "02_epoch0_ap", report_dir, floatfmt=".1f")

# %% [markdown]
# ## 9. fp32 or bf16?
# The study computes in fp32, the published computation. The fast mode (`precision="bf16"`) runs the forward
# under bf16 autocast, which rounds: before a study switches to it, here is what it does to the same checkpoint on
# the same images. The difference bf16 - fp32 comes with its 95% interval over paired bootstrap resamples of the
# images (both precisions scored on the same resampled images): an interval that excludes 0 means the fast mode
# moves AP by more than the choice of images explains.

# %%
by_precision = {p: metrics if metrics["effective_precision"] == p else evaluate_checkpoint(replace(cfg, precision=p))
                for p in ("fp32", "bf16")}
gap = precision_ap_table(by_precision["fp32"], by_precision["bf16"], data.val_file, n_resamples)
save_table(gap, "02_precision_ap", report_dir, floatfmt=".2f")

# %% [markdown]
# ## Takeaway

# %%
lines = [checkpoint_takeaway(params, surgery, ap), precision_takeaway(gap)]
show_takeaway(lines, "02_takeaway", report_dir, world_note(cfg.backbone))
