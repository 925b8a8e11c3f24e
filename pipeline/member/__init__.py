"""The member folder, the only contract between training and inference: manifest, weights, prediction files.

Public names are re-exported lazily, so importing the package imports nothing heavy; type checkers
should import from the modules (``pipeline.member.<module>``).
"""

from pipeline.core.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "manifest": [
            "MANIFEST", "STATUSES", "MemberManifest", "Recipe", "write_manifest", "read_manifest", "member_status", "mark_failed",
            "check_member_name",
        ],
        "folder": ["Member", "find_members", "inside"],
        "weights": ["WEIGHTS", "META", "load_checkpoint", "load_state_dict", "build_model", "model_meta", "export_member"],
        "predictions": ["PredictionWriter", "write_predictions", "read_predictions", "check_probabilities", "PROB_PREFIX",
                        "SUM_TOLERANCE"],
        "cache": [
            "PREDICTIONS", "FALLBACK", "CHECKSUM", "CacheDirs", "cache_dirs", "cache_name", "checkpoint_hash",
            "file_checksum", "cache_problem", "writable", "find_cached", "oof_files", "rekey",
        ],
        "lock": ["LOCK_FILE", "MemberBusy", "member_lock"],
        "export": ["ENSEMBLE", "TIMM_CONFIG", "export_ensemble", "read_ensemble"],
    },
)
