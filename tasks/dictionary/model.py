"""Sparse dictionaries behind one protocol: SAEs and crosscoders, one class per architecture.

A dictionary reads the activations of ``n_models`` models at once, ``x`` [B, n_models,
d_model] in the models' own units (``n_models = 1``: an SAE, which also takes [B, d_model];
``n_models = 2``: a crosscoder of base and fine-tuned, Lindsey et al. 2024). Inside, each
model's activations are scaled by ``scale[m]`` (chosen so that E‖scale·x_m‖² = d_model) and
concatenated into ``xn`` [B, d_in] with d_in = n_models · d_model; on those the dictionary
is an ordinary SAE with SAELens's parameter names:

    pre = (xn − b_dec) W_enc + b_enc,   f = act(pre),   x̂n = f W_dec + b_dec

``W_enc`` [d_in, d_sae], ``b_enc`` [d_sae], ``W_dec`` [d_sae, d_in], ``b_dec`` [d_in]. A
crosscoder latent's decoder row splits per model as ``W_dec.view(d_sae, n_models,
d_model)``. The loss is the mean squared error per element of ``xn`` plus the
architecture's sparsity term.

Each architecture is a subclass registered under the name ``cfg.json`` records
(:data:`ARCHITECTURES`); it supplies ``activate`` (the inference code), ``objective`` (the
training loss, written on sparse (token, latent) pairs, :mod:`.sparse`) and what its file
needs. The trainer protocol (:mod:`.train`) is ``loss(x, dead_mask)``, ``after_backward()``,
``after_step()`` and ``d_sae``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from layerdrift.config import ARCHITECTURE_NAMES

Parts = dict[str, float]


@dataclass(frozen=True)
class DictionarySpec:
    """Shape and loss settings of one dictionary (what rebuilds it from its file)."""

    d_model: int
    d_sae: int
    architecture: str = "topk"
    n_models: int = 1
    k: int = 32  # topk, batchtopk: active latents per token (batchtopk: on average)
    aux_coefficient: float = 1 / 32  # topk, batchtopk: AuxK weight (Gao et al. 2024)
    l1_coefficient: float = 1e-3  # relu
    l0_coefficient: float = 1.0  # jumprelu
    bandwidth: float = 0.05  # jumprelu: width of the straight-through window
    init_threshold: float = 0.01  # jumprelu: initial threshold

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(unknown_architecture(self.architecture))
        if min(self.d_model, self.d_sae, self.n_models) < 1:
            raise ValueError(f"d_model, d_sae and n_models must be positive, got {self}")

    @property
    def d_in(self) -> int:
        """Width of the concatenated input: ``n_models · d_model``."""
        return self.n_models * self.d_model

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)


def unknown_architecture(name: str) -> str:
    """The error line for an architecture name no class is registered under."""
    return f"unknown dictionary architecture {name!r}: use one of {', '.join(ARCHITECTURES)}"


class Dictionary(nn.Module, ABC):
    """The shared part of every architecture: parameters, normalisation, encode, decode."""

    name: ClassVar[str]  # layerdrift's architecture name, the registry key
    saelens_architecture: ClassVar[str]  # the inference architecture SAELens loads it as
    unit_norm_decoder: ClassVar[bool] = False  # decoder rows held at unit norm in training
    # Clip the gradient's norm to this, measured on the loss times d_in (the squared error
    # summed over d_in, SAELens's scale, where SAELens clips every SAE at 1); None: never.
    max_grad_norm: ClassVar[float | None] = None
    hyperparameters: ClassVar[tuple[str, ...]] = ()  # the spec fields its loss reads

    def __init__(self, spec: DictionarySpec, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if spec.architecture != self.name:
            raise ValueError(f"a {type(self).__name__} cannot hold a {spec.architecture!r} spec")
        self.spec = spec
        w_dec = torch.randn(spec.d_sae, spec.d_in, generator=generator)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        # Encoder = decoder transpose at init, kept in that memory layout ([d_sae, d_in]
        # rows, viewed as [d_in, d_sae]): the sparse backward reads and writes it by latent
        # without transposing copies (:mod:`.sparse`); dense products take either layout.
        self.W_enc = nn.Parameter(w_dec.clone().t())
        self.b_enc = nn.Parameter(torch.zeros(spec.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(spec.d_in))
        self.register_buffer("scale", torch.ones(spec.n_models))

    # The architecture's part --------------------------------------------------------------

    @abstractmethod
    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """Inference code [B, d_sae] (normalised units) from pre-activations [B, d_sae]."""

    @abstractmethod
    def objective(
        self, xn: torch.Tensor, dead_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, Parts, torch.Tensor]:
        """Training loss on normalised ``xn`` [B, d_in]: (loss, parts, fired [d_sae] bool)."""

    def latent_tensors(self) -> dict[str, torch.Tensor]:
        """Extra per-latent tensors of the file, in code units (e.g. JumpReLU thresholds)."""
        return {}

    def load_latent_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Set what :meth:`latent_tensors` returns from the file's tensors (code units)."""

    def rescale_latents(self, factor: torch.Tensor) -> None:
        """Multiply each latent's code by ``factor`` [d_sae] (decoder rows divided by it)."""
        with torch.no_grad():
            self.W_enc.mul_(factor)
            self.b_enc.mul_(factor)
            self.W_dec.div_(factor[:, None])

    # Shared -------------------------------------------------------------------------------

    @property
    def d_sae(self) -> int:
        """Number of latents."""
        return self.spec.d_sae

    @property
    def code_scale(self) -> torch.Tensor:
        """Codes are reported in the models' units for an SAE (normalised code / scale) and in
        normalised units for a crosscoder, whose models have separate scales: []."""
        return self.scale[0] if self.spec.n_models == 1 else self.scale.new_ones(())

    @torch.no_grad()
    def init_from_sample(self, x: torch.Tensor) -> None:
        """Set ``scale`` (E‖x_m·scale_m‖² = d_model per model) and ``b_dec`` (the mean).

        ``x`` is [n, n_models, d_model] (or [n, d_model] for an SAE).
        """
        x = self._models_axis(x).to(self.b_dec.device, torch.float64)
        mean_sq = x.pow(2).sum(dim=2).mean(dim=0).clamp_min(1e-12)
        self.scale.copy_((self.spec.d_model / mean_sq).sqrt().float())
        self.b_dec.copy_((x * self.scale.double()[None, :, None]).mean(dim=0).flatten().float())

    def _models_axis(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as [B, n_models, d_model] (an SAE also takes [B, d_model])."""
        if x.dim() == 2 and self.spec.n_models == 1:
            x = x[:, None]
        if tuple(x.shape[1:]) != (self.spec.n_models, self.spec.d_model):
            raise ValueError(
                f"a dictionary over {self.spec.n_models} x {self.spec.d_model} activations "
                f"got a batch of shape {tuple(x.shape)}"
            )
        return x

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Raw activations [B, (n_models,) d_model] to normalised ``xn`` [B, d_in]."""
        x = self._models_axis(x)
        return (x * self.scale[None, :, None]).reshape(len(x), self.spec.d_in)

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations [B, d_sae] of raw activations."""
        return torch.addmm(self.b_enc, self.normalise(x) - self.b_dec, self.W_enc)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Sparse code [B, d_sae] of raw ``x`` [B, (n_models,) d_model] (see :attr:`code_scale`)."""
        return self.activate(self.pre_activations(x)) / self.code_scale

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction in raw units of code ``f`` [B, d_sae]: [B, d_model] for an SAE,
        [B, n_models, d_model] for a crosscoder."""
        xn = torch.addmm(self.b_dec, f * self.code_scale, self.W_dec)
        x = xn.view(len(f), self.spec.n_models, self.spec.d_model) / self.scale[None, :, None]
        return x[:, 0] if self.spec.n_models == 1 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of raw ``x``: ``decode(encode(x))``."""
        return self.decode(self.encode(x))

    def decoder_directions(self) -> torch.Tensor:
        """Decoder rows per model, normalised units: [d_sae, n_models, d_model] (detached)."""
        return self.W_dec.detach().view(self.d_sae, self.spec.n_models, self.spec.d_model)

    def loss(
        self, x: torch.Tensor, dead_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Parts, torch.Tensor]:
        """Training loss on raw ``x`` [B, (n_models,) d_model]; ``dead_mask`` [d_sae] marks
        latents the trainer counts as dead. Returns (loss, parts, fired [d_sae] bool)."""
        return self.objective(self.normalise(x), dead_mask)

    @torch.no_grad()
    def after_backward(self) -> None:
        """Unit-norm decoders: drop the gradient component parallel to each decoder row.
        Then clip the gradient at :attr:`max_grad_norm` (in the loss's units, / d_in)."""
        if self.unit_norm_decoder and self.W_dec.grad is not None:
            w, g = self.W_dec, self.W_dec.grad
            g -= (g * w).sum(dim=1, keepdim=True) * w
        if self.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.parameters(), self.max_grad_norm / self.spec.d_in)

    @torch.no_grad()
    def after_step(self) -> None:
        """Unit-norm decoders: renormalise the decoder rows after the optimizer step."""
        if self.unit_norm_decoder:
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def fold_decoder_norms(self) -> None:
        """Bring every decoder row to unit norm without changing any output or loss.

        Each latent's code is multiplied by its decoder norm (encoder column, bias and
        thresholds alike), as SAELens's ``fold_W_dec_norm`` does; the L1 penalty on
        f·‖d‖ and the L0 penalty are invariant to it.
        """
        self.rescale_latents(self.W_dec.norm(dim=1).clamp_min(1e-12))


ARCHITECTURES: dict[str, type[Dictionary]] = {}


def register(cls: type[Dictionary]) -> type[Dictionary]:
    """Class decorator: make ``cls`` the architecture named ``cls.name``."""
    if cls.name not in ARCHITECTURE_NAMES:
        raise ValueError(f"{cls.name!r} is not one of the config's {ARCHITECTURE_NAMES}")
    ARCHITECTURES[cls.name] = cls
    return cls


def build(spec: DictionarySpec, generator: torch.Generator | None = None) -> Dictionary:
    """A freshly initialised dictionary of ``spec.architecture``."""
    try:
        cls = ARCHITECTURES[spec.architecture]
    except KeyError:
        raise ValueError(unknown_architecture(spec.architecture)) from None
    return cls(spec, generator)
