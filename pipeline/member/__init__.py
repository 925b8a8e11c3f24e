"""The member folder, the only contract between training and inference: manifest, weights, prediction files.

Public names are re-exported lazily, so importing the package imports nothing heavy; type checkers
should import from the modules (``pipeline.member.<module>``).
"""

from pipeline.core.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "manifest": [
            "MANIFEST", "STATUSES", "MemberManifest", "write_manifest", "read_manifest", "member_status", "mark_failed",
        ],
        "folder": ["Member", "find_members"],
        "weights": ["WEIGHTS", "META", "load_checkpoint", "load_state_dict", "export_member"],
        "predictions": ["PredictionWriter", "write_predictions", "read_predictions", "PROB_PREFIX"],
        "export": ["export_ensemble"],
    },
)
