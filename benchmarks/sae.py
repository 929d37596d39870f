"""TopK SAE training throughput and quality: layerdrift against SAELens and a plain loop.

Every trainer sees the same planted-sparse activations (a random unit dictionary of
``--features`` directions in ``--d-in`` dims, ``--active`` per token, stored float16 like
the activation store) in the same seeded batch order, with d_sae = 4·d_in, k = 32, batch
4096, the same learning rate, warm-up and token budget, and is scored by its FVU on 20,000
held-out planted tokens.

- ``layerdrift``: :class:`tasks.sae.train.Trainer` on :class:`SparseAutoencoder` (TopK with
  an embedding-bag decoder that gathers only the k active rows, AuxK, unit-norm decoder);
- ``plain loop``: the same model written the plain way (dense code, ``f @ W_dec``);
- ``SAELens``: ``TopKTrainingSAE`` + ``SAETrainer`` (sae-lens, run from its own virtualenv
  ``--saelens-python`` so its dependencies stay out of the project's);
- ``layerdrift from store``: ``train_saes`` reading a float16 Zarr store through the loader;
- ``one pass, N layers`` against ``N layers one at a time``: the multi-layer option.

Prints a table and writes ``benchmarks/results/sae.json``.

    .venv/bin/python benchmarks/sae.py [--tokens 400000]
        [--saelens-python /tmp/saelens-venv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
D_SAE_FACTOR, K, BATCH = 4, 32, 4096


def planted(
    n: int, d_in: int, n_features: int, n_active: int, seed: int, code_seed: int = 0
) -> np.ndarray:
    """[n, d_in] float16 tokens: sums of ``n_active`` planted unit directions (+ offset).

    ``seed`` draws the dictionary, ``code_seed`` the sparse codes.
    """
    dictionary = np.random.default_rng(seed).normal(size=(n_features, d_in)).astype(np.float32)
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    rng = np.random.default_rng([seed, code_seed])
    out = np.empty((n, d_in), dtype=np.float16)
    for start in range(0, n, 50_000):
        m = min(50_000, n - start)
        idx = rng.integers(0, n_features, size=(m, n_active))
        mags = rng.uniform(0.5, 2.0, size=(m, n_active)).astype(np.float32)
        x = np.einsum("nk,nkd->nd", mags, dictionary[idx]) + 0.3
        out[start : start + m] = x
    return out


def batches(data: np.ndarray, seed: int = 0):
    """Endless float32 batches [BATCH, d_in] in a seeded order, a new permutation per epoch."""
    epoch = 0
    while True:
        order = np.random.default_rng([seed, epoch]).permutation(len(data))
        for i in range(0, len(order) - BATCH + 1, BATCH):
            yield torch.from_numpy(data[np.sort(order[i : i + BATCH])].astype(np.float32))
        epoch += 1


def fvu(recon: np.ndarray, x: np.ndarray) -> float:
    """Σ||x − x̂||² / Σ||x − mean||²."""
    x = x.astype(np.float64)
    return float(((x - recon) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


# ---------------------------------------------------------------------------------------------
# SAELens, run inside its own virtualenv (this function imports nothing from layerdrift)


def saelens_worker(data_path: str, eval_path: str, steps: int, lr: float, warmup: int) -> dict:
    """Train SAELens's TopK SAE on the saved tokens; returns tokens/s and FVU."""
    import sae_lens
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    data, x_eval = np.load(data_path), np.load(eval_path).astype(np.float32)
    d_in = data.shape[1]
    torch.manual_seed(0)
    sae = TopKTrainingSAE(
        TopKTrainingSAEConfig(
            d_in=d_in,
            d_sae=D_SAE_FACTOR * d_in,
            k=K,
            dtype="float32",
            device="cpu",
            normalize_activations="expected_average_only_in",
            aux_loss_coefficient=1 / 32,
        )
    )
    cfg = SAETrainerConfig(
        total_training_samples=steps * BATCH,
        train_batch_size_samples=BATCH,
        lr=lr,
        lr_warm_up_steps=warmup,
        lr_decay_steps=int(0.2 * steps),
        lr_end=lr / 100,
        device="cpu",
        dead_feature_window=max(1, 200_000 // BATCH),
        feature_sampling_window=10**9,
        n_batches_for_norm_estimate=5,
    )
    trainer = SAETrainer(cfg, sae, batches(data))
    start, cpu = time.perf_counter(), time.process_time()
    trainer.fit()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    with torch.no_grad():
        recon = sae(torch.from_numpy(x_eval)).numpy()
    return {
        "tokens_per_s": steps * BATCH / seconds,
        "fvu": fvu(recon, x_eval),
        "seconds": seconds,
        "tokens_per_cpu_s": steps * BATCH / cpu,
        "version": sae_lens.__version__,
    }


# ---------------------------------------------------------------------------------------------
# layerdrift and the plain loop


class PlainTopK(torch.nn.Module):
    """The plain way to write the same TopK SAE: dense code, dense matmuls, plain autograd."""

    def __init__(self, reference) -> None:
        super().__init__()
        self.spec, self.d_sae = reference.spec, reference.d_sae
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            setattr(self, name, torch.nn.Parameter(getattr(reference, name).detach().clone()))
        self.register_buffer("scale", reference.scale.clone())

    def forward(self, x):
        xn = x * self.scale
        pre = (xn - self.b_dec) @ self.W_enc + self.b_enc
        top = pre.topk(self.spec.k, dim=-1)
        f = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
        return f, pre, xn, (f @ self.W_dec + self.b_dec)

    def loss(self, x, dead_mask):
        f, pre, xn, recon = self(x)
        loss = (recon - xn).pow(2).mean()
        if dead_mask.any():
            residual = (xn - recon).detach()
            k_aux = min(self.spec.k_aux, int(dead_mask.sum()))
            top = pre.masked_fill(~dead_mask, float("-inf")).topk(k_aux, dim=-1)
            f_aux = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
            aux = (f_aux @ self.W_dec - residual).pow(2).mean() / residual.pow(2).mean()
            loss = loss + self.spec.aux_coefficient * aux
        active = f > 0
        parts = {"loss": loss.item(), "l0": active.sum(1).float().mean().item()}
        return loss, parts, active.any(0)

    def after_backward(self):
        with torch.no_grad():
            g = self.W_dec.grad
            g -= (g * self.W_dec).sum(1, keepdim=True) * self.W_dec

    def after_step(self):
        with torch.no_grad():
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True)

    def reconstruct(self, x):
        return self(x)[3] / self.scale


