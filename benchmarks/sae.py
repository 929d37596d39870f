"""Dictionary training speed and quality on a run's store: layerdrift against SAELens.

One layer of a run's activation store is read once: its training tokens (the run's own
held-out split left out) as float32 in memory, and its held-out tokens for scoring. Every
trainer then sees the same batches in the same seeded order, for the same number of steps,
with the same learning rate, linear warm-up and decay over the last 20% of steps:

- ``preset``: the run config's own SAE settings (architecture, k, batch size, learning rate,
  warm-up) in layerdrift's trainer, against SAELens at the same batch size and rate;
- ``topk``, ``batchtopk``, ``jumprelu``, ``relu``: each architecture at ``--batch`` against
  its SAELens counterpart (``TopKTrainingSAE``, ``BatchTopKTrainingSAE``,
  ``JumpReLUTrainingSAE``, ``StandardTrainingSAE``; SAELens sums the squared error over
  d_in where layerdrift averages it, so its L1 coefficient is layerdrift's times d_in).

Each row: training tokens per second (wall time of the training loop), and on the held-out
tokens FVU, L0 and the dead fraction (latents that never fire), SAELens's model scored
after ``save_inference_model`` + ``load_from_disk`` (BatchTopK as its JumpReLU). SAELens
runs in a subprocess (``--saelens-python``, default this interpreter: ``pip install
'layerdrift[saelens]'``). Prints a table and writes ``benchmarks/results/sae.json``.

    .venv/bin/python benchmarks/sae.py --run runs/quick [--layer 6] [--tokens 400000]

``--rows jumprelu relu --batch 1024 --tokens 1000000 --lr 1e-3 --l1 1e-2 --l0 3 --out
benchmarks/results/sae-sparse.json`` trains the penalty architectures long enough for their
codes to become sparse (at 48 steps of 4096 they stay half dense). The two JumpReLU trainers
reach different L0s at the same coefficient (L0 83 against 140 at 3; one difference between
them: SAELens starts its decoder rows at norm 0.1, layerdrift at 1), so ``--saelens-l0``
gives SAELens a coefficient of its own. Before layerdrift's JumpReLU clipped its gradient
as SAELens does, L0 barely followed the coefficient over 976 steps; clipped, 0.15 here meets
SAELens's 0.2 (README). ``--saelens-l1`` does the same for the ReLU rows.
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
ARCHITECTURES = ("topk", "batchtopk", "jumprelu", "relu")
SAELENS_CLASSES = {
    "topk": ("TopKTrainingSAE", "TopKTrainingSAEConfig"),
    "batchtopk": ("BatchTopKTrainingSAE", "BatchTopKTrainingSAEConfig"),
    "jumprelu": ("JumpReLUTrainingSAE", "JumpReLUTrainingSAEConfig"),
    "relu": ("StandardTrainingSAE", "StandardTrainingSAEConfig"),
}


def batches(data: np.ndarray, batch: int, seed: int = 0):
    """Endless float32 batches [batch, d_in] in a seeded order, a new permutation per epoch."""
    epoch = 0
    while True:
        order = np.random.default_rng([seed, epoch]).permutation(len(data))
        for i in range(0, len(order) - batch + 1, batch):
            yield torch.from_numpy(data[np.sort(order[i : i + batch])])
        epoch += 1


def score(x: np.ndarray, recon: np.ndarray, codes: np.ndarray) -> dict:
    """FVU = Σ‖x − x̂‖² / Σ‖x − mean‖², L0 and the share of latents that never fire."""
    x64 = x.astype(np.float64)
    fvu = float(((x64 - recon) ** 2).sum() / ((x64 - x64.mean(0)) ** 2).sum())
    fired = codes > 0
    return {"fvu": fvu, "l0": float(fired.sum(1).mean()), "dead": float((~fired.any(0)).mean())}


# ---------------------------------------------------------------------------------------------
# SAELens, in a subprocess (this function imports nothing from layerdrift)


def saelens_worker(job_path: str) -> dict:
    """Train SAELens's counterpart of ``job["architecture"]`` on the saved tokens."""
    import sae_lens
    from sae_lens import SAE
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    job = json.loads(Path(job_path).read_text())
    data, x_eval = np.load(job["data"]), np.load(job["eval"])
    d_in, arch, steps, batch = data.shape[1], job["architecture"], job["steps"], job["batch"]
    sae_class, cfg_class = (getattr(sae_lens, n) for n in SAELENS_CLASSES[arch])
    fields = {
        "d_in": d_in,
        "d_sae": job["d_sae"],
        "normalize_activations": "expected_average_only_in",
    }
    if arch in ("topk", "batchtopk"):
        fields |= {"k": job["k"], "aux_loss_coefficient": job["aux_coefficient"]}
    elif arch == "jumprelu":
        # Its own coefficient (--saelens-l0): at the same one the two reach different L0s.
        fields |= {"l0_coefficient": job["saelens_l0_coefficient"]}
        fields |= {"jumprelu_bandwidth": job["bandwidth"]}
        fields |= {"jumprelu_init_threshold": job["init_threshold"]}
        if job.get("saelens_decoder_init_norm") is not None:
            # SAELens starts decoder rows at norm 0.1, layerdrift at 1: the start sets how
            # far the thresholds must travel, so L0 follows it more than the coefficient.
            fields |= {"decoder_init_norm": job["saelens_decoder_init_norm"]}
    else:  # its own coefficient (--saelens-l1), as for JumpReLU; SAELens sums the MSE over d_in
        fields["l1_coefficient"] = job["saelens_l1_coefficient"] * d_in
    torch.manual_seed(0)
    sae = sae_class(cfg_class(**fields))
    cfg = SAETrainerConfig(
        total_training_samples=steps * batch, train_batch_size_samples=batch, lr=job["lr"],
        lr_warm_up_steps=job["warmup"], lr_decay_steps=int(0.2 * steps), lr_end=job["lr"] / 100,
        device="cpu", dead_feature_window=max(1, job["dead_tokens"] // batch),
        feature_sampling_window=10**9, n_batches_for_norm_estimate=5,
    )  # fmt: skip
    trainer = SAETrainer(cfg, sae, batches(data, batch))
    start = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        trainer.sae.save_inference_model(folder)
        inference = SAE.load_from_disk(folder)
    with torch.no_grad():
        x = torch.from_numpy(x_eval)
        codes = inference.encode(x)
        recon = inference.decode(codes).numpy()
    result = {"tokens_per_s": steps * batch / seconds, "seconds": seconds}
    return result | score(x_eval, recon, codes.numpy()) | {"version": sae_lens.__version__}


def run_saelens(python: str, job: dict, tmp: str) -> dict:
    """The SAELens worker in a subprocess; an ``error`` row says why it could not run."""
    path = Path(tmp) / f"job-{time.time_ns()}.json"
    path.write_text(json.dumps(job))
    command = [python, __file__, "--saelens-worker", str(path), "--threads", str(job["threads"])]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "no result"}


