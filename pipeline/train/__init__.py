"""Training one member: the spec, the LightningModule and DataModule, callbacks, fit, DDP, snapshots, sweep summary.

Public names are re-exported lazily, so importing the package imports nothing heavy; type checkers
should import from the modules (``pipeline.train.<module>``).
"""

from pipeline.core.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "spec": ["TrainSpec", "TransformFactory"],
        "module": ["ClassifierModule", "NonFiniteLossError", "optimizer_lr"],
        "fit": ["train_member", "MemberConflict", "MEMBER_KEYS", "member_hash"],
        "ddp": ["fit_other_rank", "distributed_scope"],
        "datamodule": ["MemberDataModule"],
        "callbacks": ["member_callbacks", "default_callbacks", "contract_checkpoint"],
        "averaging": ["EMA", "SWA"],
        "snapshots": ["SnapshotCheckpoint", "snapshot_name", "write_snapshot_members"],
        "loggers": ["create_lightning_logger", "log_sample_grid", "log_member_artifacts", "sample_grid", "SAMPLES_KEY"],
        "sweep": [
            "SUMMARY_CSV", "SUMMARY_JSON", "RUNTIME", "MemberRow", "scan_sweep", "write_summary", "print_summary",
            "in_ray_task", "limit_threads_to_assigned_cpus", "runtime_info",
        ],
    },
)
