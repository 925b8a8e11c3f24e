"""The competition file: its format, building and validating it, and the submission stage.

Public names are re-exported lazily, so importing the package imports nothing heavy; type checkers
should import from the modules (``pipeline.submission.<module>``).
"""

from pipeline.core.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "spec": ["SubmissionOptions"],
        "format": [
            "KINDS", "LABEL_AS", "INDEX_PATTERN", "SubmissionError", "SubmissionFormat", "infer_format",
            "format_from_config",
        ],
        "build": ["FLOAT_FORMAT", "PROB_TOL", "build_submission", "validate_submission", "write_submission"],
        "target_format": ["TARGET_KINDS", "LABEL_VALUES", "TargetFormat", "target_format"],
        "target_build": ["build_target_submission", "validate_target_submission", "write_target_submission",
                         "write_task_submission"],
        "stage": ["submission_format", "read_solution", "solution_score", "submit"],
        "api": ["write_submission_file"],
    },
)
