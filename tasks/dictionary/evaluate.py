"""Dictionary metrics on held-out tokens, and accuracy / loss recovered inside the classifier.

Reconstruction (``x`` [n, d_in] held-out activations, ``x̂`` the SAE output):

- ``mse`` = mean over tokens and dims of (x − x̂)², in the model's units;
- ``fvu`` = Σ||x − x̂||² / Σ||x − mean(x)||² (fraction of variance unexplained);
- ``explained_variance`` = 1 − Σ_d Var(x − x̂)_d / Σ_d Var(x)_d (like scikit-learn's
  ``explained_variance_score`` with variance weighting: a constant error is forgiven);
- ``l0`` = mean active latents per token; ``dead_fraction`` = share of latents that never
  fire on the held-out tokens.

Recovered (Gao et al. 2024 style, on the held-out probe examples): the layer's hidden state
(``hidden_states[layer]``: 0 = embeddings output, l ≥ 1 = output of layer l) is replaced on
the real tokens by the SAE reconstruction, or by the mean activation, by the model adapter's
splice at the module call that produces that hidden state (any family);
``loss_recovered = (L_mean − L_sae) / (L_mean − L_clean)``, same for accuracy. It is NaN when
the denominator is ~0 (e.g. an untrained head where ablation changes nothing).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from layerdrift.tasks.dictionary.model import Dictionary
from layerdrift.tasks.modeling import load_classifier, load_tokenizer, splice
from layerdrift.tasks.modeling.sites import SiteRecord, recording, replayed

logger = logging.getLogger(__name__)

DENSITY_EDGES = np.linspace(-6.0, 0.0, 25)  # log10 firing frequency, 0.25 decades per bin
RECOVERY_EPS = 1e-6


@torch.no_grad()
def reconstruction_metrics(
    model: Dictionary, x: torch.Tensor, batch_size: int = 4096
) -> tuple[dict[str, float], np.ndarray]:
    """Metrics of ``model`` on ``x`` [n, d_in] and each latent's firing frequency [d_sae]."""
    if x.shape[0] == 0:
        raise ValueError("no held-out tokens to evaluate on: raise sae.heldout_fraction")
    device = model.b_dec.device
    x64 = x.double()
    err_sum = torch.zeros(x.shape[1], dtype=torch.float64)
    err_sq = torch.zeros(x.shape[1], dtype=torch.float64)
    fired = torch.zeros(model.d_sae, dtype=torch.float64)
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size].to(device, torch.float32)
        f = model.encode(xb)
        err = (xb - model.decode(f)).double().cpu()
        err_sum += err.sum(dim=0)
        err_sq += err.pow(2).sum(dim=0)
        fired += (f > 0).sum(dim=0).double().cpu()
    n = x.shape[0]
    total_var = (x64 - x64.mean(dim=0)).pow(2).sum()
    err_var = (err_sq - err_sum.pow(2) / n).sum()
    frequency = (fired / n).numpy()
    metrics = {
        "mse": float(err_sq.sum() / (n * x.shape[1])),
        "fvu": float(err_sq.sum() / total_var),
        "explained_variance": float(1.0 - err_var / total_var),
        "l0": float(fired.sum() / n),
        "dead_fraction": float((fired == 0).double().mean()),
    }
    return metrics, frequency


def density_histogram(frequency: np.ndarray) -> np.ndarray:
    """Counts of latents per bin of log10 firing frequency (:data:`DENSITY_EDGES`).

    Latents firing less often than 1e-6 (never-firing included) fall in the first bin.
    """
    logf = np.log10(np.clip(frequency, 10 ** DENSITY_EDGES[0], 1.0))
    counts, _ = np.histogram(logf, bins=DENSITY_EDGES)
    return counts


def recovered_metrics(
    classifier_dir: str | Path,
    layer: int,
    model: Dictionary,
    mean_activation: torch.Tensor,
    texts: list[str],
    labels: np.ndarray,
    max_length: int = 128,
    batch_size: int = 32,
    exclude_special: bool = False,
) -> dict[str, float]:
    """Accuracy and CE loss of the classifier clean, with the SAE spliced in, and mean-ablated.

    ``mean_activation`` [d_in] replaces every real token in the ablation. Returns
    ``accuracy_{clean,sae,mean}``, ``loss_{clean,sae,mean}``, ``accuracy_recovered`` and
    ``loss_recovered``.
    """
    splices = {layer: LayerSplices({"sae": model}, mean_activation)}
    found = recovered_metrics_by_layer(
        classifier_dir, splices, texts, labels, max_length, batch_size, exclude_special
    )
    return found[layer]["sae"]


