"""Up-front checks of given checkpoints: they load safely and come from one base model."""

from __future__ import annotations

from layerdrift.tasks.imports.load import check_safe_weights
from layerdrift.tasks.imports.sources import (
    CheckpointImportError,
    GivenCheckpoint,
    model_source,
    tokenizer_source,
)
from layerdrift.tasks.modeling import load_tokenizer, model_shape, tokenizer_fingerprint


def _identity(item: GivenCheckpoint, trust_remote_code: bool) -> dict[str, object]:
    """Tokenizer fingerprint, layer count and hidden size of one given checkpoint (an
    adapter's shape is its base's)."""
    check_safe_weights(item.source if item.is_adapter else model_source(item))
    shape = model_shape(model_source(item), trust_remote_code)
    tokenizer = load_tokenizer(tokenizer_source(item), trust_remote_code)
    return {
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "layers": shape.num_hidden_layers,
        "hidden size": shape.hidden_size,
    }


def check_given_checkpoints(items: list[GivenCheckpoint], trust_remote_code: bool = False) -> None:
    """Every checkpoint must share the reference's tokenizer, depth and hidden size.

    Raises :class:`CheckpointImportError` with one line naming each checkpoint that differs
    and how; reads configs and tokenizers only (no weights).
    """
    reference = items[0]
    expected = _identity(reference, trust_remote_code)
    problems = []
    for item in items[1:]:
        found = _identity(item, trust_remote_code)
        for key, value in found.items():
            if value != expected[key]:
                problems.append(f"{item.label!r} has {key} {value} (vs {expected[key]})")
    if problems:
        raise CheckpointImportError(
            f"checkpoints differ from the reference {reference.label!r} ({reference.source}): "
            f"{'; '.join(problems)}: every checkpoint must be a fine-tune of one base model "
            "(same tokenizer, layers and hidden size)"
        )
