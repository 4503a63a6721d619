"""Write the six course notebooks from the cell sources below (nbformat v4.5, no outputs, kernel ``python3``).

    python notebooks/build_notebooks.py          # (re)write notebooks/0*.ipynb
    python notebooks/build_notebooks.py --check  # exit 1 if a committed notebook differs from what this writes

Every notebook has the same frame: a title and the question it answers, the ``parameters`` cell (plain values;
None means "the profile's default", see detr_nb_utils.config.make_config), the cell that builds the validated
config, the setup cell, a body of small cells, and a closing cell that saves the takeaway computed from the
results. The logic lives in ``detr_nb_utils``; edit the cells here, not in the .ipynb files.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from textwrap import dedent, fill

import nbformat

HERE = Path(__file__).resolve().parent
KERNEL = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
RUN_HINT = ("Run it top to bottom in JupyterLab, or headless: `papermill notebooks/{nb}.ipynb out.ipynb -p profile "
            "demo`. Every value in the `parameters` cell can be passed with `-p name value`; `None` means the "
            "profile's default (`study`: the seed's settings; `demo`, or `DETR_NB_PROFILE=demo`: offline, synthetic "
            "data, random weights, minutes on a CPU). Paths are relative to the project root.")


def md(text: str) -> tuple[str, str]:
    return "markdown", dedent(text).strip()


def code(text: str) -> tuple[str, str]:
    return "code", dedent(text).strip()


def header(nb: str, title: str, question: str, intro: str) -> list[tuple[str, str]]:
    return [md(f"# {title}\n\n**Question.** {question}\n\n{dedent(intro).strip()}\n\n{RUN_HINT.format(nb=nb)}")]


def config_cell(names: list[str]) -> tuple[str, str]:
    """``cfg = make_config(...)`` passing every parameter of the same name (None: the profile's default)."""
    args = fill(" ".join(f"{n}={n}," for n in ["profile", *names]), width=108, initial_indent="    ",
                subsequent_indent="    ")
    return code(f"""\
from detr_nb_utils.config import make_config
from detr_nb_utils.notebook import progress_policy

cfg = make_config(
{args}
    progress=progress_policy(progress),
)""")


SETUP_MD = md("## Setup\nImports, the project root as working directory, the device; the profile is printed, with a "
              "warning when the data and weights are the demo's.")


# ---- 01 -----------------------------------------------------------------------------------------------------

NB01 = [
    *header("01_data_split", "01 · The mini-COCO split",
            "Does a seeded 4,000 / 1,000 split of COCO val2017 keep COCO's mix of categories and of crowded images?",
            """\
            The seed fine-tuned DETR on COCO val2017 cut into 4,000 training and 1,000 validation images. This
            notebook makes that split reproducibly (a seeded permutation, recorded with checksums in a manifest) and
            looks at what each side holds."""),
    code("""\
        profile = None  # "study" (the seed's settings) or "demo"; None: $DETR_NB_PROFILE, else "study"
        data_root = None  # folder holding COCO val2017 (val2017/ + annotations/)
        split_dir = None  # where train.json, val.json and split_manifest.json are written
        n_train = None  # 4000 in the study
        n_val = None  # 1000 in the study
        split_seed = None  # 42 in the study
        report_dir = None  # figures and tables; None: report/ (study) or <out_dir>/report (demo)
        progress = None  # progress bars; None: widgets in JupyterLab, none when headless"""),
    config_cell(["data_root", "split_dir", "n_train", "n_val", "split_seed"]),
    SETUP_MD,
    code("""\
        from detr_nb_utils.coco_categories import COCO_NAMES
        from detr_nb_utils.data import CocoDetection
        from detr_nb_utils.engine import prepare_data
        from detr_nb_utils.notebook import setup
        from detr_nb_utils.report import objects_per_image, save_table, save_takeaway, split_summary, split_takeaway
        from detr_nb_utils.split import CROWDED_THRESHOLD, make_split, split_diversity, verify_split
        from detr_nb_utils.viz import gt_panels, plot_category_distribution, plot_detections, plot_objects_per_image
        from detr_nb_utils.viz import save_fig

        device, report_dir = setup(cfg, report_dir)"""),
    md("""\
        ## 1. The source
        The split is cut from one COCO instances file. `prepare_data` (the same call notebooks 03-05 make) finds it,
        and makes what is missing: in the demo profile a small synthetic COCO-format dataset (coloured shapes
        labelled with real COCO category ids), and the split itself."""),
    code("""\
        data = prepare_data(cfg)
        data.image_dir, data.annotation_file"""),
    md("""\
        ## 2. The split and its manifest
        `make_split` permutes the image ids with `numpy.random.default_rng(split_seed)`: the first `n_train` go to
        train, the next `n_val` to val. Each side keeps all annotations of its images. The manifest records the seed,
        the ids and the SHA-256 of every file, so the same seed and source give byte-identical files: writing the
        split again here changes nothing that `prepare_data` wrote."""),
    code("""\
        manifest = make_split(data.annotation_file, cfg.split_dir, n_train=cfg.n_train, n_val=cfg.n_val,
                              seed=cfg.split_seed)
        {k: manifest[k] for k in ("seed", "rng", "n_train", "n_val")}"""),
    md("`verify_split` re-reads everything and raises, listing every problem, if a file was changed afterwards."),
    code("""\
        verify_split(cfg.split_dir, data.annotation_file)["source"]["sha256"]"""),
    code("""\
        summary = split_summary(manifest)
        save_table(summary, "01_split_summary", report_dir)
        summary"""),
    md("""\
        ## 3. Categories
        A share is a category's fraction of a side's boxes; a ratio of 1.0 means the side keeps the source's
        share exactly."""),
    code("""\
        diversity = split_diversity(manifest)
        save_table(diversity, "01_category_distribution", report_dir)
        diversity.nlargest(10, "source")[["name", "source", "train", "val", "train_ratio", "val_ratio"]]"""),
    code("""\
        fig = plot_category_distribution(diversity)
        save_fig(fig, "01_category_distribution", report_dir)"""),
    md("""\
        ## 4. Objects per image
        DETR predicts one set of `num_queries` boxes per image, so an image with more objects than queries cannot be
        fully detected. The 50-query variant of notebook 05 meets this limit on the images right of the line."""),
    code("""\
        counts = objects_per_image(cfg.split_dir)
        fig = plot_objects_per_image(counts, CROWDED_THRESHOLD)
        save_fig(fig, "01_objects_per_image", report_dir)"""),
    code("""\
        crowded = counts[counts["boxes"] > CROWDED_THRESHOLD].sort_values("boxes", ascending=False)
        save_table(crowded, "01_crowded_images", report_dir)
        crowded"""),
    md("The most crowded validation images, with their ground-truth boxes:"),
    code("""\
        val_images = CocoDetection(data.val_file, data.image_dir)
        most = counts.query("side == 'val'").nlargest(3, "boxes")["image_id"]
        images, panels = gt_panels(val_images, [val_images.ids.index(i) for i in most])
        fig = plot_detections(images, panels, COCO_NAMES, title="Most crowded val images (ground truth)")
        save_fig(fig, "01_crowded_val_images", report_dir)"""),
    md("## Takeaway"),
    code("""\
        takeaway = split_takeaway(summary, diversity)
        save_takeaway(takeaway, "01_takeaway", report_dir)
        print(takeaway)"""),
]

# ---- 02 -----------------------------------------------------------------------------------------------------

NB02 = [
    *header("02_checkpoint_inspection", "02 · Inside the published checkpoint",
            "What does `detr-r50-e632da11.pth` hold, what does each variant keep of it, and how good is it on our "
            "validation split before any fine-tuning?",
            """\
            Every variant starts from the official COCO-trained DETR-R50. The shallow variants keep its first 3
            decoder layers; the reduced one also keeps only its first 50 object queries. This notebook shows what
            that surgery does, looks at the queries, and measures the starting point (epoch 0) in COCO AP."""),
    code("""\
        profile = None  # "study" (the seed's settings) or "demo"; None: $DETR_NB_PROFILE, else "study"
        data_root = None  # folder holding COCO val2017
        split_dir = None  # the split made by notebook 01
        checkpoint = None  # the official detr-r50-e632da11.pth (demo: a random-weight stand-in, made if missing)
        device = None  # "auto", "cpu", "cuda"
        precision = "fp32"  # the published computation, for the comparison with the paper; "bf16": the fast mode
        seed = None
        max_val_images = None  # evaluate on the first N val images only; None: all
        min_size = None  # shorter image side at evaluation (800 in the study)
        max_size = None  # longer side at most (1333 in the study)
        num_workers = None
        n_draw = 6  # val images drawn with their predictions
        score_threshold = 0.7  # detections drawn: class probability at least this (the paper's demo uses 0.7)
        attention_image = 0  # the val image (index) whose attention maps are drawn
        interactive = None  # attention maps as ipywidgets (slider); None: only in a kernel a Jupyter server started
        report_dir = None  # figures and tables; None: report/ (study) or <out_dir>/report (demo)
        progress = None  # progress bars; None: widgets in JupyterLab, none when headless"""),
    config_cell(["data_root", "split_dir", "checkpoint", "device", "precision", "seed", "max_val_images", "min_size",
                 "max_size", "num_workers"]),
    SETUP_MD,
    code("""\
        from detr_nb_utils.attention import detected_objects, run_with_attention
        from detr_nb_utils.checkpoint import adapt_state_dict
        from detr_nb_utils.coco_categories import COCO_NAMES
        from detr_nb_utils.data import build_dataset, collate_fn
        from detr_nb_utils.engine import build_model, evaluate_checkpoint, prepare_data, transform_kwargs
        from detr_nb_utils.notebook import setup
        from detr_nb_utils.report import VARIANTS, ap_vs_paper, checkpoint_takeaway, parameter_counts, save_table
        from detr_nb_utils.report import save_takeaway, skeleton, surgery_table
        from detr_nb_utils.viz import plot_detections, plot_parameter_counts, plot_query_norms, plot_query_similarity
        from detr_nb_utils.viz import predict_panels, save_fig
        from detr_nb_utils.viz_analysis import interactive_attention, plot_decoder_attention, plot_encoder_attention

        device, report_dir = setup(cfg, report_dir)"""),
    md("""\
        ## 1. Load the checkpoint
        `load_pretrained` reads the file with `weights_only=True` (a file holding pickled objects is refused) and
        loads it strictly: every key and shape must match the model."""),
    code("""\
        data = prepare_data(cfg)  # the split; in the demo also the synthetic data and the random-weight checkpoint
        model, criterion, load_report = build_model(cfg, device)
        print(load_report)"""),
    md("## 2. Keys and shapes\nOne row per state-dict entry, in the published order:"),
    code("""\
        keys = load_report.to_frame()
        print(len(keys), "entries")
        keys.head(8)"""),
    code("""\
        keys["key"].str.split(".").str[0].value_counts()"""),
    md("## 3. Parameters per component, for each variant"),
    code("""\
        params = parameter_counts()
        save_table(params, "02_parameter_counts", report_dir)
        params"""),
    code("""\
        fig = plot_parameter_counts(params)
        save_fig(fig, "02_parameter_counts", report_dir)"""),
    md("""\
        ## 4. The surgery each variant needs
        `adapt_state_dict` keeps decoder layers `0 … dec_layers-1` (and the shared final decoder norm) and the first
        `num_queries` rows of `query_embed.weight`, bit for bit; whatever the variant has no place for is dropped.
        The variants are built on PyTorch's `meta` device: shapes only, no memory."""),
    code("""\
        state = model.state_dict()
        reports = {name: adapt_state_dict(state, skeleton(*VARIANTS[name][:2]))[1] for name in VARIANTS}
        surgery = surgery_table(reports)
        save_table(surgery, "02_surgery", report_dir)
        surgery"""),
    code("""\
        reports["dec3_q50"].to_frame().query("action != 'loaded'").head(8)"""),
    md("""\
        ## 5. The object queries
        Each of the 100 learned query embeddings is a detection slot. Their norms, and how similar they are to each
        other (cosine similarity); the 50-query variant keeps the first 50 rows."""),
    code("""\
        queries = model.query_embed.weight.detach().cpu()
        fig = plot_query_norms(queries)
        save_fig(fig, "02_query_norms", report_dir)"""),
    code("""\
        fig = plot_query_similarity(queries)
        save_fig(fig, "02_query_similarity", report_dir)"""),
    md("## 6. Predictions on validation images\nGround truth dashed white; detections scoring at least "
       "`score_threshold` in orange."),
    code("""\
        val_set = build_dataset(data.val_file, data.image_dir, "val", **transform_kwargs(cfg, "val"))
        images, panels = predict_panels(model, val_set, range(min(n_draw, len(val_set))), device, score_threshold)
        fig = plot_detections(images, panels, COCO_NAMES, title=str(load_report))
        save_fig(fig, "02_predictions", report_dir)"""),
    md("""\
        ## 7. Where the model looks
        Hooks on the attention modules record, for one forward pass, the encoder's self-attention (each feature
        cell of the stride-32 map attends to all others; the paper's Fig. 3) and the decoder's cross-attention
        (each query looks at the image; Fig. 6). Below: where each detected object's query looks in the last
        decoder layer (its box in cyan), and where a few image points attend to in the last encoder layer. With no
        detection at `score_threshold` (the demo's random weights), the 4 best-scoring queries are shown."""),
    code("""\
        images, mask, _ = collate_fn([val_set[attention_image]])
        outputs, attention = run_with_attention(model, images.to(device), mask.to(device))
        image = val_set.read_image(attention_image)
        objects = detected_objects(outputs, 0, score_threshold)
        if objects.empty:
            objects = detected_objects(outputs, 0, 0.0).head(4)
        objects"""),
    code("""\
        fig = plot_decoder_attention(image, attention, objects, COCO_NAMES)
        save_fig(fig, "02_decoder_attention", report_dir)"""),
    code("""\
        h, w = image.shape[-2:]
        points = [(h * fy, w * fx) for fy, fx in ((0.3, 0.3), (0.3, 0.7), (0.7, 0.3), (0.7, 0.7))]
        fig = plot_encoder_attention(image, attention, points)
        save_fig(fig, "02_encoder_attention", report_dir)"""),
    md("In JupyterLab (or with `interactive=True`): a slider over the objects and a menu over the points."),
    code("""\
        live = progress_policy(interactive)
        interactive_attention(image, attention, objects, points, COCO_NAMES, interactive=True) if live else None"""),
    md("""\
        ## 8. The starting point: COCO AP at epoch 0
        The checkpoint evaluated on our validation split as published: every query submitted, no threshold, batches
        of 2. The paper's 42.0 is on all 5,000 val2017 images."""),
    code("""\
        metrics = evaluate_checkpoint(cfg)
        ap = ap_vs_paper(metrics)
        save_table(ap, "02_epoch0_ap", report_dir, floatfmt=".1f")
        ap"""),
    md("## Takeaway"),
    code("""\
        takeaway = checkpoint_takeaway(params, surgery, ap, metrics["random_weights"])
        save_takeaway(takeaway, "02_takeaway", report_dir)
        print(takeaway)"""),
]

# ---- 03-05 --------------------------------------------------------------------------------------------------


def training_notebook(nb: str, title: str, question: str, intro: str, dec_layers: int, num_queries: int,
                      extra_parameters: str = "", extra: list | None = None) -> list:
    return [
        *header(nb, title, question, intro),
        code(f"""\
                profile = None  # "study" (the seed's settings) or "demo"; None: $DETR_NB_PROFILE, else "study"
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
            precision = None  # "fp32" (published), "bf16" (autocast, fast); None: "auto", bf16 where the hardware has it
            seed = None
            epochs = None  # 5 in the study
            batch_size = None  # 2 in the study
            lr = None  # 1e-4 in the study
            lr_backbone = None  # 1e-5 in the study
            dec_layers = {dec_layers}  # decoder layers kept from the checkpoint (its first ones)
            num_queries = {num_queries}  # object queries kept from the checkpoint (its first ones)
            max_train_images = None  # None: the whole training side
            max_val_images = None
            min_size = None  # shorter image side at evaluation (800 in the study)
            max_size = None  # longer side at most (1333 in the study)
            train_scales = None  # shorter sides drawn in training (480..800 in the study)
            num_workers = None{extra_parameters}
            progress = None  # progress bars; None: widgets in JupyterLab, none when headless"""),
        config_cell(["data_root", "split_dir", "n_train", "n_val", "checkpoint", "out_dir", "run_name", "device",
                     "precision", "seed", "epochs", "batch_size", "lr", "lr_backbone", "dec_layers", "num_queries",
                     "max_train_images", "max_val_images", "min_size", "max_size", "train_scales", "num_workers"]),
        SETUP_MD,
        code("""\
            from detr_nb_utils.config import seed_configs
            from detr_nb_utils.data import CocoDetection
            from detr_nb_utils.engine import prepare_data, run_experiment
            from detr_nb_utils.notebook import setup
            from detr_nb_utils.report import run_table, run_takeaway, save_table, save_takeaway, with_train_views
            from detr_nb_utils.split import verify_split
            from detr_nb_utils.viz import plot_ap_curves, plot_loss_curves, save_fig

            device, report_dir = setup(cfg, report_dir)"""),
        md("""\
            ## 1. Check the data
            The split must be the one its manifest describes, and every image must be there before hours of
            training start."""),
        code("""\
            data = prepare_data(cfg)
            verify_split(cfg.split_dir, data.annotation_file)["seed"]"""),
        code("""\
            for split_file in (data.train_file, data.val_file):
                found = CocoDetection(split_file, data.image_dir).verify(decode=False, progress=cfg.progress)
                print(f"{split_file.name}: {found} images present, of the annotated size")"""),
        md("""\
            ## 2. Fine-tune
            `run_experiment` loads the checkpoint (sliced to this variant), evaluates it (epoch 0), then trains and
            evaluates once per epoch, saving everything into the run folder (with each evaluated epoch's detections,
            which 06 bootstraps). A folder that already holds finished epochs of the same configuration is resumed,
            so re-running this cell after an interruption continues. One run per training seed: the spread between
            seeds is part of the answer."""),
        code("""\
            configs = seed_configs(cfg, n_seeds)
            records = {c.run_dir.name: run_experiment(c) for c in configs}
            record = records[configs[0].run_dir.name]  # the first seed's run: the table and figures below
            sorted(p.name for p in record.run_dir.iterdir())"""),
        md("""\
            ## 3. Curves
            The validation loss in three views: the total (the seed's number; it sums one loss per decoder layer, so
            it grows with depth), the final layer's loss (what a user gets) and the total divided by the number of
            layers. Training losses are dashed. Then COCO AP per epoch."""),
        code(f"""\
            prefix = "{nb[:2]}_" + cfg.run_dir.name  # file names of this variant's figures and tables
            curves = {{name: with_train_views(r) for name, r in records.items()}}
            fig = plot_loss_curves(curves)
            save_fig(fig, f"{{prefix}}_loss_curves", report_dir)"""),
        code("""\
            fig = plot_ap_curves(curves)
            save_fig(fig, f"{prefix}_ap_curves", report_dir)"""),
        code("""\
            epochs_table = run_table(record)
            save_table(epochs_table, f"{prefix}_epochs", report_dir, floatfmt=".2f")
            epochs_table"""),
        *(extra or []),
        md("## Takeaway"),
        code("""\
            takeaway = "\\n".join(run_takeaway(r) for r in records.values())
            save_takeaway(takeaway, f"{prefix}_takeaway", report_dir)
            print(takeaway)"""),
    ]


NB03 = training_notebook(
    "03_baseline", "03 · Baseline: 6 decoder layers, 100 queries",
    "How much does the published DETR-R50 gain from fine-tuning on the 4,000 mini-COCO images with the seed's "
    "recipe?",
    """\
    The seed's recipe: 5 epochs, batch 2, AdamW with learning rate 1e-4 (backbone 1e-5), weight decay 1e-4,
    gradient clipping at 0.1, the original set-prediction loss with its auxiliary decoder losses. This is the
    reference the two smaller decoders of notebooks 04 and 05 are compared with.""", 6, 100)
NB04 = training_notebook(
    "04_shallow_decoder", "04 · Shallow decoder: 3 decoder layers, 100 queries",
    "Does a decoder cut to its first 3 layers generalise better on little data, as the seed concluded?",
    """\
    The model keeps the checkpoint's first 3 decoder layers (and its final decoder norm): at epoch 0 its output is
    exactly the baseline's third-layer prediction. Same recipe as 03. Its total loss sums 3 layer losses instead
    of 6, so compare it with 03 on AP and on the final-layer loss, not on the total.""", 3, 100)
NB05_PARAMETERS = """
            strategies = ["most_matched", "spread"]  # which 50 queries, besides the first 50 (select_queries)
            strategy_seeds = None  # seeds per extra strategy; None: 1 (demo), n_seeds (study)"""

NB05_QUERIES = [
    md("""\
        ## 4. Which 50 queries?
        The seed kept the first 50 query embeddings. Are they the useful ones? The original model (6 layers, 100
        queries, straight from the checkpoint) is run over the train split, and the Hungarian matcher says which
        slot predicts each object. Three choices of 50: the `first`, the `most_matched` on the train split (the
        validation images never decide), and 50 `spread` evenly over the 100."""),
    code("""\
        from dataclasses import replace

        import pandas as pd

        from detr_nb_utils.engine import build_model, evaluate_checkpoint
        from detr_nb_utils.intervals import query_choice_table
        from detr_nb_utils.queries import analysis_loader, query_match_counts, query_usage, select_queries
        from detr_nb_utils.queries import usage_summary
        from detr_nb_utils.runs import BEST
        from detr_nb_utils.viz_analysis import plot_match_counts, plot_query_usage"""),
    code("""\
        original, _, _ = build_model(replace(cfg, dec_layers=6, num_queries=100, query_indices=None), device)
        counts = query_match_counts(original, analysis_loader(cfg, data, "train"), device=device,
                                    progress=cfg.progress)
        choices = {s: select_queries(s, cfg.num_queries, len(counts), counts) for s in ["first", *strategies]}
        fig = plot_match_counts(counts, choices)
        save_fig(fig, "05_query_match_counts", report_dir)"""),
    md("Each choice at epoch 0 (the checkpoint's query embeddings at those slots, nothing trained):"),
    code("""\
        epoch0 = {s: evaluate_checkpoint(replace(cfg, query_indices=tuple(idx))) for s, idx in choices.items()}
        query_choices = query_choice_table(counts, choices, epoch0)
        save_table(query_choices, "05_query_choices", report_dir, floatfmt=".2f")
        query_choices.drop(columns="query slots")"""),
    md("""\
        Then each extra choice is fine-tuned with the same recipe, in run folders named after it (the first-50 runs
        are the ones above). 06_analysis compares them with bootstrap intervals."""),
    code("""\
        for s in strategies:
            chosen = replace(cfg, query_indices=tuple(choices[s]))
            for c in seed_configs(chosen, strategy_seeds or (1 if cfg.profile == "demo" else n_seeds),
                                  name=f"{cfg.run_dir.name}_{s}"):
                records[c.run_dir.name] = run_experiment(c)
        {name: round(100 * r.metrics["val_AP"].max(), 2) for name, r in records.items()}"""),
    md("""\
        ## 5. What each query slot predicts, before and after the reduction
        The paper's Fig. 7: for every slot, the centres of its boxes over the validation images (green small, red
        large and wide, blue large and tall). Before: the original model's 100 slots. After: this variant's 50
        (the first seed's best epoch), drawn under the checkpoint slot they came from."""),
    code("""\
        val_loader = analysis_loader(cfg, data, "val")
        before = query_usage(original, val_loader, device)
        fig = plot_query_usage(before, title="Before: the original model's 100 query slots (val images)")
        save_fig(fig, "05_query_usage_before", report_dir)"""),
    code("""\
        reduced, _, _ = build_model(replace(cfg, checkpoint=str(record.run_dir / BEST), query_indices=None), device)
        after = query_usage(reduced, val_loader, device, query_indices=choices["first"])
        fig = plot_query_usage(after, title=f"After: the {cfg.num_queries} slots of {record.run_dir.name}, best epoch")
        save_fig(fig, "05_query_usage_after", report_dir)"""),
    code("""\
        columns = ["object_rate", "mean_score"]
        usage = pd.concat({"before": usage_summary(before)[columns], "after": usage_summary(after)[columns]}, axis=1)
        save_table(usage, "05_query_usage", report_dir)
        usage.sort_values(("before", "object_rate"), ascending=False).head(10)"""),
]

NB05 = training_notebook(
    "05_reduced_queries", "05 · Shallow decoder with 50 queries",
    "Does DETR need 100 detection slots on this data, or do the first 50 suffice, and are they the right 50?",
    """\
    As 04, and only the first 50 of the checkpoint's 100 query embeddings are kept. Unlike the decoder cut, this
    changes the outputs at epoch 0 even for the kept queries: queries interact through the decoder's
    self-attention. Images with more than 50 objects (notebook 01) cannot be fully detected. Section 4 asks
    whether another 50 would do better.""", 3, 50, NB05_PARAMETERS, NB05_QUERIES)

# ---- 06 -----------------------------------------------------------------------------------------------------

NB06 = [
    *header("06_analysis", "06 · Analysis: the three decoders compared",
            "Which decoder is best on mini-COCO, and does the seed's ranking by total validation loss survive "
            "measuring with COCO AP and depth-fair losses?",
            """\
            This notebook reads the run folders written by 03-05 and never retrains. It works with whatever runs
            exist and says which are missing. Sections 1-6 compare the three variants (the first seed of each);
            7-11 ask how sure the answer is: seeds, bootstrap intervals over the validation images, each variant
            against its own starting point, which 50 queries, and what each variant costs."""),
    code("""\
        profile = None  # "study" or "demo"; None: $DETR_NB_PROFILE, else "study"
        out_dir = None  # where 03-05 wrote their run folders
        run_names = None  # None: every <variant>_seed<seed> folder in out_dir
        n_resamples = 1000  # bootstrap resamples of the validation images (95% intervals)
        latency_size = None  # [h, w] of the latency measurement; None: 800x1066 (study), 128x192 (demo)
        report_dir = None  # figures and tables; None: report/ (study) or <out_dir>/report (demo)
        progress = None  # unused here; kept so every notebook takes the same names"""),
    config_cell(["out_dir"]),
    SETUP_MD,
    code("""\
        from detr_nb_utils.intervals import QUERY_CHOICES, Scorer, cost_vs_ap, differences_table, first_seeds
        from detr_nb_utils.intervals import interval_conclusion, layer_equivalence, load_seeded_runs
        from detr_nb_utils.intervals import missing_variants, seeds_table, variant_costs, zero_shot_table
        from detr_nb_utils.notebook import setup
        from detr_nb_utils.report import VARIANTS, ap_per_layer, comparison_table, conclusion
        from detr_nb_utils.report import parameter_counts, save_table, save_takeaway, seed_table, with_train_views
        from detr_nb_utils.viz import plot_ap_curves, plot_ap_per_layer, plot_loss_curves, plot_parameter_counts
        from detr_nb_utils.viz import save_fig
        from detr_nb_utils.viz_analysis import plot_ap_intervals

        device, report_dir = setup(cfg, report_dir)"""),
    md("## 1. The run folders"),
    code("""\
        runs = load_seeded_runs(cfg.out_dir, run_names)  # every seed of every variant
        first = first_seeds(runs)
        records = {v: first[v] for v in VARIANTS if v in first}  # the first seed of each variant
        missing = missing_variants(runs, list(VARIANTS))
        print("found:", list(runs), "| missing:", missing)
        {name: f"{len(r.metrics) - 1} of {r.config.epochs} epochs" for name, r in runs.items()}"""),
    md("""\
        ## 2. The seed's table, and what it leaves out
        The seed ranked the variants by their best total validation loss. Beside it: the same runs' best final-layer
        loss, best per-layer mean loss, and best COCO AP (percent)."""),
    code("""\
        seed = seed_table(records)
        save_table(seed, "06_seed_table", report_dir, floatfmt=".2f")
        seed"""),
    md("""\
        ## 3. Epoch 0 and the best epoch
        For each run: the checkpoint before fine-tuning, the epoch the seed would pick (lowest total loss) and the
        epoch of highest AP."""),
    code("""\
        comparison = comparison_table(records)
        save_table(comparison, "06_comparison", report_dir, floatfmt=".2f")
        comparison"""),
    md("## 4. Curves of all runs"),
    code("""\
        curves = {name: with_train_views(r) for name, r in records.items()}
        fig = plot_loss_curves(curves)
        save_fig(fig, "06_loss_curves", report_dir)"""),
    code("""\
        fig = plot_ap_curves(curves)
        save_fig(fig, "06_ap_curves", report_dir)"""),
    md("""\
        ## 5. AP per decoder layer
        Every decoder layer's output goes through the same heads, so each layer can be scored (the paper's Fig. 4).
        At the best-AP epoch of each run:"""),
    code("""\
        layers = ap_per_layer(records)
        save_table(100 * layers, "06_ap_per_layer", report_dir, floatfmt=".1f")
        fig = plot_ap_per_layer(layers)
        save_fig(fig, "06_ap_per_layer", report_dir)"""),
    md("## 6. Parameters"),
    code("""\
        found = {n: (r.config.dec_layers, r.config.num_queries) for n, r in records.items()}
        params = parameter_counts(found or VARIANTS)
        save_table(params, "06_parameter_counts", report_dir)
        fig = plot_parameter_counts(params)
        save_fig(fig, "06_parameter_counts", report_dir)"""),
    md("""\
        ## 7. Seeds
        Each variant was trained with `n_seeds` seeds (03-05). Epoch 0 does not depend on the seed (same weights,
        same images); the best AP does, through the data order and dropout. Mean, sample standard deviation, min
        and max over seeds (AP in percent):"""),
    code("""\
        seeds = seeds_table(runs)
        save_table(seeds, "06_seeds", report_dir, floatfmt=".2f")
        seeds"""),
    md("""\
        ## 8. Zero-shot baselines and fine-tuning gains, with intervals
        Every variant starts from the checkpoint, so its fine-tuning gain is measured against its own epoch 0. The
        intervals: a bootstrap over the validation images (`n_resamples` resamples with replacement; the matching
        of detections to objects is done once, each resample only re-weights the images), the gain from *paired*
        resamples (the same images for both epochs)."""),
    code("""\
        scorer = Scorer(runs, n_resamples)
        zero_shot = zero_shot_table(scorer, records)
        save_table(zero_shot, "06_zero_shot", report_dir, floatfmt=".2f")
        zero_shot"""),
    code("""\
        fig = plot_ap_intervals(zero_shot)
        save_fig(fig, "06_ap_intervals", report_dir)"""),
    md("""\
        The 3-layer model at epoch 0 *is* the 6-layer model stopped after its third decoder layer (same weights,
        same final norm), so its epoch-0 AP must equal the 6-layer run's epoch-0 AP of layer 3:"""),
    code("""\
        equivalence = layer_equivalence(records)
        equivalence"""),
    md("## 9. Differences between the variants\nAP(a) − AP(b) at each run's best epoch, paired intervals:"),
    code("""\
        diffs = differences_table(scorer, records)
        save_table(diffs, "06_differences", report_dir, floatfmt=".2f")
        diffs"""),
    md("""\
        ## 10. Which 50 queries
        The first 50 (the seed's choice), the 50 most matched on the train split, and 50 spread evenly (notebook
        05), at epoch 0 and fine-tuned; each against the first 50."""),
    code("""\
        choices = {v: first[v] for v in QUERY_CHOICES if v in first}
        query_table = zero_shot_table(scorer, choices)
        save_table(query_table, "06_query_choices", report_dir, floatfmt=".2f")
        query_table"""),
    code("""\
        query_diffs = differences_table(scorer, choices, [(v, "dec3_q50") for v in choices if v != "dec3_q50"])
        save_table(query_diffs, "06_query_differences", report_dir, floatfmt=".2f")
        query_diffs"""),
    md("""\
        ## 11. Cost versus accuracy
        Parameters, GFLOPs at 800x1066 (counted on PyTorch's meta device: shapes only), and the median latency of
        one image on the CPU (and the GPU when there is one), beside each variant's AP and interval."""),
    code("""\
        size = latency_size or ((128, 192) if cfg.profile == "demo" else (800, 1066))
        cost = cost_vs_ap(variant_costs(VARIANTS, size, device), zero_shot)
        save_table(cost, "06_cost_vs_ap", report_dir, floatfmt=".2f")
        cost"""),
    md("## Conclusion\nEvery number and ranking below is read from the run folders."),
    code("""\
        text = conclusion(records, missing, zero_shot) + "\\n" + interval_conclusion(
            zero_shot, diffs, query_diffs, equivalence, seeds, len(scorer.img_ids), n_resamples)
        save_takeaway(text, "06_conclusion", report_dir)
        print(text)"""),
]

NOTEBOOKS = {"01_data_split": NB01, "02_checkpoint_inspection": NB02, "03_baseline": NB03,
             "04_shallow_decoder": NB04, "05_reduced_queries": NB05, "06_analysis": NB06}


def build(name: str, cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    """The notebook ``name`` with deterministic cell ids; the first code cell is tagged ``parameters``."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": KERNEL, "language_info": {"name": "python"}})
    first_code = next(i for i, (kind, _) in enumerate(cells) if kind == "code")
    for i, (kind, source) in enumerate(cells):
        make = nbformat.v4.new_code_cell if kind == "code" else nbformat.v4.new_markdown_cell
        cell = make(source, id=f"{name[:2]}-{i:02d}")
        if i == first_code:
            cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with the notebooks on disk")
    args = parser.parse_args(argv)
    stale = []
    for name, cells in NOTEBOOKS.items():
        path, text = HERE / f"{name}.ipynb", nbformat.writes(build(name, cells)) + "\n"
        if args.check:
            stale += [path.name] if not path.is_file() or path.read_text() != text else []
        else:
            path.write_text(text)
    if stale:
        print(f"out of date with {Path(__file__).name}: {', '.join(stale)}; run it to rewrite them")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