@dataclass(frozen=True)
class LayerSplices:
    """What :func:`recovered_metrics_by_layer` splices in at one layer: dictionaries by
    name, and the mean activation [d_in] that replaces every token in its ablation."""

    models: Mapping[str, Dictionary]
    mean_activation: torch.Tensor


@torch.no_grad()
def recovered_metrics_by_layer(
    classifier_dir: str | Path,
    splices: Mapping[int, LayerSplices],
    texts: list[str],
    labels: np.ndarray,
    max_length: int = 128,
    batch_size: int = 32,
    exclude_special: bool = False,
) -> dict[int, dict[str, dict[str, float]]]:
    """:func:`recovered_metrics` of several dictionaries at several layers of one
    classifier: per layer of ``splices``, per dictionary name, what a call of
    :func:`recovered_metrics` for that dictionary returns.

    The classifier is loaded once and each batch's clean pass runs once, recording the
    hidden state of every layer asked for; each layer's mean-ablated pass runs once for its
    dictionaries, and every pass goes on from its layer's own recording (transfer recovery:
    two dictionaries of a layer in four passes instead of six; the SAE metrics stage: one
    clean pass for a checkpoint's SAEs of every layer instead of one per SAE).
    """
    models = [m for splice_ in splices.values() for m in splice_.models.values()]
    device = models[0].b_dec.device if models else torch.device("cpu")
    tokenizer = load_tokenizer(str(classifier_dir))
    classifier = load_classifier(classifier_dir, tokenizer).to(device).eval()
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if labels_t.numel() and int(labels_t.max()) >= classifier.config.num_labels:
        raise ValueError(
            f"store labels go up to {int(labels_t.max())} but {classifier_dir} has "
            f"{classifier.config.num_labels} labels: the store and checkpoint do not match"
        )
    replays = {layer: _SplicedPasses(classifier, layer) for layer in splices}
    modes = {layer: _modes(splice_, device) for layer, splice_ in splices.items()}
    clean_sums = [0.0, 0.0]  # loss sum, correct count
    sums = {layer: {name: [0.0, 0.0] for name in modes[layer]} for layer in splices}
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[start : start + batch_size],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_length,
            return_special_tokens_mask=True,
        )
        special = batch.pop("special_tokens_mask").bool()
        real = batch["attention_mask"].bool()
        mask = (real & ~special if exclude_special else real).to(device)
        batch = {k: v.to(device) for k, v in batch.items()}
        y = labels_t[start : start + batch_size].to(device)
        with contextlib.ExitStack() as stack:
            records = {
                layer: stack.enter_context(recording(classifier, layer)) for layer in splices
            }
            clean = classifier(**batch).logits.float()
        _add(clean_sums, clean, y)
        for layer, layer_modes in modes.items():
            for name, replace in layer_modes.items():
                _add(
                    sums[layer][name],
                    replays[layer].logits(batch, replace, mask, records[layer]),
                    y,
                )
    n = max(len(texts), 1)
    return {
        layer: _named_metrics(clean_sums, sums[layer], splices[layer].models, n)
        for layer in splices
    }


def _modes(splice_: LayerSplices, device: torch.device) -> dict[str, Callable]:
    """The replacements of one layer's hidden state: its mean, then each dictionary."""
    mean = splice_.mean_activation.to(device, torch.float32)
    modes: dict[str, Callable] = {"mean": lambda h: mean.expand_as(h)}
    modes |= {f"sae:{name}": (lambda h, m=m: m(h.float())) for name, m in splice_.models.items()}
    return modes


def _add(sums: list[float], logits: torch.Tensor, y: torch.Tensor) -> None:
    """Add a batch's summed cross-entropy and correct count to ``sums``."""
    sums[0] += F.cross_entropy(logits, y, reduction="sum").item()
    sums[1] += (logits.argmax(dim=-1) == y).sum().item()