def ours(data: np.ndarray, x_eval: np.ndarray, steps: int, lr: float, warmup: int, dense: bool):
    """layerdrift's Trainer on its SAE, or (``dense=True``) on :class:`PlainTopK`."""
    from layerdrift.tasks.sae.model import SAESpec, SparseAutoencoder
    from layerdrift.tasks.sae.train import Schedule, Trainer

    d_in = data.shape[1]
    model = SparseAutoencoder(
        SAESpec(d_in=d_in, d_sae=D_SAE_FACTOR * d_in, k=K), torch.Generator().manual_seed(0)
    )
    model.init_from_sample(torch.from_numpy(data[:20_000].astype(np.float32)))
    if dense:
        model = PlainTopK(model)
    schedule = Schedule(n_steps=steps, learning_rate=lr, warmup_steps=warmup, dead_tokens=200_000)
    trainer = Trainer([model], schedule, desc="plain" if dense else "layerdrift")
    stream = (b[:, None] for b in batches(data))
    start, cpu = time.perf_counter(), time.process_time()
    trainer.fit(stream)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    with torch.no_grad():
        x = torch.from_numpy(x_eval)
        recon = (model.reconstruct(x) if dense else model(x)).numpy()
    rate, cpu_rate = steps * BATCH / seconds, steps * BATCH / cpu
    return {"tokens_per_s": rate, "tokens_per_cpu_s": cpu_rate, "fvu": fvu(recon, x_eval)}


