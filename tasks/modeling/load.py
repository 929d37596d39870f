"""Loading models of any family: shape through ``AutoConfig``, the classifier, the bare model.

A family is supported when transformers has a bare model and a sequence-classification head
for it and it is not an encoder-decoder (whose hidden states come in two stacks). Decoder
classifiers (GPT-2, Llama, ...) pool the last non-pad token, so their config needs the pad
id: it is taken from the tokenizer (its eos, by the padding policy) when the config has none.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from layerdrift.tasks.modeling.resolve import ModelNotFoundError, UnsupportedModelError, hub_offline

# transformers >= 5.25 kernelizes every loaded model by default when the `kernels` package is
# installed (it is a dependency): layers such as Llama's RMSNorm may then run compiled code
# fetched from the Hub, and each train()/eval() re-binds their forward, which undoes the
# layer replays of tasks.modeling.sites and tasks.importance.replay. Every model is loaded
# with the torch code it was saved for.
NO_HUB_KERNELS = {"use_kernels": False}


@dataclass(frozen=True)
class ModelShape:
    """What the store needs to know of a model: family, depth and width.

    ``num_hidden_layers`` is L (``hidden_states`` has L + 1 entries: 0 = embeddings output);
    ``hidden_size`` is the width of every hidden state (after any embedding projection).
    """

    model_type: str
    num_hidden_layers: int
    hidden_size: int
    vocab_size: int


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports (a dropped or new head is expected, not news)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def load_config(model: str | Path, trust_remote_code: bool = False):
    """``AutoConfig`` of a resolved model name; one-line errors for missing or unknown ones."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(model), trust_remote_code=trust_remote_code)
    except OSError as error:  # missing, unreachable, or not valid JSON
        hint = " (HF_HUB_OFFLINE is set)" if hub_offline() else ""
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelNotFoundError(
            f"cannot load the config of model {str(model)!r}{hint}: {first}"
        ) from error
    except (KeyError, ValueError) as error:
        import transformers

        named = re.search(r"model type `([^`]*)`", str(error))
        what = f"model_type {named.group(1)!r}" if named else "a model_type"
        raise UnsupportedModelError(
            f"model {str(model)!r} has {what}, which transformers {transformers.__version__} "
            "does not know: fix model_type in its config.json, upgrade transformers, or pass "
            "trust_remote_code for a model that ships its own code"
        ) from error


def check_family(config, trust_remote_code: bool = False) -> None:
    """Raise :class:`UnsupportedModelError` naming the family unless it can be used."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
        MODEL_MAPPING_NAMES,
    )

    family = config.model_type
    remote = trust_remote_code and bool(getattr(config, "auto_map", None))
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModelError(
            f"model family {family!r} is an encoder-decoder: its hidden states come in two "
            "stacks, and layerdrift records one stack of layers; use an encoder or a decoder"
        )
    if not remote and family not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise UnsupportedModelError(
            f"model family {family!r} has no sequence-classification head in transformers "
            "(AutoModelForSequenceClassification), so it cannot be fine-tuned here"
        )
    if not remote and family not in MODEL_MAPPING_NAMES:
        raise UnsupportedModelError(f"model family {family!r} has no bare model (AutoModel)")


def model_shape(model: str | Path, trust_remote_code: bool = False) -> ModelShape:
    """Depth and width of a saved model, read through ``AutoConfig`` (never raw JSON), so
    DistilBERT's ``n_layers``/``dim`` and GPT-2's ``n_layer``/``n_embd`` read the same."""
    config = load_config(model, trust_remote_code).get_text_config()
    return ModelShape(
        model_type=str(config.model_type),
        num_hidden_layers=int(config.num_hidden_layers),
        hidden_size=int(config.hidden_size),
        vocab_size=int(config.vocab_size),
    )


def load_classifier(
    source: str | Path,
    tokenizer=None,
    label_names: list[str] | None = None,
    trust_remote_code: bool = False,
) -> torch.nn.Module:
    """A float32 ``AutoModelForSequenceClassification`` from ``source`` (in eval mode).

    With ``label_names`` the head gets that many labels (a new head when the sizes differ,
    as when fine-tuning starts from a pretrained model); without, it is the saved one. A
    config without ``pad_token_id`` gets the tokenizer's (needed by decoder classifiers).
    """
    from transformers import AutoModelForSequenceClassification

    config = load_config(source, trust_remote_code)
    kwargs: dict = {}
    if label_names is not None:
        kwargs = {
            "num_labels": len(label_names),
            "id2label": dict(enumerate(label_names)),
            "label2id": {name: i for i, name in enumerate(label_names)},
            "ignore_mismatched_sizes": True,
        }
    if getattr(config, "pad_token_id", None) is None and tokenizer is not None:
        kwargs["pad_token_id"] = tokenizer.pad_token_id
    with quiet_transformers():
        return AutoModelForSequenceClassification.from_pretrained(
            str(source),
            trust_remote_code=trust_remote_code,
            dtype=torch.float32,
            **NO_HUB_KERNELS,
            **kwargs,
        )


def load_encoder(model_dir: str | Path, device: torch.device) -> torch.nn.Module:
    """The bare model of a saved model (a classifier loads without its head), in eval mode
    on ``device``; its ``hidden_states`` are those of the classifier's base model."""
    from transformers import AutoModel

    with quiet_transformers():
        model = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32, **NO_HUB_KERNELS)
    return model.to(device).eval()


def forward_hidden_states(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Hidden states of every layer, shape (layer = L + 1, batch, seq, hidden)."""
    output = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    if output.hidden_states is None:
        raise UnsupportedModelError(
            f"model family {model.config.model_type!r} returned no hidden_states"
        )
    return torch.stack(output.hidden_states)
