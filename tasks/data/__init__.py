"""The data stage: load a labelled text dataset, clean it, split it, write it into the run.

Sources: ``rotten-tomatoes`` and ``bbc-news`` (bundled), ``csv:PATH``, ``hf:NAME[:CONFIG]``.
Output: ``<run>/data/{train,validation,probe}.jsonl`` and ``<run>/data/dataset.json`` (last).
"""

from layerdrift.tasks.data.prefect_tasks import prepare_data_task
from layerdrift.tasks.data.probe import (
    UNLABELLED,
    UNLABELLED_NOTE,
    is_labelled,
    load_probe_set,
)
from layerdrift.tasks.data.sources import DatasetError, clean_texts, load_labelled_texts
from layerdrift.tasks.data.splits import (
    DATASET_INFO,
    check_data,
    data_complete,
    prepare_data,
    probe_set_labelled,
    read_dataset_info,
    read_split,
    split_frame,
)

__all__ = [
    "UNLABELLED",
    "UNLABELLED_NOTE",
    "is_labelled",
    "load_probe_set",
    "probe_set_labelled",
    "DATASET_INFO",
    "DatasetError",
    "check_data",
    "clean_texts",
    "data_complete",
    "load_labelled_texts",
    "prepare_data",
    "prepare_data_task",
    "read_dataset_info",
    "read_split",
    "split_frame",
]
