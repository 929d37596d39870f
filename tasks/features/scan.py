"""One pass over a layer's paired activations that feeds every per-layer comparison.

For each dictionary (base SAE, fine-tuned SAE, crosscoder) it collects the maximum of every
latent per probe example (for AUROCs), how often each latent fires on held-out tokens (dead
latents), and streaming FVU of every (dictionary, model) reconstruction on held-out tokens
(the transfer table).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from layerdrift.tasks.dictionary import ActivationLoader, Dictionary, FVUAccumulator
from layerdrift.tasks.features.intervals import ExampleFVU
from layerdrift.tasks.features.task_latents import segment_max

logger = logging.getLogger(__name__)

MODELS = ("base", "finetuned")


@dataclass(frozen=True)
class DictionaryView:
    """A trained dictionary as the comparison sees it: a name, what it reads, two callables.

    ``reads`` is the model whose activations it encodes (``pair`` for a crosscoder).
    ``encode`` maps raw activations [n, d_in] (pair: [n, 2, d_in]) to codes [n, d_sae];
    ``decode`` maps codes back to raw activations of the same shape as the input.
    ``decoder`` holds the decoder rows, [d_sae, d_in] (pair: [d_sae, 2, d_in]).
    """

    source: str
    reads: Literal["base", "finetuned", "pair"]
    encode: Callable[[torch.Tensor], torch.Tensor]
    decode: Callable[[torch.Tensor], torch.Tensor]
    decoder: np.ndarray

    @property
    def d_sae(self) -> int:
        """Number of latents."""
        return int(self.decoder.shape[0])

    @classmethod
    def of(cls, model: Dictionary, source: str, reads: str) -> DictionaryView:
        """A trained dictionary's view: an SAE reads one model (decoder [d_sae, d_in]), a
        crosscoder the pair (decoder [d_sae, 2, d_in], normalised units)."""
        decoder = model.decoder_directions().cpu().numpy()
        decoder = decoder if reads == "pair" else decoder[:, 0]
        return cls(source, reads, model.encode, model.decode, decoder)


@dataclass
class LayerScan:
    """What :func:`scan_layer` gathered for one layer.

    ``scores[source]`` [n_examples, d_sae]: each latent's max activation per example
    (0 for an example without scored tokens); ``fires[source]`` [d_sae]: held-out tokens on
    which the latent is non-zero; ``fvu[(source, model)]``: FVU accumulators over held-out
    tokens of that model, and ``fvu_examples[(source, model)]`` the same per example (for
    its interval); ``labels`` [n_examples]; ``heldout`` [n_examples] bool.
    """

    scores: dict[str, np.ndarray]
    fires: dict[str, np.ndarray]
    fvu: dict[tuple[str, str], FVUAccumulator]
    fvu_examples: dict[tuple[str, str], ExampleFVU]
    labels: np.ndarray
    heldout: np.ndarray
    n_heldout_tokens: int


def _apply(
    d: DictionaryView, pair: torch.Tensor, held: torch.Tensor
) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Codes [n, d_sae] of a pair batch [n, 2, d_in], and per model the held-out
    (x, x_hat) [n_held, d_in] of this dictionary's reconstruction of it."""
    if d.reads == "pair":
        f = d.encode(pair)
        x_hat = d.decode(f[held])
        return f, {m: (pair[held, i], x_hat[:, i]) for i, m in enumerate(MODELS)}
    own = MODELS.index(d.reads)
    f = d.encode(pair[:, own])
    recon = {d.reads: (pair[held, own], d.decode(f[held]))}
    x = pair[held, 1 - own]  # the SAE on the other model's activations: the transfer
    recon[MODELS[1 - own]] = (x, d.decode(d.encode(x)))
    return f, recon


def loader_layer(loader: ActivationLoader) -> int:
    """The layer a (base, fine-tuned) pair loader reads."""
    return int(loader.sources[0][1])


@torch.no_grad()
def scan_layer(
    loader: ActivationLoader,
    dictionaries: list[DictionaryView],
    batch_size: int = 4096,
    device: str | torch.device = "cpu",
    max_heldout_tokens: int | None = None,
) -> LayerScan:
    """Stream every scored token of ``loader``'s layer once through all ``dictionaries``.

    ``loader`` reads the sources (base, layer) and (fine-tuned, layer); its held-out
    tokens (the SAEs' own for the same seed and fraction; the first ``max_heldout_tokens``
    in store order, as the SAE metrics take them) give the FVUs and firing counts; all its
    tokens (minus special tokens when it excludes them) give the per-example maxima.
    """
    ds = loader.ds
    mask = loader.train_mask | loader.heldout_mask
    n_ex = ds.sizes["example"]
    heldout = loader.heldout_examples
    held_tokens = np.zeros(ds.sizes["token"], dtype=bool)
    held_tokens[np.flatnonzero(loader.heldout_mask)[:max_heldout_tokens]] = True
    example_of_token = np.asarray(ds.example_of_token.values)
    scores = {d.source: torch.zeros(n_ex, d.d_sae, device=device) for d in dictionaries}
    fires = {d.source: torch.zeros(d.d_sae, dtype=torch.int64, device=device) for d in dictionaries}
    fvu = {(d.source, m): FVUAccumulator() for d in dictionaries for m in MODELS}
    width = int(ds.sizes["hidden"])
    by_example = {key: ExampleFVU(n_ex, width, device) for key in fvu}
    n_held = 0
    desc = f"scan layer {loader_layer(loader)}"
    for a, b in tqdm(loader.chunks, desc=desc, unit="chunk", disable=None):
        keep = mask[a:b]
        if not keep.any():
            continue
        block = loader.read(a, b)[keep]
        examples = example_of_token[a:b][keep]
        held_block = held_tokens[a:b][keep]
        for s in range(0, len(block), batch_size):
            pair = torch.as_tensor(block[s : s + batch_size], device=device)
            ex = torch.as_tensor(examples[s : s + batch_size], device=device)
            held = torch.as_tensor(held_block[s : s + batch_size], device=device)
            n_held += int(held.sum())
            for d in dictionaries:
                codes, recon = _apply(d, pair, held)
                scores[d.source] = segment_max(codes.clamp_min(0), ex, n_ex, scores[d.source])
                fires[d.source] += (codes[held] > 0).sum(dim=0)
                for m in MODELS:
                    fvu[(d.source, m)].update(*recon[m])
                    by_example[(d.source, m)].update(*recon[m], ex[held])
    return LayerScan(
        scores={k: v.cpu().numpy() for k, v in scores.items()},
        fires={k: v.cpu().numpy() for k, v in fires.items()},
        fvu=fvu,
        fvu_examples=by_example,
        labels=np.asarray(ds.label.values),
        heldout=heldout,
        n_heldout_tokens=n_held,
    )