def write_store(path: str, layers: list[np.ndarray]) -> None:
    """A schema-1-shaped float16 store (one checkpoint, ``len(layers)`` layers)."""
    import xarray as xr

    n, d = layers[0].shape
    per_example = 32
    n_ex = n // per_example
    acts = np.stack(layers)[None, :, : n_ex * per_example]
    n_tok = n_ex * per_example
    ds = xr.Dataset(
        {
            "activations": (("checkpoint", "layer", "token", "hidden"), acts),
            "label": (("example",), np.zeros(n_ex, dtype=np.int32)),
            "token_start": (("example",), np.arange(n_ex, dtype=np.int64) * per_example),
            "token_count": (("example",), np.full(n_ex, per_example, dtype=np.int32)),
        },
        coords={
            "checkpoint": np.array(["base"], dtype=object),
            "layer": np.arange(len(layers)),
            "is_special": ("token", np.arange(n_tok) % per_example == 0),
            "example_of_token": ("token", np.repeat(np.arange(n_ex), per_example).astype(np.int32)),
        },
        attrs={"schema_version": 1, "token_chunk": 4096},
    )
    enc = {"activations": {"chunks": (1, 1, 4096, d)}}
    ds.to_zarr(path, mode="w", encoding=enc, consolidated=True, zarr_format=3)


