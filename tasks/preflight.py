"""Checks that run before a run writes anything: run folder, data, model, tokenizer, device.

:func:`preflight` is called by ``layerdrift run`` (before Prefect starts) and by the flow
(before ``config.json`` is written), so that a bad input stops the run with one line naming
the problem and the fix, nothing is written, and the same run name works once it is fixed.
Every check reads; none writes into the run folder.

The model checks only read the model's ``config.json`` and tokenizer (``AutoConfig``,
``AutoTokenizer``), never its weights, so they take a second.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from layerdrift.config import RunConfig
from layerdrift.storage.rundir import RunDir, check_run_config
from layerdrift.tasks.data import check_data, data_complete
from layerdrift.tasks.finetune.batches import planned_checkpoints
from layerdrift.tasks.modeling import ModelNotFoundError, load_tokenizer, resolve_model

logger = logging.getLogger(__name__)

# Files from which ``AutoTokenizer`` builds a vocabulary; a folder needs one of them.
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
    "spm.model",
)
# Config attributes that hold the number of transformer layers, by model family.
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


class PreflightError(ValueError):
    """An input that would make the run fail or mislead; the message names the fix."""


@dataclass(frozen=True)
class ModelFacts:
    """What the run needs to know about its model before loading any weights."""

    source: str  # what from_pretrained takes: a local folder or a hub name
    model_type: str
    n_layers: int  # transformer layers; hidden_states has n_layers + 1 entries
    vocab_size: int  # rows of the input embedding matrix
    tokenizer_size: int  # len(tokenizer), added tokens included


# Model checks -----------------------------------------------------------------------------


def layer_count(config) -> int | None:
    """The number of transformer layers a ``PretrainedConfig`` declares (None if unknown)."""
    for candidate in (config, getattr(config, "get_text_config", lambda: None)()):
        for key in LAYER_COUNT_KEYS:
            value = getattr(candidate, key, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


def load_model_config(source: str, name: str, trust_remote_code: bool):
    """``AutoConfig`` of a resolved model, with one-line errors for unknown families."""
    import transformers
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except ValueError as error:
        text = " ".join(str(error).split())
        named = re.search(r"model type `([^`]*)`", text)
        if named or "Unrecognized model" in text:
            what = f"model_type {named.group(1)!r}" if named else "a config.json without model_type"
            raise PreflightError(
                f"model {name} has {what}, which transformers {transformers.__version__} does "
                "not know: give an encoder that transformers supports (BERT, RoBERTa, "
                "DistilBERT, DeBERTa, ...) or fix model_type in its config.json"
            ) from error
        raise PreflightError(f"model {name}: its config.json cannot be read ({text})") from error
    except OSError as error:
        raise ModelNotFoundError(
            f"model {name}: cannot read its configuration ({error})"
        ) from error


def check_tokenizer_files(source: str, name: str) -> None:
    """A local model folder must carry its tokenizer (else a near-empty one is made up)."""
    folder = Path(source)
    if folder.is_dir() and not any((folder / file).is_file() for file in TOKENIZER_FILES):
        raise PreflightError(
            f"model folder {folder} has no tokenizer files (none of "
            f"{', '.join(TOKENIZER_FILES[:3])}, ...): save the tokenizer beside the model "
            f"with tokenizer.save_pretrained('{folder}')"
        )


def check_model(cfg: RunConfig) -> ModelFacts:
    """Resolve the model, read its config and tokenizer, and check that they fit together."""
    from transformers import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    source = resolve_model(cfg.model)
    config = load_model_config(source, cfg.model, cfg.trust_remote_code)
    if type(config) not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING and not cfg.trust_remote_code:
        raise PreflightError(
            f"model {cfg.model} is a {config.model_type!r} model, which has no sequence "
            "classification head in transformers: give an encoder such as BERT or RoBERTa"
        )
    n_layers = layer_count(config)
    if n_layers is None:
        raise PreflightError(
            f"model {cfg.model}: its config.json gives no layer count (none of "
            f"{', '.join(LAYER_COUNT_KEYS)}): layerdrift needs an encoder with numbered layers"
        )
    check_tokenizer_files(source, cfg.model)
    tokenizer = load_tokenizer(source, trust_remote_code=cfg.trust_remote_code)
    vocab_size = int(getattr(config, "vocab_size", 0) or len(tokenizer))
    # Fewer than half the embedding rows: the tokenizer is not this model's (or was built
    # from a few special tokens); more: its ids would index past the embedding matrix.
    if not vocab_size // 2 <= len(tokenizer) <= vocab_size:
        raise PreflightError(
            f"model {cfg.model}: its tokenizer has {len(tokenizer)} tokens but the embedding "
            f"matrix has {vocab_size} rows: the tokenizer files are missing, partial or from "
            "another model; save the model's own tokenizer beside it"
        )
    return ModelFacts(source, config.model_type, n_layers, vocab_size, len(tokenizer))


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


def check_checkpoint_labels(cfg: RunConfig) -> None:
    """SAE and feature checkpoints must be among the checkpoints fine-tuning will write."""
    planned = [label for _, label in planned_checkpoints(cfg, cfg.data.train_size)]
    if cfg.sae.enabled:
        unknown = [label for label in cfg.sae.checkpoints if label not in planned]
        if unknown:
            raise PreflightError(
                f"sae.checkpoints {unknown} are not checkpoints of this run: fine-tuning "
                f"writes {', '.join(planned)}; pick from those"
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


def preflight(cfg: RunConfig) -> ModelFacts:
    """Every check above, cheapest first; raises on the first problem, writes nothing.

    The data are checked only while the run has not prepared them yet: a resumed run reads
    its own ``data/`` splits, not the source file.
    """
    run = RunDir(cfg.run_url)
    check_run_config(run, cfg.config_hash())
    check_device(cfg.device)
    check_checkpoint_labels(cfg)
    facts = check_model(cfg)
    check_layers(cfg, facts.n_layers)
    if not data_complete(run):
        sizes = check_data(cfg)
        logger.info("preflight: data splits %s", sizes)
    logger.info(
        "preflight: model %s (%s, %d layers, %d tokens)",
        cfg.model,
        facts.model_type,
        facts.n_layers,
        facts.tokenizer_size,
    )
    return facts
