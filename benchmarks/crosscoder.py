"""Crosscoder training speed: layerdrift's sparse objective vs plain dense autograd.

Both variants train the same crosscoder (same initialisation, same batches, same Adam and
decoder-norm handling) for ``--steps`` steps; only the loss differs: the architecture's
objective (:mod:`tasks.dictionary`, a sparse backward through the selected latents only)
against the textbook dense formula (dense code, per-model einsum decode, dense AuxK or L1)
that autograd differentiates. ``--architecture`` is ``topk`` or ``relu``. Repeats alternate
the two, and the table reports token pairs per second, the ratio measured side by side, and
the final loss of each (the two should agree: the sparse backward is exact).

    .venv/bin/python benchmarks/crosscoder.py --run runs/default --layer 6
    .venv/bin/python benchmarks/crosscoder.py            # random activations, hidden 384
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from layerdrift.tasks.dictionary import Dictionary, DictionarySpec, build  # noqa: E402


def dense_loss(model: Dictionary, x: torch.Tensor, dead_mask: torch.Tensor) -> torch.Tensor:
    """The crosscoder's TopK + AuxK (or ReLU + L1) loss written densely, for autograd."""
    spec = model.spec
    m, d, s = spec.n_models, spec.d_model, spec.d_sae
    W_enc, W_dec = model.W_enc.view(m, d, s), model.W_dec.view(s, m, d)  # noqa: N806
    xn = x * model.scale[None, :, None]
    pre = torch.einsum("bmi,mis->bs", xn - model.b_dec.view(m, d), W_enc) + model.b_enc
    if spec.architecture == "relu":
        f = pre.relu()
    else:
        top = pre.topk(spec.k, dim=1)
        f = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
    recon = torch.einsum("bs,smi->bmi", f, W_dec) + model.b_dec.view(m, d)
    loss = (recon - xn).pow(2).mean()
    if spec.architecture == "relu":
        return loss + spec.l1_coefficient * (f * W_dec.norm(dim=2).sum(1)).sum(1).mean()
    n_dead = int(dead_mask.sum())
    if n_dead:
        residual = (xn - recon).detach()
        k_aux = min(spec.d_in // 2, n_dead)
        dead_top = pre.masked_fill(~dead_mask, float("-inf")).topk(k_aux, dim=1)
        f_aux = torch.zeros_like(pre).scatter(1, dead_top.indices, dead_top.values.relu())
        aux_recon = torch.einsum("bs,smi->bmi", f_aux, W_dec)
        aux = (aux_recon - residual).pow(2).mean() / residual.pow(2).mean()
        loss = loss + spec.aux_coefficient * aux
    return loss


def train(variant: str, batches: list[torch.Tensor], spec: DictionarySpec, lr: float):
    """Train a fresh crosscoder on ``batches`` [B, 2, d]; returns (seconds, final loss)."""
    model = build(spec, torch.Generator().manual_seed(0))
    model.init_from_sample(torch.cat(batches[:8]))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    dead = torch.zeros(spec.d_sae, dtype=torch.bool)
    dead[::8] = True  # an eighth of the latents take the AuxK path, as dead ones would
    start = time.perf_counter()
    for x in batches:
        if variant == "sparse":
            loss = model.loss(x, dead)[0]
        else:
            loss = dense_loss(model, x, dead)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        model.after_backward()
        optimizer.step()
        model.after_step()
    return time.perf_counter() - start, float(loss)


def load_pairs(run: str | None, layer: int, n_tokens: int, d_in: int) -> np.ndarray:
    """Paired (base, final) activations [n, 2, d] of ``layer`` from a run, or random ones."""
    if run is None:
        rng = np.random.default_rng(0)
        base = rng.normal(size=(n_tokens, d_in)).astype(np.float32)
        return np.stack([base, base + 0.5 * rng.normal(size=base.shape).astype(np.float32)], 1)
    from layerdrift.storage.activations import open_store
    from layerdrift.storage.rundir import RunDir
    from layerdrift.tasks.dictionary import ActivationLoader

    ds = open_store(RunDir(run).activations())
    loader = ActivationLoader(ds, [("base", layer), ("final", layer)], batch_size=256)
    return loader.sample(n_tokens).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="a run whose store holds base and final")
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--d-in", type=int, default=384, help="hidden size of random data")
    parser.add_argument("--expansion", type=int, default=4)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--architecture", choices=("topk", "relu"), default="topk")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/crosscoder.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pairs = load_pairs(args.run, args.layer, args.batch_size * args.steps, args.d_in)
    d_in = pairs.shape[2]
    cfg = DictionarySpec(d_in, args.expansion * d_in, args.architecture, n_models=2, k=args.k)
    batches = list(torch.from_numpy(pairs).split(args.batch_size))
    results: dict[str, list[float]] = {"sparse": [], "dense": []}
    losses: dict[str, float] = {}
    train("sparse", batches[:10], cfg, 1e-3)  # warm-up: allocator, threads
    for _ in range(args.repeats):
        for variant in ("sparse", "dense"):
            seconds, losses[variant] = train(variant, batches, cfg, 1e-3)
            results[variant].append(len(pairs) / seconds)
    median = {v: statistics.median(r) for v, r in results.items()}
    print(f"{'variant':<8} {'pairs/s (median)':>17} {'runs':>30} {'final loss':>11}")
    for variant, rates in results.items():
        runs = ", ".join(f"{r:,.0f}" for r in rates)
        print(f"{variant:<8} {median[variant]:>17,.0f} {runs:>30} {losses[variant]:>11.5f}")
    ratio = median["sparse"] / median["dense"]
    print(f"sparse / dense: {ratio:.2f}x ({args.architecture}, d_in {d_in}, d_sae {cfg.d_sae}, "
          f"k {cfg.k}, "
          f"batch {args.batch_size}, {args.threads} threads)")  # fmt: skip
    summary = {
        "command": " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch_threads": args.threads, "load_average": os.getloadavg()},
        "shape": {"architecture": args.architecture, "d_in": d_in, "d_sae": cfg.d_sae,
                  "k": cfg.k, "batch": args.batch_size,
                  "steps": args.steps, "source": args.run or "random"},
        "pairs_per_second": results,
        "median": median,
        "ratio_sparse_over_dense": ratio,
        "final_loss": losses,
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
