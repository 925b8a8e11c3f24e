"""Training one member: spec, LightningModule, DataModule, recipes, callbacks, fit, DDP, snapshots, sweep summary.

Public names are re-exported lazily, so importing the package imports nothing heavy; type checkers
should import from the modules (``pipeline.train.<module>``).
"""

from pipeline.core.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "spec": ["TrainSpec", "TransformFactory", "MixupSpec", "LOSS_NAMES"],
        "module": ["ClassifierModule", "NonFiniteLossError", "optimizer_lr"],
        "fit": ["train_member", "MemberConflict"],
        "identity": ["MEMBER_KEYS", "WEIGHTS_SHA", "member_hash"],
        "ddp": ["fit_other_rank", "distributed_scope"],
        "datamodule": ["MemberDataModule"],
        "callbacks": ["member_callbacks", "default_callbacks", "contract_checkpoint"],
        "averaging": ["EMA", "SWA"],
        "recipe": ["training_loss", "create_mixup", "resolve_precision", "check_recipe", "describe_recipe", "AUTO_MIXED"],
        "schedules": ["WarmupCosine", "warmup_cosine_factor", "schedule_interval"],
        "snapshots": ["SnapshotCheckpoint", "snapshot_name", "write_snapshot_members"],
        "loggers": ["create_lightning_logger", "log_sample_grid", "log_member_artifacts", "sample_grid", "SAMPLES_KEY",
                    "member_tags"],
        "sweep": [
            "SUMMARY_CSV", "SUMMARY_JSON", "RUNTIME", "ARTIFACTS_KEY", "MemberRow", "scan_sweep", "write_summary",
            "print_summary", "in_ray_task", "limit_threads_to_assigned_cpus", "runtime_info",
        ],
    },
)
