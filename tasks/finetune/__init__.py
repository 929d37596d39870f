"""The fine-tuning stage: checkpoints of a sequence classifier under ``<run>/checkpoints/``."""

from layerdrift.tasks.finetune.batches import planned_checkpoints
from layerdrift.tasks.finetune.checkpointing import CheckpointMismatchError, finetune_fingerprint
from layerdrift.tasks.finetune.prefect_tasks import finetune_task
from layerdrift.tasks.finetune.train import finetune, finetune_complete, finished_checkpoints

__all__ = [
    "CheckpointMismatchError",
    "finetune",
    "finetune_complete",
    "finetune_fingerprint",
    "finetune_task",
    "finished_checkpoints",
    "planned_checkpoints",
]
