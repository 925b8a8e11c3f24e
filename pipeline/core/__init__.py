"""Core helpers every stage shares: errors, file I/O and hashes, metrics, probability reductions, tracking.

Public names are re-exported lazily, so importing the package imports nothing heavy; type checkers
should import from the modules (``pipeline.core.<module>``).
"""

from pipeline.core.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "errors": [
            "MISSING", "PipelineError", "ConfigError", "DataError", "MemberError", "TrainError", "OutputError",
            "examples", "duplicates", "id_differences", "pickle_refusal",
        ],
        "io": [
            "AtomicFile", "atomic_path", "write_json", "read_json", "read_csv_as_text", "safe_name", "short_hash",
            "clean_stale_temps", "ensure_writable_dir", "STALE_TEMP_AGE_S",
        ],
        "metrics": [
            "LOG_LOSS_EPS", "METRICS", "BootstrapResult", "Metric", "accuracy", "balanced_accuracy", "get_metric",
            "log_loss", "macro_f1", "paired_bootstrap", "register_metric", "score_all", "top_k_accuracy",
            "roc_auc", "qwk", "map_at_k", "register_custom_metric", "check_metric_task", "metric_names",
        ],
        "reduce": ["REDUCTIONS", "check_weights", "merge_members", "reduce_probs", "stack_members"],
        "tracking": ["LoggerSpec", "init_wandb", "default_mode", "log_files_artifact", "use_files_artifact", "run_tags",
                     "is_disabled"],
    },
)
