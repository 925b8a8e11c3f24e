"""The report: load a predict folder, score every row, say what ensembling and TTA bought, plot it.

Public names are re-exported lazily, so importing the package imports nothing heavy; type checkers
should import from the modules (``pipeline.report.<module>``).
"""

from pipeline.core.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "load": ["PredictRun", "load_predict_run"],
        "score": ["KINDS", "OTHER_RULES", "Row", "candidate_rows", "baseline_row", "kind_of", "score_rows",
                  "submitted_row"],
        "nested": ["NESTED_PARTS", "NestedPick", "nested_pick"],
        "savings": ["flip_effects", "redundant_policies", "droppable_models"],
        "members": ["describe_members", "recipe_sentences", "recipe_features"],
        "text": ["relative_error_reduction", "summarize", "paragraph", "render_table", "markdown"],
        "plots": ["MOST_WRONG", "save_figure", "plot_score_vs_cost", "plot_confusion", "plot_most_wrong"],
        "diagnostics": ["member_correlation", "per_class_recall", "reliability_bins", "place_labels"],
        "build": ["compute_report", "build_report"],
    },
)