# ---------------------------------------------------------------------------------------------
# layerdrift


def layerdrift_run(data: np.ndarray, x_eval: np.ndarray, job: dict) -> dict:
    """layerdrift's trainer on the same tokens and schedule as the SAELens job."""
    from layerdrift.tasks.dictionary import DictionarySpec, Schedule, Trainer, build

    keys = ("k", "aux_coefficient", "l1_coefficient", "l0_coefficient", "bandwidth")
    spec = DictionarySpec(
        d_model=data.shape[1], d_sae=job["d_sae"], architecture=job["architecture"],
        init_threshold=job["init_threshold"], **{key: job[key] for key in keys},
    )  # fmt: skip
    model = build(spec, torch.Generator().manual_seed(0))
    model.init_from_sample(torch.from_numpy(data[:20_000]))
    schedule = Schedule(job["steps"], job["lr"], job["warmup"], dead_tokens=job["dead_tokens"])
    trainer = Trainer([model], schedule, desc=job["architecture"])
    stream = (b[:, None] for b in batches(data, job["batch"]))
    start = time.perf_counter()
    trainer.fit(stream)
    seconds = time.perf_counter() - start
    model.fold_decoder_norms()
    with torch.no_grad():
        x = torch.from_numpy(x_eval)
        codes = model.encode(x)
        recon = model.decode(codes).numpy()
    rate = job["steps"] * job["batch"] / seconds
    return {"tokens_per_s": rate, "seconds": seconds} | score(x_eval, recon, codes.numpy())


def load_layer(run: str, checkpoint: str, layer: int) -> tuple[np.ndarray, np.ndarray, object]:
    """(training tokens, held-out tokens) [n, d] float32 of one layer, and the run config."""
    from layerdrift.config import load_run_config
    from layerdrift.storage import RunDir, open_store
    from layerdrift.tasks.dictionary import make_loader

    run_dir = RunDir(run)
    cfg = load_run_config(run_dir.read_text("config.json"))
    loader = make_loader(open_store(run_dir.activations()), [(checkpoint, layer)], cfg.sae, 1)
    train = loader.sample(loader.n_train_tokens)[:, 0]
    heldout = loader.heldout()[0][:, 0]
    return np.ascontiguousarray(train), np.ascontiguousarray(heldout), cfg


