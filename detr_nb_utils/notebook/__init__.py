"""What the notebooks need beyond the analysis: the setup cell, the figures and :func:`~.figures.save_fig`, the
tables and :func:`~.tables.save_table`. The top of the import graph.

``from detr_nb_utils.notebook import save_fig, setup_notebook``: the names below, each loaded from its module on
first use."""
from .. import _lazy_exports

#: module (relative to this package) -> the public names it defines
_PUBLIC: dict[str, tuple[str, ...]] = {
    "setup_cell": ("config_parameters", "progress_policy", "setup_notebook"),
    "fine_tune": ("against_baseline", "arm_configs", "await_family", "change_findings", "check_data",
                  "choice_run_name", "plan", "recipe_advice", "seeded", "show_runs", "variant_of_config"),
    "figures": ("gt_panels", "plot_ap_curves", "plot_ap_per_layer", "plot_category_distribution", "plot_forest",
                "plot_detections", "plot_loss_curves", "plot_objects_per_image", "plot_parameter_counts",
                "plot_findings", "plot_query_norms", "plot_query_similarity", "predict_panels", "save_fig"),
    "figures_attention": ("interactive_attention", "plot_decoder_attention", "plot_encoder_attention"),
    "figures_queries": ("plot_match_counts", "plot_query_usage"),
    "figures_matching": ("plot_cost_terms", "plot_layer_losses"),
    "figures_diagnostics": ("plot_ap_by_size", "plot_class_ap", "plot_confusion", "plot_error_breakdown",
                            "plot_layer_errors", "plot_loss_terms", "plot_pr_curves", "plot_subgroup_changes"),
    "figures_gallery": ("plot_false_positives", "plot_missed"),
    "diagnostics_cells": ("diagnostics_sentence", "layer_sentence", "show_diagnostics"),
    "takeaways": ("WHY_IN_03", "best_line", "finetune_lines", "show_takeaway", "sign_line", "split_lines",
                  "takeaway_markdown", "untrained_line"),
    "figures_variants": ("plot_variant_curves", "plot_variant_layers"),
    "report": ("render_report",),
    "table_format": ("display_table", "markdown_table", "shown"),
    "tables": ("ap_vs_paper", "checkpoint_takeaway", "layer_ap_table", "objects_per_image", "parameter_counts", "precision_ap_table",
               "precision_takeaway", "reference_ap", "run_table", "save_findings", "save_table", "save_takeaway",
               "skeleton", "split_summary", "surgery_table", "with_train_views"),
}
__all__, __getattr__, __dir__ = _lazy_exports(__name__, _PUBLIC)
