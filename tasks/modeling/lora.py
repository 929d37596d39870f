"""Where LoRA goes in each family: default target modules, their paths, the head kept whole.

LoRA (Hu et al. 2021) adapts the attention's query and value projections by default, as
the paper does for its GLUE runs; families that fuse query, key and value into one matrix
(GPT-2's ``c_attn``, ModernBERT's ``Wqkv``) adapt that matrix. A target is a module name or
a dotted-path suffix (peft's rule for a list of names: ``name == target`` or
``name.endswith("." + target)``), so ``encoder.layer.5.attention.self.query`` picks one
layer's query. Targets are resolved here to full module paths, outside the head: the head
(every parameter the logits depend on beyond ``hidden_states[L]``) trains whole instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from layerdrift.tasks.modeling.params import head_parameters
from layerdrift.tasks.modeling.resolve import UnsupportedModelError

# Module names of each supported family's attention projections, checked against tiny
# models of every family (tests/test_families.py).
DEFAULT_LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "albert": ("query", "value"),
    "bert": ("query", "value"),
    "deberta-v2": ("query_proj", "value_proj"),
    "distilbert": ("q_lin", "v_lin"),
    "electra": ("query", "value"),
    "gpt2": ("c_attn",),
    "llama": ("q_proj", "v_proj"),
    "modernbert": ("Wqkv",),
    "mpnet": ("q", "v"),
    "roberta": ("query", "value"),
}


class LoraTargetError(UnsupportedModelError):
    """LoRA has no module to adapt: no default for the family, or a name matching nothing."""


@dataclass(frozen=True)
class LoraPlan:
    """What a LoRA fine-tune of one classifier changes.

    ``targets`` are the full module paths that get low-rank updates; ``head`` the module
    paths trained whole (peft's ``modules_to_save``), each the largest module holding only
    head parameters (``bert.pooler``, ``classifier``).
    """

    targets: tuple[str, ...]
    head: tuple[str, ...]


def _adaptable(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, nn.Linear | nn.Embedding | Conv1D)


def _matches(path: str, target: str) -> bool:
    return path == target or path.endswith(f".{target}")


def _head_modules(model: nn.Module, head: set[str]) -> tuple[str, ...]:
    """The largest modules whose parameters are all in ``head`` (names of parameters)."""

    def all_head(path: str) -> bool:
        module = model.get_submodule(path)
        return all(f"{path}.{name}" in head for name, _ in module.named_parameters())

    owners = set()
    for name in head:
        path = name.rpartition(".")[0]
        while "." in path and all_head(path.rpartition(".")[0]):
            path = path.rpartition(".")[0]
        owners.add(path)
    return tuple(sorted(owners))


def lora_plan(model: nn.Module, targets: tuple[str, ...] | None = None) -> LoraPlan:
    """Resolve LoRA ``targets`` (None: the family's default) on a sequence classifier.

    Raises :class:`LoraTargetError` when the family has no default and none is given, or
    when a target names no linear or embedding module outside the head. One traced pass on
    8 tokens finds the head (:func:`head_parameters`).
    """
    family = str(model.config.model_type)
    head = _head_modules(model, set(head_parameters(model)))
    candidates = [
        path
        for path, module in model.named_modules()
        if _adaptable(module)
        and not any(_matches(path, h) or path.startswith(f"{h}.") for h in head)
    ]
    suggestion = ", ".join(sorted({path.rpartition(".")[2] for path in candidates}))
    if targets is None:
        targets = DEFAULT_LORA_TARGETS.get(family)
        if targets is None:
            raise LoraTargetError(
                f"finetune.method = 'lora' has no default target modules for model family "
                f"{family!r}: set finetune.lora.target_modules, e.g. to its attention "
                f"projections among: {suggestion}"
            )
    unmatched = [t for t in targets if not any(_matches(path, t) for path in candidates)]
    if unmatched:
        raise LoraTargetError(
            f"finetune.lora.target_modules {unmatched} name no linear or embedding module of "
            f"model family {family!r} outside its classification head: use names among "
            f"{suggestion} (or a dotted-path suffix of one)"
        )
    chosen = tuple(path for path in candidates if any(_matches(path, t) for t in targets))
    return LoraPlan(targets=chosen, head=head)
