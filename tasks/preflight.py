"""Checks that run before a run writes anything: run folder, data, model, tokenizer, device.

:func:`preflight` is called by ``layerdrift run`` (before Prefect starts) and by the flow
(before ``config.json`` is written), so that a bad input stops the run with one line naming
the problem and the fix, nothing is written, and the same run name works once it is fixed.
Every check reads; none writes into the run folder.

The model checks are the model adapter's (:func:`inspect_model`): they load the config, the
tokenizer and the weights once and trace one short forward pass (a second or two for a
110M-parameter model).
"""

from __future__ import annotations

import logging

from layerdrift.config import RunConfig
from layerdrift.storage.rundir import RunDir, check_run_config
from layerdrift.tasks.data import check_data, data_complete
from layerdrift.tasks.finetune.batches import planned_checkpoints
from layerdrift.tasks.finetune.lora import require_peft
from layerdrift.tasks.imports import check_given_checkpoints, given_checkpoints
from layerdrift.tasks.modeling import (
    ModelInfo,
    inspect_model,
    load_classifier,
    load_tokenizer,
    lora_plan,
)
from layerdrift.tasks.study.series import planned_labels, run_series, series_config

logger = logging.getLogger(__name__)


class PreflightError(ValueError):
    """An input that would make the run fail or mislead; the message names the fix."""


# Model checks -----------------------------------------------------------------------------


def check_model(cfg: RunConfig) -> ModelInfo:
    """Resolve the model and check it through the model adapter (:func:`inspect_model`):
    config, family, tokenizer against the embedding matrix, weights, hidden-state sites.

    With given checkpoints, the reference (``base``) is the model checked, and every other
    checkpoint must share its tokenizer and shape (:func:`check_given_checkpoints`).
    """
    name = cfg.model
    if cfg.imports_checkpoints:
        items = given_checkpoints(cfg)
        check_given_checkpoints(items, cfg.trust_remote_code)
        name = items[0].source
    return inspect_model(name, trust_remote_code=cfg.trust_remote_code)


# Config values that depend on the model and the data ---------------------------------------


def check_layers(cfg: RunConfig, n_layers: int) -> None:
    """``sae.layers`` and ``features.layers`` index hidden states 0 (embeddings) .. n_layers."""
    for section, layers in (("sae", cfg.sae.layers), ("features", cfg.features.layers)):
        bad = [layer for layer in layers or () if not 0 <= layer <= n_layers]
        if bad:
            raise PreflightError(
                f"{section}.layers {bad} are out of range: model {cfg.model} has layers 0 "
                f"(embeddings) to {n_layers}; use numbers in that range"
            )


def _refuse_shared_layers(field: str, cfg: RunConfig, info: ModelInfo) -> None:
    """Freezing layers one at a time needs a model whose layers do not share parameters."""
    if info.shared_module is not None:
        raise PreflightError(
            f"{field} is set but model {cfg.model} ({info.family}) reuses "
            f"{info.shared_module!r} at every depth, so its layers cannot be frozen one at a "
            f"time: unset {field}"
        )


def check_frozen_layers(cfg: RunConfig, info: ModelInfo) -> None:
    """``finetune.freeze_layers`` names layers 0 … L of a model whose layers are separable."""
    frozen = cfg.finetune.frozen()
    if not frozen:
        return
    _refuse_shared_layers("finetune.freeze_layers", cfg, info)
    bad = [layer for layer in frozen if layer > info.num_layers]
    if bad:
        raise PreflightError(
            f"finetune.freeze_layers = {cfg.finetune.freeze_layers!r} names layers {bad}, but "
            f"model {cfg.model} has layers 0 (embeddings) to {info.num_layers}: use k <= "
            f"{info.num_layers} or indices in that range"
        )


def check_lora(cfg: RunConfig, info: ModelInfo) -> None:
    """``finetune.method = "lora"``: peft is installed, and the targets (given, or the
    family's default) name modules of the classifier fine-tuning will train."""
    if cfg.finetune.method != "lora" or cfg.imports_checkpoints:
        return
    try:
        require_peft()
    except ImportError as error:
        raise PreflightError(str(error)) from error
    tokenizer = load_tokenizer(info.path, cfg.trust_remote_code)
    model = load_classifier(info.path, tokenizer, ["a", "b"], cfg.trust_remote_code)
    lora_plan(model, cfg.finetune.lora.target_modules)  # raises LoraTargetError


