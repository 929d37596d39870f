"""Run-level entry points of the extract stage and their Prefect tasks (what the flow calls)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from prefect import task

from layerdrift.config import REFERENCE_LABEL, RunConfig
from layerdrift.storage.activations import read_attrs, written_manifest
from layerdrift.storage.checkpoints import local_checkpoint_path, local_random_model_path
from layerdrift.storage.rundir import RunDir
from layerdrift.storage.schema import SCHEMA_VERSION
from layerdrift.tasks.data import read_dataset_info, read_split
from layerdrift.tasks.extract.run import extract_checkpoint
from layerdrift.tasks.extract.store import create_activation_store
from layerdrift.tasks.modeling import load_tokenizer, save_random_encoder
from layerdrift.tasks.retry import retry_unless_bad_input

logger = logging.getLogger(__name__)

RANDOM_LABEL = "random"  # the random reference's checkpoint label in random.zarr


def _probe_identity(run: RunDir, texts: list[str], labels: list[int]) -> dict:
    digest = hashlib.sha256()
    for text, label in zip(texts, labels, strict=True):
        digest.update(f"{label}\t{text}\n".encode())
    info = read_dataset_info(run)
    identity = dict(info.get("probe_identity") or info.get("identity", {}))
    probe = {"split": "probe", "probe_rows": len(texts), "probe_sha256": digest.hexdigest()}
    return {**identity, **probe}


def create_store_for_run(
    run: RunDir, cfg: RunConfig, checkpoints: list[str], overwrite: bool = False
) -> str:
    """Create ``<run>/activations.zarr`` for ``checkpoints`` from the run's probe split.

    The tokenizer is the first checkpoint's. Idempotent: an identical store is kept. Returns
    the store's generation id (use it in cache keys: it changes whenever the store is rebuilt).
    """
    folders = {label: local_checkpoint_path(run, label) for label in checkpoints}
    if not folders:
        raise ValueError(f"run {run.url} has no checkpoints to extract: run fine-tuning first")
    return _create_store(run, cfg, run.activations(), folders, overwrite)


def _create_store(
    run: RunDir, cfg: RunConfig, url: str, folders: dict[str, Path], overwrite: bool
) -> str:
    probe = read_split(run, "probe")
    texts, labels = probe["text"].tolist(), [int(v) for v in probe["label"]]
    tokenizer = load_tokenizer(str(next(iter(folders.values()))))
    return create_activation_store(
        url,
        texts,
        labels,
        tokenizer,
        folders,
        max_length=cfg.data.max_length,
        token_chunk=cfg.extract.token_chunk,
        dtype=cfg.extract.dtype,
        config_hash=cfg.config_hash(),
        dataset_identity=_probe_identity(run, texts, labels),
        overwrite=overwrite,
    )


def extract_checkpoint_for_run(run: RunDir, cfg: RunConfig, label: str) -> int:
    """Fill the store's chunks of checkpoint ``label``; returns the number written now."""
    return extract_checkpoint(
        run.activations(),
        label,
        local_checkpoint_path(run, label),
        batch_size=cfg.extract.batch_size,
        device=cfg.device,
        write_queue=cfg.extract.write_queue,
    )


def extract_random_for_run(run: RunDir, cfg: RunConfig) -> int:
    """The similarity floor: build the run's random reference model (:func:`save_random_encoder`
    of the base checkpoint's architecture, seeded with ``cfg.seed``) unless it is there,
    create ``<run>/random.zarr`` (checkpoint ``random``, the same tokens as the activation
    store) and fill what is missing. Returns the chunks written now (0 on a finished rerun).
    """
    folder = save_random_encoder(
        local_checkpoint_path(run, REFERENCE_LABEL), cfg.seed, local_random_model_path(run)
    )
    url = run.random_activations()
    _create_store(run, cfg, url, {RANDOM_LABEL: folder}, overwrite=False)
    return extract_checkpoint(
        url,
        RANDOM_LABEL,
        folder,
        batch_size=cfg.extract.batch_size,
        device=cfg.device,
        write_queue=cfg.extract.write_queue,
    )


def random_reference_complete(run: RunDir) -> bool:
    """Whether the run's random reference store exists with every chunk written."""
    attrs = read_attrs(run.random_activations())
    if attrs is None or attrs.get("schema_version") != SCHEMA_VERSION:
        return False
    return bool(written_manifest(run.random_activations()).all())


def extraction_complete(run: RunDir) -> bool:
    """Whether the run's store exists, has schema version 1 and every chunk written."""
    attrs = read_attrs(run.activations())
    if attrs is None or attrs.get("schema_version") != SCHEMA_VERSION:
        return False
    return bool(written_manifest(run.activations()).all())


@task(
    name="create-activation-store",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_bad_input,
)
def create_store_task(run: RunDir, cfg: RunConfig, checkpoints: list[str]) -> str:
    """Prefect task: :func:`create_store_for_run`; returns the store's generation id."""
    return create_store_for_run(run, cfg, checkpoints)


@task(
    name="extract-checkpoint",
    task_run_name="extract-{label}",
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=retry_unless_bad_input,
)
def extract_checkpoint_task(run: RunDir, cfg: RunConfig, label: str) -> int:
    """Prefect task: :func:`extract_checkpoint_for_run`; returns the chunks written now."""
    return extract_checkpoint_for_run(run, cfg, label)


@task(
    name="extract-random",
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=retry_unless_bad_input,
)
def extract_random_task(run: RunDir, cfg: RunConfig) -> int:
    """Prefect task: :func:`extract_random_for_run`; returns the chunks written now."""
    return extract_random_for_run(run, cfg)


@task(
    name="extract-on-dask",
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=retry_unless_bad_input,
)
def extract_on_dask_task(run: RunDir, cfg: RunConfig, labels: list[str]) -> dict[str, int]:
    """Prefect task: :func:`extract_checkpoint_for_run` for every label, one per Dask worker.

    Runs plain functions on the cluster at ``cfg.dask_address`` (no Prefect inside the
    workers); each worker opens the store by URL and holds only its checkpoint's lease.
    Returns the chunks written now, per label.
    """
    from distributed import Client

    with Client(cfg.dask_address) as client:
        futures = client.map(
            extract_checkpoint_for_run,
            [run] * len(labels),
            [cfg] * len(labels),
            labels,
            pure=False,
        )
        return dict(zip(labels, client.gather(futures), strict=True))
