"""The data stage: competition tables, targets and their task, decoding, folds, the dataset, the image cache,
content fingerprints and augmentation.

Public names are re-exported lazily, so importing the package imports nothing heavy; type checkers
should import from the modules (``pipeline.data.<module>``).
"""

from pipeline.core.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "spec": ["DataSpec", "PIL_MAX_IMAGE_PIXELS"],
        "tables": [
            "IMAGE_EXTENSIONS", "ImageTable", "read_train_table", "read_test_table", "read_test_in_sample_order",
            "check_sample_ids", "clean_label", "MISSING_LABELS", "read_split_columns",
        ],
        "targets": ["resolve_task", "read_targets", "complete_task", "check_target_keys", "MAX_INTEGER_CLASSES"],
        "decode": ["load_rgb", "load_image", "to_channels", "verify_images", "decode_notes"],
        "folds": [
            "make_folds", "load_or_create_folds", "split_indices", "check_fold_index", "check_split", "resolve_folds",
            "save_folds", "fold_rule", "straddling_groups", "fold_strata",
        ],
        "dataset": ["ImageDataset"],
        "fingerprint": ["HASHES_FILE", "file_digest", "table_fingerprint", "split_tag"],
        "cache": ["ImageCache", "open_cache", "cache_for_spec", "resize_square"],
        "augment": [
            "match_channels", "resolve_normalization", "normalize_batch", "center_offset", "center_crop",
            "transform_to_dict", "transform_from_dict", "resize_settings", "resize_image",
        ],
        "demo": ["CLASSES", "DEFAULT_OUT", "SUBSET_FILE", "SUBSET_SHA256", "load_subset", "prepare_demo"],
        "task_demos": ["TASK_DEMOS", "write_task_demo", "task_demo_out", "describe_targets"],
    },
)
