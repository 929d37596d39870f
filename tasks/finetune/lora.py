"""LoRA fine-tuning through ``peft``: wrap a classifier, save it merged, keep the adapter to resume.

The classifier is wrapped with low-rank updates on the modules :func:`lora_plan` resolves
and its head in peft's ``modules_to_save`` (trained whole); everything else is frozen.
Checkpoints are written merged (peft's ``merge_and_unload`` on a copy, so training goes on
unmerged), in the same layout as full fine-tuning. The trainable tensors (LoRA matrices and
head) go into the training state, from which a killed run resumes.
"""

from __future__ import annotations

import copy
import importlib.util
import logging

import torch
from torch import nn

from layerdrift.config import LoraConfig
from layerdrift.tasks.modeling import LoraPlan, lora_plan

logger = logging.getLogger(__name__)

PEFT_MISSING = (
    "finetune.method = 'lora' needs the peft package: pip install 'layerdrift[peft]' "
    "(or pip install peft)"
)


def require_peft() -> None:
    """Raise ``ImportError`` naming the install command when ``peft`` is missing."""
    if importlib.util.find_spec("peft") is None:
        raise ImportError(PEFT_MISSING)


def wrap_lora(model: nn.Module, lora: LoraConfig) -> tuple[nn.Module, LoraPlan]:
    """``model`` (a sequence classifier) as a peft model: LoRA on the planned targets, the
    head in ``modules_to_save``, every other parameter frozen. Draws LoRA's initial ``A``
    from the torch RNG (seeded by the caller). Returns the peft model and the plan."""
    require_peft()
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType, get_peft_model
    from transformers.pytorch_utils import Conv1D

    plan = lora_plan(model, lora.target_modules)
    # GPT-2's Conv1D stores weights transposed (in, out); peft needs to be told.
    transposed = any(isinstance(model.get_submodule(path), Conv1D) for path in plan.targets)
    config = PeftLoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(plan.targets),
        modules_to_save=list(plan.head),
        fan_in_fan_out=transposed,
    )
    wrapped = get_peft_model(model, config)
    logger.info(
        "LoRA rank %d on %d modules, head %s trained whole", lora.rank, len(plan.targets),
        list(plan.head),
    )  # fmt: skip
    return wrapped, plan


def lora_metrics(model: nn.Module, plan: LoraPlan, lora: LoraConfig, total: int) -> dict:
    """The ``metrics.json`` entries of a LoRA fine-tune: ``trainable_parameters`` of the
    wrapped ``model`` (LoRA matrices and head), ``total_parameters`` of the plain model
    (``total``, as a merged checkpoint has), and the LoRA settings and modules."""
    return {
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_parameters": total,
        "lora_rank": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "lora_target_modules": list(plan.targets),
        "lora_head_modules": list(plan.head),
    }


def merged_copy(model: nn.Module) -> nn.Module:
    """A plain classifier with the LoRA updates merged into its weights and the trained head
    in place; ``model`` itself is left as it was (unmerged, still training)."""
    return copy.deepcopy(model).merge_and_unload()


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trained tensors of a peft model (LoRA matrices and the head), by peft's names."""
    from peft import get_peft_model_state_dict

    return {
        name: tensor.detach().clone() for name, tensor in get_peft_model_state_dict(model).items()
    }


def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put back tensors saved by :func:`adapter_state`; raise if any trained one is missing."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state)
    missing = [
        name for name in result.missing_keys if "lora_" in name or ".modules_to_save." in name
    ]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"the saved LoRA state does not fit this model: missing {missing[:3]}, "
            f"unexpected {list(result.unexpected_keys)[:3]}"
        )
