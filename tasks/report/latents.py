"""Per-latent data of every dictionary for the explorer's latent browser.

For each layer with dictionaries (the base SAE, the fine-tuned SAE, the crosscoder of the
two) the probe tokens of that layer stream through all of them twice:

1. per latent: its maximum on every example (giving the AUROC against the label, as
   :func:`tasks.features.task_latents.latent_auroc` defines it), how often it fires, and its
   largest activation;
2. per latent: a histogram of its non-zero activations over (0, max], and the activations
   around the peak token of its top examples (largest maximum) and bottom examples
   (smallest non-zero maximum).

Tokens the dictionaries were not trained on (special tokens, when ``sae.exclude_special``)
count as zero everywhere. Each SAE latent's partner is the other SAE's latent with the
highest decoder cosine; crosscoder latents carry their relative decoder norm and group.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from layerdrift.config import RunConfig
from layerdrift.storage.rundir import RunDir
from layerdrift.storage.saes import sae_exists
from layerdrift.tasks.dictionary import load_dictionary
from layerdrift.tasks.features.crosscoder import classify_latents, relative_norms
from layerdrift.tasks.features.matching import decoder_cosines
from layerdrift.tasks.features.task_latents import latent_auroc, segment_max

logger = logging.getLogger(__name__)

TOP, BOTTOM, CONTEXT, HIST_BINS = 5, 3, 8, 16
BLOCK_TOKENS = 4096
# The first pass's codes are kept (sparse) for the second while they fit here: the second
# pass then neither reads nor encodes again. The default run's layer: 27k tokens at L0 ≈ 60
# in three dictionaries, about 100 MB.
KEEP_CODES_BYTES = 512 * 2**20
SOURCES = ("base_sae", "finetuned_sae", "crosscoder")


@dataclass
class LatentTable:
    """What the explorer shows of one dictionary at one layer; arrays over its d_sae latents.

    ``examples``/``peaks`` [d_sae, TOP + BOTTOM]: example index (-1: none) and the position
    of the peak token in it; ``windows`` [d_sae, TOP + BOTTOM, 2·CONTEXT + 1]: activations
    at positions peak - CONTEXT … peak + CONTEXT (0 outside the example); ``hist``
    [d_sae, HIST_BINS]: active tokens per bin of (0, max_act]. ``partner``/``partner_cosine``
    for SAEs, ``relative_norm``/``group`` for the crosscoder, else None.
    """

    source: str
    layer: int
    auroc: np.ndarray
    density: np.ndarray
    max_act: np.ndarray
    hist: np.ndarray
    examples: np.ndarray
    peaks: np.ndarray
    windows: np.ndarray
    partner: np.ndarray | None = None
    partner_cosine: np.ndarray | None = None
    relative_norm: np.ndarray | None = None
    group: np.ndarray | None = None


Encoder = Callable[[torch.Tensor], torch.Tensor]  # pair [n, 2, d_in] -> codes [n, d_sae]


def example_blocks(starts: np.ndarray, counts: np.ndarray, size: int) -> list[tuple[int, int]]:
    """Token ranges [a, b) of whole examples, each about ``size`` tokens (at least one)."""
    blocks, first = [], 0
    ends = starts + counts
    while first < len(starts):
        last = int(np.searchsorted(ends, starts[first] + size, side="right"))
        last = max(last, first + 1)
        blocks.append((int(starts[first]), int(ends[last - 1])))
        first = last
    return blocks


def pick_examples(per_example_max: np.ndarray) -> np.ndarray:
    """Top and bottom examples of every latent from maxima [n_ex, d_sae]: [d_sae, K].

    Top: the ``TOP`` largest maxima; bottom: the ``BOTTOM`` smallest non-zero maxima not in
    the top. -1 fills slots without an active example.
    """
    n_ex, d_sae = per_example_max.shape
    out = np.full((d_sae, TOP + BOTTOM), -1, dtype=np.int64)
    order = np.argsort(-per_example_max, axis=0, kind="stable")  # [n_ex, d_sae]
    active = (per_example_max > 0).sum(axis=0)
    for j in range(d_sae):
        ranked = order[: active[j], j]
        top = ranked[:TOP]
        bottom = ranked[TOP:][::-1][:BOTTOM]
        out[j, : len(top)] = top
        out[j, TOP : TOP + len(bottom)] = bottom
    return out


class _Pass:
    """Reads example-aligned blocks of (base, fine-tuned) activations at one layer."""

    def __init__(self, store: xr.Dataset, pair: list[str], layer: int, scored: np.ndarray):
        self.x = store.activations.sel(checkpoint=pair, layer=layer)
        self.scored = scored
        self.starts = np.asarray(store.token_start.values)
        self.counts = np.asarray(store.token_count.values)
        self.example_of_token = np.asarray(store.example_of_token.values)

    def blocks(self, desc: str):
        """Yield (a, b, pair): token range and activations [b - a, 2, d_in] (float32)."""
        ranges = example_blocks(self.starts, self.counts, BLOCK_TOKENS)
        for a, b in tqdm(ranges, desc=desc, unit="block", disable=None):
            pair = np.asarray(self.x.isel(token=slice(a, b)).values, np.float32)
            yield a, b, torch.from_numpy(np.ascontiguousarray(pair.transpose(1, 0, 2)))


@torch.no_grad()
def scan_dictionaries(
    data: _Pass, encoders: dict[str, Encoder], labels: np.ndarray, layer: int
) -> dict[str, LatentTable]:
    """Both passes over one layer for every dictionary in ``encoders``."""
    n_ex = len(data.starts)
    maxima: dict[str, torch.Tensor] = {}
    fires: dict[str, torch.Tensor] = {}
    n_scored = max(int(data.scored.sum()), 1)
    kept: list[tuple[int, int, dict[str, torch.Tensor]]] | None = []
    kept_bytes = 0
    for a, b, pair in data.blocks(f"latents layer {layer} (1/2)"):
        keep = torch.from_numpy(data.scored[a:b])
        ex = torch.from_numpy(data.example_of_token[a:b].astype(np.int64))
        sparse: dict[str, torch.Tensor] = {}
        for name, encode in encoders.items():
            codes = encode(pair).clamp_min(0) * keep[:, None]
            maxima[name] = segment_max(codes, ex, n_ex, maxima.get(name))
            fires[name] = fires.get(name, 0) + (codes > 0).sum(dim=0)
            if kept is not None:
                sparse[name] = codes.to_sparse()
                kept_bytes += sparse[name].values().numel() * 20  # value and two indices
        if kept is not None and kept_bytes > KEEP_CODES_BYTES:
            kept = None  # too many to keep: the second pass encodes again
        elif kept is not None:
            kept.append((a, b, sparse))
    tables = {}
    for name in encoders:
        per_example = np.nan_to_num(maxima[name].numpy(), neginf=0.0)
        tables[name] = LatentTable(
            source=name,
            layer=layer,
            auroc=latent_auroc(per_example, labels)[0],
            density=fires[name].numpy() / n_scored,
            max_act=per_example.max(axis=0),
            hist=np.zeros((per_example.shape[1], HIST_BINS), dtype=np.int64),
            examples=pick_examples(per_example),
            peaks=np.zeros((per_example.shape[1], TOP + BOTTOM), dtype=np.int64),
            windows=np.zeros((per_example.shape[1], TOP + BOTTOM, 2 * CONTEXT + 1), np.float32),
        )
    for a, b, codes_of in kept if kept is not None else _encoded(data, encoders, layer):
        for name in encoders:
            _histogram(tables[name], codes_of[name])
            _windows(tables[name], codes_of[name], a, b, data.starts, data.counts)
    return tables


def _encoded(data: _Pass, encoders: dict[str, Encoder], layer: int):
    """The second pass when the first pass's codes were too many to keep: read and encode
    every block again; yields (a, b, codes (sparse) by dictionary name)."""
    for a, b, pair in data.blocks(f"latents layer {layer} (2/2)"):
        keep = torch.from_numpy(data.scored[a:b])
        yield (
            a,
            b,
            {
                name: (encode(pair).clamp_min(0) * keep[:, None]).to_sparse()
                for name, encode in encoders.items()
            },
        )


def _histogram(table: LatentTable, codes: torch.Tensor) -> None:
    """Add the active entries of ``codes`` (sparse COO [n, d_sae], the non-zero entries
    only) to ``table.hist``. Read from the sparse entries: finding them again in the dense
    block (``np.nonzero`` over n × d_sae) took 10% of the default run's report."""
    cols = codes.indices()[1].numpy()
    values = codes.values().numpy()
    scale = np.where(table.max_act > 0, table.max_act, 1.0)
    bins = np.minimum((values / scale[cols] * HIST_BINS).astype(np.int64), HIST_BINS - 1)
    flat = np.bincount(cols * HIST_BINS + bins, minlength=table.hist.size)
    table.hist += flat.reshape(table.hist.shape)


