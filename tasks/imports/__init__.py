"""Given checkpoints (instead of fine-tuning): folders, hub names, a Trainer output folder,
PEFT adapters, saved under ``<run>/checkpoints/`` for the later stages."""

from layerdrift.tasks.imports.check import check_given_checkpoints
from layerdrift.tasks.imports.load import (
    import_checkpoints,
    imports_complete,
    load_adapter_merged,
    load_given,
)
from layerdrift.tasks.imports.prefect_tasks import import_checkpoints_task
from layerdrift.tasks.imports.sources import (
    CheckpointImportError,
    GivenCheckpoint,
    given_checkpoints,
    trainer_checkpoints,
)

__all__ = [
    "CheckpointImportError",
    "GivenCheckpoint",
    "check_given_checkpoints",
    "given_checkpoints",
    "import_checkpoints",
    "import_checkpoints_task",
    "imports_complete",
    "load_adapter_merged",
    "load_given",
    "trainer_checkpoints",
]
