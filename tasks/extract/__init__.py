"""The extract stage: every checkpoint x every layer x every probe token into the store.

Plain functions (tests call them directly) and their Prefect tasks; the flow calls
:func:`create_store_task` once, then :func:`extract_checkpoint_task` per checkpoint.
"""

from layerdrift.tasks.extract.plan import WINDOW_BYTES, Window, plan_batches, plan_windows
from layerdrift.tasks.extract.prefect_tasks import (
    create_store_for_run,
    create_store_task,
    extract_checkpoint_for_run,
    extract_checkpoint_task,
    extraction_complete,
)
from layerdrift.tasks.extract.run import extract_checkpoint, store_token_states
from layerdrift.tasks.extract.store import create_activation_store, model_identity, tokenize_probe

__all__ = [
    "WINDOW_BYTES",
    "Window",
    "create_activation_store",
    "create_store_for_run",
    "create_store_task",
    "extract_checkpoint",
    "extract_checkpoint_for_run",
    "extract_checkpoint_task",
    "extraction_complete",
    "model_identity",
    "plan_batches",
    "plan_windows",
    "store_token_states",
    "tokenize_probe",
]