def check_freeze_grid(cfg: RunConfig, info: ModelInfo) -> None:
    """``importance.freeze_grid`` names k in 0 … L of a model whose layers are separable."""
    grid = cfg.importance.freeze_grid
    if not grid:
        return
    if cfg.finetune.method == "lora":
        raise PreflightError(
            "importance.freeze_grid fine-tunes with layers 0 … k frozen, which LoRA "
            "(finetune.method = 'lora') does not combine with: unset importance.freeze_grid "
            "or fine-tune with method 'full'"
        )
    _refuse_shared_layers("importance.freeze_grid", cfg, info)
    bad = [k for k in grid if k > info.num_layers]
    if bad:
        raise PreflightError(
            f"importance.freeze_grid = {list(grid)} has k = {bad}, but model {cfg.model} has "
            f"layers 0 (embeddings) to {info.num_layers}: use k <= {info.num_layers}"
        )


def check_checkpoint_labels(cfg: RunConfig) -> None:
    """SAE and feature checkpoints, and the labels of ``similarity.pairs``, must be among the
    checkpoints fine-tuning will write (or among the checkpoints given)."""
    if cfg.imports_checkpoints:
        planned = [item.label for item in given_checkpoints(cfg)]
    elif cfg.tasks:
        planned = planned_labels(cfg)
    else:
        planned = [label for _, label in planned_checkpoints(cfg, cfg.data.train_size)]
    source = "the run has" if cfg.imports_checkpoints else "fine-tuning writes"
    asked = sorted({label for pair in cfg.similarity.pairs for label in pair} - set(planned))
    if asked:
        raise PreflightError(
            f"similarity.pairs names {asked}, not checkpoints of this run: {source} "
            f"{', '.join(planned)}; pick from those"
        )
    if cfg.sae.enabled:
        unknown = [label for label in cfg.sae.checkpoints if label not in planned]
        if unknown:
            raise PreflightError(
                f"sae.checkpoints {unknown} are not checkpoints of this run: {source} "
                f"{', '.join(planned)}; pick from those"
            )
    if cfg.sae.enabled and cfg.features.enabled:
        for role in ("base", "finetuned"):
            label = getattr(cfg.features, role)
            if label not in cfg.sae.checkpoints:
                raise PreflightError(
                    f"features.{role} {label!r} has no SAE (sae.checkpoints is "
                    f"{list(cfg.sae.checkpoints)}): add it there, or set features.enabled = false"
                )


def check_device(device: str) -> None:
    """``cuda`` needs a GPU that torch can see."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only"
        raise PreflightError(
            f"--device cuda was asked for but torch sees no CUDA GPU (torch {torch.__version__},"
            f" {build}): use --device cpu, or --device auto to use a GPU when there is one"
        )


def preflight(cfg: RunConfig) -> ModelInfo:
    """Every check above, cheapest first; raises on the first problem, writes nothing.

    The data are checked only while the run has not prepared them yet: a resumed run reads
    its own ``data/`` splits, not the source file.
    """
    run = RunDir(cfg.run_url)
    check_run_config(run, cfg.config_hash())
    check_device(cfg.device)
    check_checkpoint_labels(cfg)
    info = check_model(cfg)
    check_layers(cfg, info.num_layers)
    check_frozen_layers(cfg, info)
    check_lora(cfg, info)
    check_freeze_grid(cfg, info)
    if not data_complete(run):
        sizes = check_data(cfg)
        logger.info("preflight: data splits %s", sizes)
    # A run of several tasks: each task's fine-tune and data, as a run of one task's.
    for series in run_series(cfg):
        scfg = series_config(cfg, series)
        try:
            check_frozen_layers(scfg, info)
            check_lora(scfg, info)
            if not data_complete(run.task_run(series.prefix)):
                check_data(scfg)
        except ValueError as error:
            raise PreflightError(f"task {series.prefix}: {error}") from error
    logger.info(
        "preflight: model %s (%s, %d layers, %d tokens)",
        cfg.model,
        info.family,
        info.num_layers,
        info.tokenizer_size,
    )
    return info
