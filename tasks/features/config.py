"""Defaults of the feature-comparison stage, until RunConfig grows a ``features`` section.

:meth:`FeaturesConfig.from_run_config` reads ``cfg.features`` when the run config has one
(same field names), so adding that section later needs no change here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal


@dataclass(frozen=True)
class FeaturesConfig:
    """How base and fine-tuned features are compared, per layer."""

    enabled: bool = True
    """Run the stage at all."""
    base: str = "base"
    """Checkpoint label of the reference model (its SAE must exist)."""
    finetuned: str = "final"
    """Checkpoint label of the fine-tuned model (its SAE must exist)."""
    layers: tuple[int, ...] | None = None
    """Layers to compare; None = the layers of the SAE stage."""
    match_threshold: float = 0.7
    """Decoder cosine at or above which two latents count as the same feature."""
    base_only_below: float = 0.1
    """Crosscoder relative decoder norm ||d_ft|| / (||d_base|| + ||d_ft||) below this: base-only."""
    finetuned_only_above: float = 0.9
    """Relative decoder norm above this: fine-tuned-only; in between: shared."""
    auroc_high: float = 0.75
    """A latent is task-specific when its AUROC is >= this ..."""
    auroc_low: float = 0.25
    """... or <= this."""
    architecture: Literal["topk", "relu"] = "topk"
    """Crosscoder activation: TopK (Gao et al. 2024) or ReLU + L1 on decoder norms."""
    expansion_factor: int = 4
    """Crosscoder d_sae = expansion_factor * hidden."""
    k: int = 32
    """Active crosscoder latents per token (TopK)."""
    l1_coefficient: float = 1e-3
    """L1 weight on activations times summed decoder norms (ReLU variant; the loss is the
    mean squared error per element of normalised activations, as the SAEs')."""
    learning_rate: float = 2e-4
    """Adam learning rate of the crosscoder."""
    warmup_steps: int = 50
    """Linear learning-rate warm-up steps."""
    batch_size: int = 4096
    """Token pairs per crosscoder step."""
    token_budget: int = 2_000_000
    """Training token pairs per crosscoder."""
    checkpoint_every: int = 200
    """Steps between resumable crosscoder saves."""
    dead_tokens: int = 200_000
    """A crosscoder latent unfired for this many training tokens is dead (gets AuxK)."""
    hist_bins: int = 20
    """Bins of the match-cosine and relative-norm histograms."""
    card_latents: int = 3
    """Feature cards per (source, reason)."""
    card_examples: int = 5
    """Top-activating examples per card."""
    card_context: int = 6
    """Tokens of context on each side of a card's top token."""
    seed: int = 0
    """Seed for crosscoder initialisation and data order."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.base_only_below < self.finetuned_only_above <= 1.0:
            raise ValueError(
                "need 0 <= base_only_below < finetuned_only_above <= 1, got "
                f"{self.base_only_below} and {self.finetuned_only_above}"
            )
        if not 0.0 <= self.auroc_low < 0.5 < self.auroc_high <= 1.0:
            raise ValueError(
                f"need 0 <= auroc_low < 0.5 < auroc_high <= 1, got {self.auroc_low}, "
                f"{self.auroc_high}"
            )
        if not -1.0 <= self.match_threshold <= 1.0:
            raise ValueError(f"match_threshold is a cosine in [-1, 1], got {self.match_threshold}")
        if self.base == self.finetuned:
            raise ValueError(f"base and finetuned are both {self.base!r}: compare two checkpoints")
        if self.architecture not in ("topk", "relu"):
            raise ValueError(f"architecture must be 'topk' or 'relu', got {self.architecture!r}")

    @classmethod
    def from_run_config(cls, cfg: Any) -> FeaturesConfig:
        """The run's ``features`` section when it has one, else these defaults.

        Without a section, the crosscoder follows the SAE section's optimisation settings
        (architecture, expansion, k, L1, learning rate, warm-up, batch, budget, dead tokens,
        seed). The held-out split, special-token filter and shuffle buffer always come from
        the SAE section (:func:`tasks.features.train.pair_loader`), so the transfer FVUs are
        measured on tokens no SAE was trained on.
        """
        values: dict[str, Any] = {}
        sae = getattr(cfg, "sae", None)
        if sae is not None:
            shared = ("expansion_factor", "k", "l1_coefficient", "learning_rate", "warmup_steps")
            shared += ("batch_size", "token_budget", "checkpoint_every", "dead_tokens")
            shared += ("seed", "architecture")
            values = {name: getattr(sae, name) for name in shared if hasattr(sae, name)}
        section = getattr(cfg, "features", None)
        if section is not None:
            data = section.model_dump() if hasattr(section, "model_dump") else dict(section)
            names = {f.name for f in fields(cls)}
            # Unset (None) crosscoder settings keep following the SAE section.
            values.update(
                {
                    k: tuple(v) if isinstance(v, list) else v
                    for k, v in data.items()
                    if k in names and (v is not None or k == "layers")
                }
            )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)
