"""detr-mini-coco: the published DETR-R50, its matcher and set loss, data, fine-tuning and analysis, for the course
notebooks. Layers, each importing only from those before it::

    models  <-  data  <-  training  <-  analysis  <-  notebook

The public names are importable from here (``from detr_nb_utils import build_detr, SetCriterion``); each is loaded
on first use, so ``import detr_nb_utils`` stays cheap and a COCOeval worker process never imports torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: subpackage module -> the public names it gives the top level
_EXPORTS: dict[str, tuple[str, ...]] = {
    "models.detr": ("DETR", "TINY_DETR", "build_detr", "parameter_table"),
    "models.matcher": ("HungarianMatcher",),
    "models.loss": ("SetCriterion", "loss_views", "LOSS_VIEWS"),
    "models.postprocess": ("postprocess",),
    "models.checkpoint": ("CheckpointError", "LoadReport", "adapt_state_dict", "load_pretrained", "read_checkpoint"),
    "models.fast": ("model_forward", "set_fast_mode"),
    "data.categories": ("COCO_CATEGORIES", "COCO_NAMES"),
    "data.coco": ("CocoDetection", "build_dataset", "collate_fn", "resolve_dataset_layout"),
    "data.label_map": ("LabelMap",),
    "data.validate": ("DatasetError", "validate_coco_dataset"),
    "data.synthetic_own": ("OWN_CLASSES", "make_own_dataset"),
    "data.transforms": ("make_transforms",),
    "data.split": ("CROWDED_THRESHOLD", "load_manifest", "make_split", "split_diversity", "verify_split"),
    "data.synthetic": ("make_synthetic_coco",),
    "data.download": ("download_checkpoint", "download_coco"),
    "training.config": ("DEMO_OWN_DATA", "TINY_CHECKPOINT", "RunConfig", "make_config", "seed_configs"),
    "training.data_setup": ("make_dataset", "prepare_data"),
    "training.engine": ("build_model", "evaluate_checkpoint", "run_experiment"),
    "training.evaluation": ("evaluate",),
    "training.runs": ("RunRecord", "load_run"),
    "training.runtime": ("resolve_device",),
    "training.inference": ("model_from_checkpoint", "model_from_run", "predict_images"),
    "training.prediction_files": ("write_outputs",),
    "analysis.bootstrap": ("ApBootstrap", "MatchedDetections", "ap_difference", "ap_interval"),
    "analysis.comparison": ("QUERY_CHOICES", "VARIANTS", "IncomparableRuns", "ap_per_layer", "by_variant",
                            "check_comparable", "comparison_table", "cost_vs_ap", "differences_table",
                            "discover_runs", "finetuning_gain_table", "first_seed_runs", "headline_table",
                            "layer_equivalence", "load_runs", "missing_variants", "original_study_table",
                            "seeds_table"),
    "analysis.conclusions": ("agreements", "ranking_conclusion", "ranking_table", "rankings", "runs_note",
                             "uncertainty_conclusion", "world_note"),
    "analysis.queries": ("analysis_loader", "query_choice_table", "query_match_counts", "query_usage",
                         "select_queries", "usage_summary"),
    "analysis.attention": ("detected_objects", "record_attention", "run_with_attention"),
    "analysis.cost": ("cost_table", "variant_costs"),
    "analysis.baseline": ("best_of", "loss_gap", "versus_baseline"),
    "analysis.own_data": ("class_groups", "group_ap_table", "group_difference", "surgery_takeaway"),
    "analysis.matching": ("assignment_table", "cost_terms", "layer_loss_sentence", "layer_loss_table"),
    "notebook.setup_cell": ("progress_policy", "setup_notebook"),
    "notebook.figures": ("gt_panels", "plot_ap_curves", "plot_ap_intervals", "plot_ap_per_layer",
                         "plot_category_distribution", "plot_detections", "plot_loss_curves", "plot_objects_per_image",
                         "plot_parameter_counts", "plot_query_norms", "plot_query_similarity", "predict_panels",
                         "save_fig"),
    "notebook.figures_attention": ("interactive_attention", "plot_decoder_attention", "plot_encoder_attention"),
    "notebook.figures_queries": ("plot_match_counts", "plot_query_usage"),
    "notebook.figures_matching": ("plot_cost_terms", "plot_layer_losses"),
    "notebook.report": ("render_report",),
    "notebook.tables": ("ap_vs_paper", "checkpoint_takeaway", "objects_per_image", "parameter_counts",
                        "precision_ap_table", "precision_takeaway", "reference_ap", "run_table", "run_takeaway",
                        "save_table", "save_takeaway", "shown", "skeleton", "split_summary", "split_takeaway",
                        "surgery_table", "with_train_views"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'detr_nb_utils' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value  # the next look-up finds it directly
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