def _windows(
    table: LatentTable, sparse: torch.Tensor, a: int, b: int, starts: np.ndarray, counts: np.ndarray
) -> None:
    """Fill peaks and windows of the (latent, slot) pairs whose example lies in [a, b), from
    the block's codes ``sparse`` (COO [b - a, d_sae]), made dense only when one does."""
    examples = table.examples
    inside = (examples >= 0) & (starts[np.maximum(examples, 0)] >= a)
    inside &= starts[np.maximum(examples, 0)] < b
    latent, slot = np.nonzero(inside)
    if latent.size == 0:
        return
    codes = sparse.to_dense().numpy()
    ex = examples[latent, slot]
    first, count = starts[ex] - a, counts[ex]
    offsets = np.arange(int(count.max()))
    valid = offsets[None, :] < count[:, None]
    rows = np.where(valid, first[:, None] + offsets[None, :], 0)
    values = np.where(valid, codes[rows, latent[:, None]], -np.inf)
    peak = values.argmax(axis=1)
    table.peaks[latent, slot] = peak
    around = peak[:, None] + np.arange(-CONTEXT, CONTEXT + 1)[None, :]
    ok = (around >= 0) & (around < count[:, None])
    picked = codes[np.where(ok, first[:, None] + around, 0), latent[:, None]]
    table.windows[latent, slot] = np.where(ok, picked, 0.0)