def from_store(store: str, layers: list[int], tokens: int, lr: float, warmup: int, out: str):
    """Seconds for ``train_saes`` on ``layers`` of the store, from one pass."""
    import xarray as xr

    from layerdrift.config import SAEConfig
    from layerdrift.tasks.sae.fit import train_saes

    cfg = SAEConfig(
        k=K, batch_size=BATCH, token_budget=tokens, learning_rate=lr, warmup_steps=warmup,
        heldout_fraction=0.05, checkpoint_every=10**6,
    )  # fmt: skip
    ds = xr.open_zarr(store, chunks=None)
    urls = [f"{out}/L{layer}-{time.time_ns()}" for layer in layers]
    start = time.perf_counter()
    train_saes(ds, "base", layers, urls, cfg)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=400_000, help="training tokens per SAE")
    parser.add_argument("--d-in", type=int, default=384)
    parser.add_argument("--features", type=int, default=1536)
    parser.add_argument("--active", type=int, default=16)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--layers", type=int, default=3, help="layers for the one-pass test")
    parser.add_argument("--layer-tokens", type=int, default=120_000)
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--layers-only", action="store_true", help="only the one-pass test")
    parser.add_argument("--saelens-python", default="/tmp/saelens-venv/bin/python")
    parser.add_argument("--saelens-worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = max(1, args.tokens // BATCH)
    if args.saelens_worker:
        result = saelens_worker(*args.saelens_worker, steps, args.lr, args.warmup)
        print("RESULT " + json.dumps(result))
        return

    sys.path.insert(0, str(ROOT))
    data = planted(min(args.tokens, 250_000), args.d_in, args.features, args.active, seed=0)
    x_eval = planted(20_000, args.d_in, args.features, args.active, seed=0, code_seed=1)
    x_eval = x_eval.astype(np.float32)  # same dictionary, other tokens
    rows: dict[str, dict] = {}
    tmp = tempfile.mkdtemp(prefix="sae-bench-")
    np.save(f"{tmp}/data.npy", data)
    np.save(f"{tmp}/eval.npy", x_eval)

    runs: dict[str, list[dict]] = {"layerdrift": [], "plain loop": [], "SAELens": []}
    for _ in range(
        0 if args.layers_only else args.repeats
    ):  # interleaved, so a busy machine slows all alike
        runs["layerdrift"].append(ours(data, x_eval, steps, args.lr, args.warmup, dense=False))
        runs["plain loop"].append(ours(data, x_eval, steps, args.lr, args.warmup, dense=True))
        runs["SAELens"].append(run_saelens(args, tmp))
    for name, results in runs.items():
        ok = [r for r in results if "error" not in r]
        if not results:
            continue
        if not ok:
            rows[name] = results[0]
            continue
        rows[name] = dict(ok[0])
        rows[name]["tokens_per_s"] = float(np.median([r["tokens_per_s"] for r in ok]))
        rows[name]["tokens_per_s_runs"] = [r["tokens_per_s"] for r in ok]
        rows[name]["tokens_per_cpu_s"] = float(np.median([r["tokens_per_cpu_s"] for r in ok]))

    if args.layers == 0:
        report(args, steps, rows)
        return
    layer_data = [
        planted(args.layer_tokens, args.d_in, args.features, args.active, seed=s)
        for s in range(1, args.layers + 1)
    ]
    store = f"{tmp}/store.zarr"
    write_store(store, layer_data)
    n_layers, budget = len(layer_data), (args.layer_tokens // BATCH) * BATCH * 9 // 10
    seq_runs, joint_runs = [], []
    for r in range(args.repeats):  # alternate the order: seq, joint, joint, seq, ...
        for mode in ("seq", "joint") if r % 2 == 0 else ("joint", "seq"):
            if mode == "seq":
                seq_runs.append(
                    sum(
                        from_store(store, [layer], budget, args.lr, args.warmup, tmp)
                        for layer in range(n_layers)
                    )
                )
            else:
                layers = list(range(n_layers))
                joint_runs.append(from_store(store, layers, budget, args.lr, args.warmup, tmp))
    for name, runs_s in ((f"{n_layers} layers one at a time (store)", seq_runs),
                         (f"{n_layers} layers, one pass (store)", joint_runs)):  # fmt: skip
        rates = [n_layers * budget / s for s in runs_s]
        rows[name] = {"tokens_per_s": float(np.median(rates)), "tokens_per_s_runs": rates}
    report(args, steps, rows)


def run_saelens(args: argparse.Namespace, tmp: str) -> dict:
    """Run the SAELens worker in its virtualenv; an ``error`` row says why it could not run."""
    python = Path(args.saelens_python)
    if not python.exists():
        return {"error": f"{python} not found: create it with torch==2.13.0 and sae-lens"}
    command = [str(python), __file__, "--saelens-worker", f"{tmp}/data.npy", f"{tmp}/eval.npy"]
    command += ["--tokens", str(args.tokens), "--lr", str(args.lr), "--warmup", str(args.warmup)]
    command += ["--threads", str(args.threads)]
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"}
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "no result"}


def report(args: argparse.Namespace, steps: int, rows: dict[str, dict]) -> None:
    """Print the table and write ``benchmarks/results/sae.json``."""
    out = ROOT / "benchmarks" / "results" / "sae.json"
    previous = json.loads(out.read_text()) if args.layers_only and out.exists() else None
    previous = previous if previous and "results" in previous else None
    if previous:  # keep the trainer rows (and their setup) of the last full run
        rows = {**previous["results"], **rows}
        steps = previous["setup"]["tokens"] // BATCH
    base = rows.get("SAELens", {}).get("tokens_per_s")
    shape = f"TopK {args.d_in}->{D_SAE_FACTOR * args.d_in}, k={K}, batch {BATCH}"
    print(f"\n{shape}, {steps * BATCH:,} tokens, {torch.get_num_threads()} torch threads, "
          f"load {os.getloadavg()[0]:.1f}")  # fmt: skip
    base_cpu = rows.get("SAELens", {}).get("tokens_per_cpu_s")
    print(f"{'trainer':38s} {'tokens/s':>10s} {'vs SAELens':>10s} {'tok/CPU-s':>10s} "
          f"{'vs SAELens':>10s} {'FVU':>8s}")  # fmt: skip
    for name, row in rows.items():
        if "error" in row:
            print(
                f"{name:38s} {'-':>10s} {'-':>10s} {'-':>10s} {'-':>10s} {'-':>8s} ({row['error']})"
            )
            continue
        ratio = f"{row['tokens_per_s'] / base:.2f}x" if base else "-"
        fvu_text = f"{row['fvu']:.4f}" if "fvu" in row else "-"
        cpu = row.get("tokens_per_cpu_s")
        cpu_text = f"{cpu:>10,.0f}" if cpu else f"{'-':>10s}"
        cpu_ratio = f"{cpu / base_cpu:.2f}x" if cpu and base_cpu else "-"
        print(f"{name:38s} {row['tokens_per_s']:>10,.0f} {ratio:>10s} {cpu_text} {cpu_ratio:>10s} "
              f"{fvu_text:>8s}")  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "d_in": args.d_in, "d_sae": D_SAE_FACTOR * args.d_in, "k": K, "batch": BATCH,
        "tokens": steps * BATCH, "lr": args.lr, "planted_features": args.features,
        "active_per_token": args.active, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "tokens_per_cpu_s": "training tokens per CPU second (process time)",
        "load_average": os.getloadavg()[0], "device": "cpu",
    }  # fmt: skip
    if previous:
        meta = {**previous["setup"], "load_average_layers": os.getloadavg()[0]}
    meta |= {"layers": args.layers, "layer_tokens": args.layer_tokens, "repeats": args.repeats}
    out.write_text(json.dumps({"setup": meta, "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
