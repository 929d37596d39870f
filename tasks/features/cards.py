"""Feature cards: the top-activating tokens of chosen latents, with their context.

A card is a JSON object (the report reads ``<run>/features/cards.json``, a list of them)::

    {"layer": 6, "source": "crosscoder", "latent": 17, "reason": "finetuned_only",
     "auroc": 0.91, "score": 0.97,
     "examples": [{"example": 42, "label": 1, "tokens": ["the", "film", ...],
                   "activations": [0.0, 1.3, ...], "max_token": 3}, ...]}

``source`` is ``base_sae``, ``finetuned_sae`` or ``crosscoder``; ``reason`` is
``task_specific`` (AUROC furthest from 0.5), ``base_only`` / ``finetuned_only`` (crosscoder
latents with the most one-sided decoder norms) or ``unmatched`` (fine-tuned SAE latents with
the lowest best decoder cosine to the base SAE); ``score`` is what the latent was ranked by.
``tokens`` is a window of the example's tokens around its top token ``max_token`` (an index
into ``tokens``), with the latent's activation on each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from layerdrift.tasks.dictionary import ActivationLoader
from layerdrift.tasks.features.scan import MODELS, DictionaryView


@dataclass(frozen=True)
class CardPick:
    """A latent chosen for a card and why."""

    source: str
    latent: int
    reason: str
    auroc: float
    score: float


def top_latents(score: np.ndarray, alive: np.ndarray, n: int, largest: bool = True) -> list[int]:
    """Indices of the ``n`` alive latents with the largest (or smallest) ``score`` [d_sae]."""
    candidates = np.flatnonzero(alive & np.isfinite(score))
    order = np.argsort(score[candidates], kind="stable")
    if largest:
        order = order[::-1]
    return [int(i) for i in candidates[order[:n]]]


def pick_latents(
    auroc: dict[str, np.ndarray],
    alive: dict[str, np.ndarray],
    rel_norm: np.ndarray | None,
    unmatched_cosine: np.ndarray | None,
    n: int,
    base_only_below: float,
    finetuned_only_above: float,
) -> list[CardPick]:
    """Choose card latents: the most task-specific per source, the most changed ones.

    ``auroc``/``alive`` map a source to [d_sae] arrays; ``rel_norm`` [d_crosscoder] is the
    crosscoder's relative decoder norm; ``unmatched_cosine`` [d_sae_ft] the fine-tuned SAE
    latents' best cosine with the base SAE.
    """
    picks = []
    for source, values in auroc.items():
        extremeness = np.abs(values - 0.5)
        for i in top_latents(extremeness, alive[source], n):
            picks.append(CardPick(source, i, "task_specific", float(values[i]), extremeness[i]))
    if rel_norm is not None and "crosscoder" in auroc:
        cc_alive, cc_auroc = alive["crosscoder"], auroc["crosscoder"]
        for reason, side, largest in (
            ("base_only", rel_norm < base_only_below, False),
            ("finetuned_only", rel_norm > finetuned_only_above, True),
        ):
            for i in top_latents(rel_norm, cc_alive & side, n, largest=largest):
                picks.append(CardPick("crosscoder", i, reason, float(cc_auroc[i]), rel_norm[i]))
    if unmatched_cosine is not None and "finetuned_sae" in auroc:
        ft_alive, ft_auroc = alive["finetuned_sae"], auroc["finetuned_sae"]
        for i in top_latents(unmatched_cosine, ft_alive, n, largest=False):
            cos = float(unmatched_cosine[i])
            picks.append(CardPick("finetuned_sae", i, "unmatched", float(ft_auroc[i]), cos))
    return picks


@torch.no_grad()
def latent_on_example(
    loader: ActivationLoader, d: DictionaryView, example: int, device="cpu"
) -> np.ndarray:
    """All latents of ``d`` on every token of one example: [token_count, d_sae]."""
    table = loader.examples
    start, count = int(table["token_start"][example]), int(table["token_count"][example])
    pair = torch.as_tensor(loader.read(start, start + count), device=device)
    x = pair if d.reads == "pair" else pair[:, MODELS.index(d.reads)]
    return d.encode(x).cpu().numpy()


def build_card(
    loader: ActivationLoader,
    d: DictionaryView,
    pick: CardPick,
    scores: np.ndarray,
    layer: int,
    n_examples: int = 5,
    context: int = 6,
    device="cpu",
) -> dict:
    """The card of one latent: its top ``n_examples`` examples by max activation.

    ``scores`` [n_examples_total, d_sae] are the per-example maxima from the layer scan;
    tokens the loader leaves out (special tokens, when excluded) cannot be the top token.
    """
    table = loader.examples
    scored = loader.train_mask | loader.heldout_mask
    column = scores[:, pick.latent]
    top = [int(e) for e in np.argsort(-column, kind="stable")[:n_examples] if column[e] > 0]
    examples = []
    for e in top:
        acts = latent_on_example(loader, d, e, device)[:, pick.latent]
        start, count = int(table["token_start"][e]), int(table["token_count"][e])
        acts = np.where(scored[start : start + count], acts, 0.0)
        peak = int(np.argmax(acts))
        lo, hi = max(0, peak - context), min(count, peak + context + 1)
        examples.append(
            {
                "example": e,
                "label": int(table["label"][e]),
                "tokens": [str(t) for t in table["token_text"][start + lo : start + hi]],
                "activations": [round(float(a), 4) for a in acts[lo:hi]],
                "max_token": peak - lo,
            }
        )
    return {
        "layer": int(layer),
        "source": pick.source,
        "latent": pick.latent,
        "reason": pick.reason,
        "auroc": round(pick.auroc, 4),
        "score": round(float(pick.score), 4),
        "examples": examples,
    }