def make_jobs(args: argparse.Namespace, cfg, d_in: int) -> dict[str, dict]:
    """The rows' settings: the preset's SAE section, then each architecture at ``--batch``."""
    from layerdrift.config import DictionaryConfig

    def job(dictionary, batch: int, lr: float, warmup: int, dead_tokens: int) -> dict:
        steps = max(1, args.tokens // batch)
        return {
            **dictionary.model_dump(), "d_sae": dictionary.expansion_factor * d_in,
            "batch": batch, "lr": lr, "warmup": min(warmup, steps // 2), "steps": steps,
            "dead_tokens": dead_tokens, "threads": torch.get_num_threads(),
            "saelens_l0_coefficient": dictionary.l0_coefficient if args.saelens_l0 is None
            else args.saelens_l0,
            "saelens_decoder_init_norm": args.saelens_decoder_norm,
            "saelens_l1_coefficient": dictionary.l1_coefficient if args.saelens_l1 is None
            else args.saelens_l1,
        }  # fmt: skip

    training = cfg.sae.training
    jobs = {"preset": job(cfg.sae.dictionary, training.batch_size, training.learning_rate,
                          training.warmup_steps, training.dead_tokens)}  # fmt: skip
    penalties = {"l1_coefficient": args.l1, "l0_coefficient": args.l0}
    for name in ARCHITECTURES:
        dictionary = DictionaryConfig(architecture=name, **penalties)
        jobs[name] = job(dictionary, args.batch, args.lr, args.warmup, args.dead_tokens)
    return jobs


def report(args: argparse.Namespace, rows: dict[str, dict], setup: dict) -> None:
    """Print the table and write ``benchmarks/results/sae.json``."""
    print(f"\n{setup['run']} {setup['checkpoint']} layer {setup['layer']}: "
          f"{setup['train_tokens']:,} training / {setup['heldout_tokens']:,} held-out tokens, "
          f"{setup['threads']} torch threads, load {setup['load_average']:.1f}")  # fmt: skip
    header = f"{'row':10s} {'arch':10s} {'batch':>6s} {'trainer':10s} {'tokens/s':>9s} "
    print(header + f"{'vs SAELens':>10s} {'FVU':>7s} {'L0':>7s} {'dead':>6s}")
    for name, pair in rows.items():
        base = pair["SAELens"].get("tokens_per_s")
        for trainer, row in pair.items():
            lead = f"{name:10s} {pair['settings']['architecture']:10s} "
            lead += f"{pair['settings']['batch']:>6d} {trainer:10s}"
            if trainer == "settings":
                continue
            if "error" in row:
                print(f"{lead} {'-':>9s} ({row['error']})")
                continue
            ratio = f"{row['tokens_per_s'] / base:.2f}x" if base else "-"
            print(f"{lead} {row['tokens_per_s']:>9,.0f} {ratio:>10s} {row['fvu']:>7.4f} "
                  f"{row['l0']:>7.1f} {row['dead']:>6.3f}")  # fmt: skip
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / "sae.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"setup": setup, "results": rows}, indent=2))
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="runs/quick", help="a run with its activation store")
    parser.add_argument("--checkpoint", default="final")
    parser.add_argument("--layer", type=int, default=-1, help="-1: the last layer")
    parser.add_argument("--tokens", type=int, default=400_000, help="training tokens per row")
    parser.add_argument("--batch", type=int, default=4096, help="batch of the architecture rows")
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--dead-tokens", type=int, default=200_000)
    parser.add_argument("--out", default=None, help="default: benchmarks/results/sae.json")
    parser.add_argument("--l1", type=float, default=1e-3, help="relu rows' l1_coefficient")
    parser.add_argument("--l0", type=float, default=1.0, help="jumprelu rows' l0_coefficient")
    parser.add_argument(
        "--saelens-l0", type=float, default=None,
        help="SAELens's jumprelu l0_coefficient (default: --l0), to compare at equal L0",
    )  # fmt: skip
    parser.add_argument(
        "--saelens-l1", type=float, default=None,
        help="SAELens's relu l1_coefficient (default: --l1), to compare at equal L0",
    )  # fmt: skip
    parser.add_argument(
        "--saelens-decoder-norm", type=float, default=None,
        help="SAELens's jumprelu decoder_init_norm (default: its own, 0.1); 1 is layerdrift's",
    )  # fmt: skip
    parser.add_argument("--rows", nargs="*", default=["preset", *ARCHITECTURES])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--saelens-python", default=sys.executable)
    parser.add_argument("--saelens-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.saelens_worker:
        print("RESULT " + json.dumps(saelens_worker(args.saelens_worker)))
        return
    sys.path.insert(0, str(ROOT))
    from layerdrift.storage import RunDir, open_store

    n_layers = open_store(RunDir(args.run).activations()).sizes["layer"]
    layer = args.layer if args.layer >= 0 else n_layers - 1
    data, x_eval, cfg = load_layer(args.run, args.checkpoint, layer)
    tmp = tempfile.mkdtemp(prefix="sae-bench-")
    np.save(f"{tmp}/data.npy", data)
    np.save(f"{tmp}/eval.npy", x_eval)
    jobs = make_jobs(args, cfg, data.shape[1])
    rows: dict[str, dict] = {}
    for name in args.rows:  # side by side, so a busy machine slows both alike
        job = jobs[name] | {"data": f"{tmp}/data.npy", "eval": f"{tmp}/eval.npy"}
        rows[name] = {"settings": jobs[name], "layerdrift": layerdrift_run(data, x_eval, job)}
        rows[name]["SAELens"] = run_saelens(args.saelens_python, job, tmp)
    setup = {
        "run": args.run, "checkpoint": args.checkpoint, "layer": layer,
        "train_tokens": len(data), "heldout_tokens": len(x_eval), "tokens": args.tokens,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "device": "cpu",
        "load_average": os.getloadavg()[0],
    }  # fmt: skip
    report(args, rows, setup)


if __name__ == "__main__":
    main()
