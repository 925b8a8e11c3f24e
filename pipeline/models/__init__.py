"""Models: the timm factory, the classic networks (registered in timm), fine-tuning controls.

Public names are re-exported lazily, so importing the package imports nothing heavy; type checkers
should import from the modules (``pipeline.models.<module>``).
"""

from pipeline.core.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "spec": ["ModelSpec"],
        "factory": [
            "MIN_INPUT_SIZE", "WEIGHT_SUFFIXES", "create_model", "check_input_size", "load_weights_file",
            "min_input_size", "model_data_config", "strip_model_prefix", "suggest_model_names",
        ],
        "classic": [
            "ClassicNet", "LeNet5", "LeNetC3", "AlexNet", "NetworkInNetwork", "LENET_C3_TABLE", "ALEXNET_CONVS",
            "NIN_BLOCKS", "lenet5", "alexnet", "nin",
        ],
        "finetune": [
            "head_and_backbone_params", "set_backbone_frozen", "build_param_groups", "BackboneFreeze",
        ],
    },
)
