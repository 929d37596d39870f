"""The run directory: where every stage's output lives, on a local path or an fsspec URL.

Layout (see DESIGN.md)::

    config.json            the resolved RunConfig, with its hash
    data/<split>.jsonl     the cleaned, split dataset (train, validation, probe)
    checkpoints/<label>/   save_pretrained folders (safetensors) and metrics.json
    activations.zarr       the activation store
    random.zarr            the same probe set through a random copy of the model (optional)
    random-init/           that copy (save_pretrained, seeded), rebuilt identically on demand
    results.zarr           similarity, probe and SAE metrics (groups: storage.results_schema)
    similarity.csv         the similarity group as a tidy table
    saes/<checkpoint>/layer-<l>/
    saes-control/<checkpoint>/layer-<l>/   the reference's control SAE (another seed)
    crosscoders/layer-<l>/ base/fine-tuned crosscoders
    features/layer-<l>.json, features/cards.json
    crosscoders/<label>/layer-<l>/, features/<label>/layer-<l>.json
                           a run of several tasks: base against each other task final
    importance/freeze-<k>/ the freeze grid's fine-tune with layers 0 … k frozen: its data/,
                           checkpoints/final/ and freeze.json (its row of the grid)
    tasks/<prefix>/        a run of several tasks: each fine-tune's data/ (its checkpoints
                           move to checkpoints/<prefix>/<label>/ once it finishes) and
                           base-metrics.json (its own scoring of base: the curve's start)
    figures/*.png, report.html, explorer.html
    run.lock               the lease of the live ``layerdrift run`` (absent when none runs)

Nothing in a run directory is ever unpickled: every file is JSON, text, Zarr or safetensors.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from layerdrift.storage.lock import StoreLockedError, WriterLock

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
DATA_DIR = "data"
CHECKPOINTS_DIR = "checkpoints"
ACTIVATIONS_STORE = "activations.zarr"
RESULTS_STORE = "results.zarr"
RANDOM_STORE = "random.zarr"
RANDOM_MODEL_DIR = "random-init"
SIMILARITY_CSV = "similarity.csv"
SAES_DIR = "saes"
CROSSCODERS_DIR = "crosscoders"
# Control SAEs: the reference checkpoint again, another seed and token order.
CONTROL_SAES_DIR = "saes-control"
FEATURES_DIR = "features"
CARDS_PATH = (FEATURES_DIR, "cards.json")
# The freeze grid: one fine-tune per k, each a run folder of its own (data, checkpoints).
FREEZE_GRID_DIR = "importance"
FREEZE_RECORD = "freeze.json"
# A run of several tasks: one run folder per fine-tune (its data and, until adopted into the
# run's checkpoints/<prefix>/, its checkpoints).
TASKS_DIR = "tasks"
FIGURES_DIR = "figures"
REPORT_FILE = "report.html"
EXPLORER_FILE = "explorer.html"
RUN_LOCK_FILE = "run.lock"
SPLITS = ("train", "validation", "probe")


@dataclass(frozen=True)
class RunDir:
    """A run directory addressed by a local path or an fsspec URL (``s3://…``, ``memory://…``).

    Small and hashable, so it can be passed to Prefect tasks and used in cache keys.
    """

    url: str

    @cached_property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The filesystem that holds the run."""
        fs, _ = fsspec.core.url_to_fs(self.url)
        return fs

    @cached_property
    def root(self) -> str:
        """The run's path inside :attr:`fs` (no protocol)."""
        _, path = fsspec.core.url_to_fs(self.url)
        return path.rstrip("/")

    @property
    def is_local(self) -> bool:
        """True when the run lives on the local filesystem."""
        return isinstance(self.fs, LocalFileSystem)

    def path(self, *parts: str) -> str:
        """A path inside the run, for use with :attr:`fs`."""
        return "/".join([self.root, *parts])

    def child_url(self, *parts: str) -> str:
        """A full URL (or local path) inside the run, for libraries that take URLs."""
        if self.is_local:
            return str(Path(self.root, *parts))
        return self.fs.unstrip_protocol(self.path(*parts))

    def exists(self, *parts: str) -> bool:
        """Whether a file or folder exists inside the run."""
        return self.fs.exists(self.path(*parts))

    def read_text(self, *parts: str) -> str:
        """Read a text file inside the run."""
        with self.fs.open(self.path(*parts), "r") as handle:
            return handle.read()

    def write_text(self, text: str, *parts: str) -> None:
        """Write a text file inside the run atomically where the filesystem allows it."""
        target = self.path(*parts)
        self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        if self.is_local:
            tmp = Path(target + ".tmp")
            tmp.write_text(text)
            tmp.replace(target)
        else:
            with self.fs.open(target, "w") as handle:
                handle.write(text)

    def makedirs(self, *parts: str) -> None:
        """Create a folder inside the run (and its parents)."""
        self.fs.makedirs(self.path(*parts), exist_ok=True)

    # Named locations -----------------------------------------------------------------------

    def checkpoint(self, label: str) -> str:
        """URL of one checkpoint folder."""
        return self.child_url(CHECKPOINTS_DIR, label)

    def activations(self) -> str:
        """URL of the activation store."""
        return self.child_url(ACTIVATIONS_STORE)

    def random_activations(self) -> str:
        """URL of the random reference's activation store (the similarity floor)."""
        return self.child_url(RANDOM_STORE)

    def results(self) -> str:
        """URL of the results store."""
        return self.child_url(RESULTS_STORE)

    def sae(self, checkpoint: str, layer: int) -> str:
        """URL of one SAE folder."""
        return self.child_url(SAES_DIR, checkpoint, f"layer-{layer}")

    def control_sae(self, checkpoint: str, layer: int) -> str:
        """URL of the control SAE folder of (``checkpoint``, ``layer``)."""
        return self.child_url(CONTROL_SAES_DIR, checkpoint, f"layer-{layer}")

    def crosscoder(self, layer: int, pair: tuple[str, ...] = ()) -> str:
        """URL of the crosscoder folder of ``layer``; ``pair`` the folder parts of a
        comparison other than the run's main one (``("topic", "final")``)."""
        return self.child_url(CROSSCODERS_DIR, *pair, f"layer-{layer}")

    def freeze_variant(self, k: int) -> RunDir:
        """The run folder of the freeze grid's fine-tune with layers 0 … ``k`` frozen."""
        return RunDir(self.child_url(FREEZE_GRID_DIR, f"freeze-{k}"))

    def task_run(self, prefix: str) -> RunDir:
        """The run folder of one fine-tune of a run of several tasks (``sentiment``,
        ``sentiment/seed-1``)."""
        return RunDir(self.child_url(TASKS_DIR, *prefix.split("/")))

    def lock(self) -> WriterLock:
        """The run's lease: one live ``layerdrift run`` per run directory at a time."""
        return WriterLock(
            self.child_url(RUN_LOCK_FILE), what=f"run {self.url}", error=RunLockedError
        )


class RunLockedError(StoreLockedError):
    """Another live process is running this run."""


class RunConfigMismatchError(ValueError):
    """The run directory already holds a run made with a different configuration."""


def check_run_config(run: RunDir, config_hash: str) -> bool:
    """Whether ``run`` already holds this configuration's ``config.json`` (writes nothing).

    A run directory belongs to one configuration: its stores and checkpoints were made from
    it. Reusing the folder with other settings would mix results, so that raises
    :class:`RunConfigMismatchError`.
    """
    if not run.exists(CONFIG_FILE):
        return False
    existing = json.loads(run.read_text(CONFIG_FILE))
    if existing.get("config_hash") != config_hash:
        raise RunConfigMismatchError(
            f"{run.url} already holds a run with config hash {existing.get('config_hash')}, "
            f"not {config_hash}: choose another --name, or delete the folder to start over"
        )
    return True


def save_run_config(run: RunDir, config_json: str, config_hash: str) -> None:
    """Write ``config.json`` for a new run, or check it against the one already there."""
    if check_run_config(run, config_hash):
        return
    run.write_text(config_json, CONFIG_FILE)
    logger.info("wrote %s", run.path(CONFIG_FILE))