def layer_encoders(run: RunDir, cfg: RunConfig, layer: int) -> tuple[dict[str, Encoder], dict]:
    """Encoders of the dictionaries present at ``layer`` and their decoders (numpy)."""
    features = cfg.features
    encoders: dict[str, Encoder] = {}
    decoders: dict = {}
    for name, checkpoint, side in (
        ("base_sae", features.base, 0),
        ("finetuned_sae", features.finetuned, 1),
    ):
        if sae_exists(run.sae(checkpoint, layer)):
            sae = load_dictionary(run.sae(checkpoint, layer)).eval()
            encoders[name] = lambda pair, sae=sae, side=side: sae.encode(pair[:, side])
            decoders[name] = sae.decoder_directions().numpy()[:, 0]
    if sae_exists(run.crosscoder(layer)):
        crosscoder = load_dictionary(run.crosscoder(layer)).eval()
        encoders["crosscoder"] = crosscoder.encode
        decoders["crosscoder"] = crosscoder.decoder_directions().numpy()
    return encoders, decoders


def add_relations(tables: dict[str, LatentTable], decoders: dict, cfg: RunConfig) -> None:
    """Partners of the two SAEs' latents; relative norm and group of crosscoder latents."""
    if "base_sae" in tables and "finetuned_sae" in tables:
        cos = decoder_cosines(decoders["base_sae"], decoders["finetuned_sae"])  # [d_b, d_f]
        for name, axis in (("base_sae", 1), ("finetuned_sae", 0)):
            partner = cos.argmax(axis=axis)
            tables[name].partner = partner
            tables[name].partner_cosine = cos.max(axis=axis)
    if "crosscoder" in tables:
        rel = relative_norms(np.linalg.norm(decoders["crosscoder"], axis=2))
        tables["crosscoder"].relative_norm = rel
        tables["crosscoder"].group = classify_latents(
            rel, cfg.features.base_only_below, cfg.features.finetuned_only_above
        )


def latent_tables(run: RunDir, cfg: RunConfig, store: xr.Dataset) -> list[LatentTable]:
    """Every dictionary's :class:`LatentTable`, layer by layer (empty without dictionaries)."""
    pair = [cfg.features.base, cfg.features.finetuned]
    if not set(pair) <= {str(c) for c in store.checkpoint.values}:
        return []
    special = np.asarray(store.is_special.values)
    scored = ~special if cfg.sae.exclude_special else np.ones_like(special)
    labels = np.asarray(store.label.values)
    if np.unique(labels).size < 2:
        logger.info("explorer: one label only, no latent AUROCs")
        return []
    out = []
    for layer in [int(v) for v in store.layer.values]:
        encoders, decoders = layer_encoders(run, cfg, layer)
        if not encoders:
            continue
        tables = scan_dictionaries(_Pass(store, pair, layer, scored), encoders, labels, layer)
        add_relations(tables, decoders, cfg)
        out += [tables[name] for name in SOURCES if name in tables]
    return out
