"""On-disk formats: the run directory, the activation store, results and SAE files."""

from layerdrift.storage.activations import create_store, missing_chunks, open_store
from layerdrift.storage.results import list_results, open_result, write_result
from layerdrift.storage.rundir import RunConfigMismatchError, RunDir, save_run_config
from layerdrift.storage.schema import StoreError

__all__ = [
    "RunConfigMismatchError",
    "RunDir",
    "StoreError",
    "create_store",
    "missing_chunks",
    "open_store",
    "list_results",
    "open_result",
    "save_run_config",
    "write_result",
]
