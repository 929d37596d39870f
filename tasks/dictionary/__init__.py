"""Sparse dictionaries: SAEs and crosscoders behind one protocol, one loader, one trainer.

Modules: ``model`` (the protocol, :class:`DictionarySpec` and the architecture registry),
``topk`` (TopK, BatchTopK), ``jumprelu``, ``relu`` (the architectures), ``sparse`` (the
sparse backward they share), ``loader`` (seeded batches from the activation store),
``train`` (the trainer with resume), ``lifecycle`` (train, resume or load a set of
dictionaries), ``files`` (SAELens's file layout), ``evaluate`` (metrics, recovered
accuracy and loss through the model adapter's splice), ``cluster`` (training on Dask).
The ``sae`` and ``features`` stages use it.
"""

from layerdrift.tasks.dictionary import jumprelu, relu, topk  # noqa: F401 - registers them
from layerdrift.tasks.dictionary.evaluate import (
    DENSITY_EDGES,
    FVUAccumulator,
    LayerSplices,
    density_histogram,
    reconstruction_metrics,
    recovered_metrics,
    recovered_metrics_by_layer,
)
from layerdrift.tasks.dictionary.files import (
    folder_current,
    layerdrift_info,
    load_dictionary,
    save_dictionary,
)
from layerdrift.tasks.dictionary.lifecycle import Job, make_loader, train_dictionaries
from layerdrift.tasks.dictionary.loader import ActivationLoader
from layerdrift.tasks.dictionary.model import ARCHITECTURES, Dictionary, DictionarySpec, build
from layerdrift.tasks.dictionary.train import Schedule, Trainer, schedule_for

__all__ = [
    "ARCHITECTURES",
    "DENSITY_EDGES",
    "ActivationLoader",
    "Dictionary",
    "DictionarySpec",
    "FVUAccumulator",
    "Job",
    "LayerSplices",
    "Schedule",
    "Trainer",
    "build",
    "density_histogram",
    "folder_current",
    "layerdrift_info",
    "load_dictionary",
    "make_loader",
    "reconstruction_metrics",
    "recovered_metrics",
    "recovered_metrics_by_layer",
    "save_dictionary",
    "schedule_for",
    "train_dictionaries",
]