def _named_metrics(
    clean: list[float], sums: dict[str, list[float]], models: Mapping[str, Dictionary], n: int
) -> dict[str, dict[str, float]]:
    """Each dictionary's metrics dict (the keys in :data:`_KEY_ORDER`) from the sums."""
    shared = {"loss_clean": clean[0] / n, "accuracy_clean": clean[1] / n}
    shared |= {"loss_mean": sums["mean"][0] / n, "accuracy_mean": sums["mean"][1] / n}
    out = {}
    for name in models:
        loss_sum, correct = sums[f"sae:{name}"]
        found = {**shared, "loss_sae": loss_sum / n, "accuracy_sae": correct / n}
        found["loss_recovered"] = _recovered(
            found["loss_mean"], found["loss_sae"], found["loss_clean"]
        )
        found["accuracy_recovered"] = _recovered(
            found["accuracy_mean"], found["accuracy_sae"], found["accuracy_clean"]
        )
        out[name] = {k: found[k] for k in sorted(found, key=_KEY_ORDER.index)}
    return out


# The order recovered_metrics has always returned its keys in (the metrics JSON files keep it).
_KEY_ORDER = [
    "loss_clean", "accuracy_clean", "loss_sae", "accuracy_sae", "loss_mean", "accuracy_mean",
    "loss_recovered", "accuracy_recovered",
]  # fmt: skip


class _SplicedPasses:
    """A classifier's logits with ``hidden_states[layer]`` replaced on some tokens.

    The clean pass of a batch has computed layers 0 … ``layer`` already; the spliced passes
    start from its recorded hidden state (:func:`tasks.modeling.sites.replayed`) instead of
    computing those layers again. The first spliced pass is also run in full and must give
    the same logits to the bit; where it does not, or where the model's layers cannot be
    replayed, every pass runs in full through the splice.
    """

    def __init__(self, classifier: torch.nn.Module, layer: int) -> None:
        self.classifier, self.layer = classifier, layer
        self.checked, self.full_only = False, False

    def logits(self, batch: dict, replace, mask: torch.Tensor, record: SiteRecord) -> torch.Tensor:
        """Logits (batch, num_labels) float32 with ``replace`` applied to the ``mask`` tokens
        of ``hidden_states[layer]``; ``record`` holds the batch's clean pass."""
        if self.full_only or record.error is not None or record.hidden is None:
            return self._full(batch, replace, mask)
        hidden = record.hidden.clone()
        hidden[mask] = replace(record.hidden[mask]).to(hidden.dtype)
        with replayed(self.classifier, self.layer, record.forms, hidden):
            logits = self.classifier(**batch).logits.float()
        if not self.checked:
            self.checked = True
            full = self._full(batch, replace, mask)
            if not torch.equal(full, logits):
                logger.warning("spliced passes run in full: replaying layer %d changed the "
                               "logits", self.layer)  # fmt: skip
                self.full_only = True
                return full
        return logits

    def _full(self, batch: dict, replace, mask: torch.Tensor) -> torch.Tensor:
        with splice(self.classifier, self.layer, replace, mask):
            return self.classifier(**batch).logits.float()


def _recovered(ablated: float, spliced: float, clean: float) -> float:
    """(ablated − spliced) / (ablated − clean), NaN when the denominator is ~0."""
    denominator = ablated - clean
    if abs(denominator) < RECOVERY_EPS:
        return float("nan")
    return (ablated - spliced) / denominator


@dataclass
class FVUAccumulator:
    """Streaming FVU over batches of activations ``x`` and reconstructions ``x_hat`` [n, d]:

        FVU = Σ‖x − x̂‖² / Σ‖x − mean(x)‖²

    from the sums of squared error, of x and of ‖x‖², so it is exact over any batching.
    """

    n: int = 0
    sse: float = 0.0
    sum_sq: float = 0.0
    total: np.ndarray | None = field(default=None, repr=False)

    def update(self, x: torch.Tensor, x_hat: torch.Tensor) -> None:
        """Add a batch of activations ``x`` and reconstructions ``x_hat`` (same shape [n, d])."""
        if x.shape != x_hat.shape:
            raise ValueError(f"x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)} differ in shape")
        x64, err = x.double(), (x - x_hat).double()
        self.n += x.shape[0]
        self.sse += float(err.pow(2).sum())
        self.sum_sq += float(x64.pow(2).sum())
        batch_total = x64.sum(dim=0).cpu().numpy()
        self.total = batch_total if self.total is None else self.total + batch_total

    @property
    def fvu(self) -> float:
        """SSE over the total variance around the mean (NaN without tokens or variance)."""
        if not self.n:
            return float("nan")
        variance = self.sum_sq - float(self.total @ self.total) / self.n
        return self.sse / variance if variance > 0 else float("nan")
