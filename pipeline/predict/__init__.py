"""Inference: TTA policies, the batched runner over members, ensembling, and the predict stage.

Public names are re-exported lazily, so importing the package imports nothing heavy; type checkers
should import from the modules (``pipeline.predict.<module>``).
"""

from pipeline.core.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "spec": ["TTASpec", "EnsembleSpec", "PredictOptions"],
        "tta": [
            "CROPS", "FLIPS", "POLICIES", "PolicySpec", "TTAPolicy", "create_policy", "list_policies", "make_views",
            "merge_views", "predict_with_tta", "register_policy", "views_per_image",
        ],
        "runner": ["PRECISIONS", "policy_key", "load_member_model", "predict_members"],
        "ensemble": [
            "WEIGHT_KINDS", "caruana_select", "resolve_weights", "group_models", "merge_files", "model_oof",
            "fit_weights",
        ],
        "stage": ["PredictResult", "predict"],
        "api": ["Prediction", "predict_images", "fit_ensemble_weights"],
    },
)
