"""On-disk formats: the run directory, the activation store, results and SAE files."""

from storage.results import list_results, open_result, write_result
from storage.rundir import RunConfigMismatchError, RunDir, save_run_config

__all__ = [
    "RunConfigMismatchError",
    "RunDir",
    "list_results",
    "open_result",
    "save_run_config",
    "write_result",
]
