"""Inference: TTA policies, the multi-resolution runner over members, ensembling, the predict stage, the offline kit.

Public names are re-exported lazily, so importing the package imports nothing heavy; type checkers
should import from the modules (``pipeline.predict.<module>``).
"""

from pipeline.core.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "spec": ["MODES", "TTASpec", "EnsembleSpec", "PredictOptions", "BudgetSpec", "check_budget", "crop_override_allowed"],
        "tta": [
            "CROPS", "FLIPS", "POLICIES", "PolicySpec", "TTAPolicy", "create_policy", "list_policies", "make_views",
            "merge_views", "predict_with_tta", "register_policy", "views_per_image",
        ],
        "options": ["PRECISIONS", "DEVICE_TYPES", "check_options", "autocast"],
        "plan": ["EVAL_TRANSFORM", "EvalGroup", "MemberPlan", "policy_key", "policy_names", "eval_group", "member_policy",
                 "settings_key", "plan_members"],
        "loader": ["GroupedDataset", "open_group_caches", "make_loader"],
        "runner": ["load_member_model", "predict_members"],
        "offline": ["VAL_PREDICTIONS", "cached_oof", "cached_oof_sets"],
        "ensemble": [
            "WEIGHT_KINDS", "caruana_select", "resolve_weights", "group_models", "merge_files", "model_oof",
            "check_ensemble",
        ],
        "fitting": ["RULES", "Margin", "Rule", "beats", "cross_fit", "rule", "rule_name", "split", "submitted_rule"],
        "thresholds": ["DECISIONS", "Decision", "cross_fit_decision", "decision_kind", "fit_decision"],
        "splits": ["check_same_oof_rows", "validation_ids"],
        "choose": ["candidate_policies", "choose_ensemble", "choose_policies", "flip_harms", "margin_of"],
        "budget": ["MAX_PLANS", "choose_plan", "plan_probs", "price", "probe_timings", "costs_of", "timings", "within"],
        "timed": ["kit_plans", "predict_within"],
        "record": ["PREDICT_JSON", "PredictRecord"],
        "stage": ["PredictResult", "predict"],
        "distributed": ["BACKENDS", "DistributeSpec", "distribute_spec", "distributed", "run_task"],
        "api": ["Prediction", "predict_images", "fit_ensemble_weights"],
        "kit": ["KIT_SCRIPT", "WHEELS", "MEMBERS", "build_kit", "build_wheel"],
    },
)
