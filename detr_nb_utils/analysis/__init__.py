"""Reading finished runs: bootstrap intervals, the comparison of the variants and its findings, the object
queries, attention maps, cost. Never trains. Imports from models, data and training.

``from detr_nb_utils.analysis import ApBootstrap``: the names below, each loaded from its module on first use."""
from .. import _lazy_exports

#: module (relative to this package) -> the public names it defines
_PUBLIC: dict[str, tuple[str, ...]] = {
    "bootstrap": ("MatchedDetections", "ap_difference", "ap_interval"),
    "run_bootstrap": ("ApBootstrap",),
    "comparison": ("QUERY_CHOICES", "QUERY_PAIRS", "VARIANTS", "VARIANT_PAIRS", "ap_per_layer", "comparison_table",
                   "cost_vs_ap", "differences_table", "finetuning_gain_table", "headline_table", "layer_equivalence",
                   "original_study_table", "reported_losses", "seeds_table"),
    "run_sets": ("IncomparableRuns", "by_recipe", "by_variant", "check_comparable", "discover_runs",
                 "first_seed_runs", "load_runs", "missing_variants", "variant_labels"),
    "conclusions": ("agreements", "ranking_table", "rankings", "runs_note", "study_findings", "world_note"),
    "templates": ("TEMPLATES", "answer"),
    "limitations": ("arms_sentence", "seeds_sentence", "study_limitations"),
    "diagnostic_findings": ("class_ap_by_variant", "errors_by_kind", "errors_sentence", "sizes_sentence",
                            "sizes_table", "subgroup_findings", "subgroup_paragraph"),
    "queries": ("analysis_loader", "query_choice_table", "query_match_counts", "query_usage", "select_queries",
                "usage_summary"),
    "attention": ("detected_objects", "record_attention", "run_with_attention"),
    "cost": ("cost_table", "variant_costs"),
    "baseline": ("best_of", "loss_gap", "untrained_choice", "versus_baseline"),
    "arms": ("arm_table", "ranking_under_arms"),
    "findings": ("Finding", "findings_table", "render"),
    "own_data": ("class_groups", "group_ap_table", "group_difference", "run_change", "surgery_takeaway"),
    "matching": ("assignment_table", "cost_terms", "layer_loss_sentence", "layer_loss_table"),
    "ap_breakdown": ("class_ap_table", "evaluate_detections", "pr_curves", "size_table"),
    "confusion": ("confusion_matrix",),
    "errors": ("ErrorAnalysis", "analyse_errors", "error_table", "layer_change_sentence", "layer_changes"),
    "subgroups": ("SubgroupAp", "subgroup_sentences"),
    "diagnostics": ("RunDiagnostics", "variant_errors"),
    "loss_terms": ("runs_loss_terms",),
}
__all__, __getattr__, __dir__ = _lazy_exports(__name__, _PUBLIC)
