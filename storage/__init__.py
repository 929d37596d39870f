"""On-disk formats: the run directory, the activation store, results and SAE files."""

from storage.results import list_results, open_result, write_result
from storage.rundir import RunDir

__all__ = ["RunDir", "list_results", "open_result", "write_result"]
