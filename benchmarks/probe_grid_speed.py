"""Probe grid speed: every run of a task's grid trained at once (probe_grid.train_grid) against
the same runs one by one (probe.train_run), in the same run, for the same fixed number of epochs.

    .venv/bin/python benchmarks/probe_grid_speed.py [--device cpu] [--threads 2]
        [--small-items 300] [--small-epochs 10] [--mtt-fraction 1.0] [--mtt-epochs 1]

Both paths train the same grid: every layer plus the weighted sum, MARBLE's 6 learning rates, 3
seeds, batch 64, hidden 512, dropout 0.2, early stopping off (patience past the last epoch, so the
sequential baseline finishes; ReduceLROnPlateau stays on), validation every epoch, and the final
valid and test scores of every run. The features are generated tables (float16, as cached):
(a) small: a 10-class task of `--small-items` training items (a third of that for valid and for
    test) at the `tiny` backbone's width: 5 states of 128 (the demo's regime: per-run overhead);
(b) MTT-size: 18,706 / 1,825 / 5,329 clips (x `--mtt-fraction`), 50 tags, 13 states of 768 per
    clip (the MTT protocol probes the whole clip: one row each), where the matmuls dominate.
Each (size, path) runs in its own process, so its peak memory (max RSS, or CUDA's peak
allocation) is its own. MFU: the floating-point operations the batched path must do (forward,
weight gradients, the input gradients the weighted sums and second layers need; validation and
test forwards) per second, against the fp32 matmul peak measured here (a 2048^3 GEMM, best of 5).
On a GPU the timings synchronise the device; no GPU figure has been measured yet.

Measured (AMD EPYC, 2 cores, torch capability AVX2, 2 threads, quiet machine, 2026-12-03), the
defaults: small 9.2 s -> 1.7 s (5.4x); MTT 257.6 s -> 105.5 s (2.44x), MFU 55 % of 176.4
GFLOP/s; peak memory 3.03 GB sequential, batched 1.03 GB + 2 forked workers of <= 3.19 GB.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time
from pathlib import Path

import numpy as np
import torch

LEARNING_RATES = (5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2)
SEEDS = (1234, 1235, 1236)
SMALL = {"layers": 5, "dim": 128, "classes": 10}
MTT = {"layers": 13, "dim": 768, "tags": 50, "splits": (18_706, 1_825, 5_329)}


def table(rows: int, layers: int, dim: int, signal: np.ndarray, seed: int) -> np.ndarray:
    """(rows, layers, dim) float16: noise, plus `signal` (rows, dim) growing with depth."""
    rng = np.random.default_rng(seed)
    out = np.empty((rows, layers, dim), dtype=np.float16)
    for layer in range(layers):
        out[:, layer] = rng.standard_normal((rows, dim), dtype=np.float32) + signal * (layer / layers)
    return out


def make_task(size: str, amount: float):
    """(task, [train, valid, test] CachedFeatures) of generated rows."""
    from musicssl.evaluate.features import CachedFeatures
    from musicssl.evaluate.tasks.base import Item, Protocol, Task

    class Generated(Task):
        default_dir, source = "generated", "benchmarks/probe_grid_speed.py"

        def load(self, root, **options):
            raise NotImplementedError

    task = Generated()
    rng = np.random.default_rng(0)
    if size == "small":
        task.protocol = Protocol(name="small", title="Small", kind="multiclass", metrics=("accuracy",),
                                 outputs=tuple(f"c{i}" for i in range(SMALL["classes"])))
        counts, dim, layers = (int(amount), int(amount) // 3, int(amount) // 3), SMALL["dim"], SMALL["layers"]
    else:
        task.protocol = Protocol(name="mtt", title="MTT", kind="multilabel", metrics=("roc_auc", "ap"),
                                 outputs=tuple(f"t{i}" for i in range(MTT["tags"])))
        counts, dim, layers = [max(64, int(n * amount)) for n in MTT["splits"]], MTT["dim"], MTT["layers"]
    mixing = rng.standard_normal((dim, len(task.protocol.outputs))).astype(np.float32) / np.sqrt(dim)
    splits = []
    for seed, n in enumerate(counts):
        latent = rng.standard_normal((n, dim)).astype(np.float32)
        scores = latent @ mixing
        if size == "small":
            targets = [int(k) for k in scores.argmax(1)]
        else:  # tags of ~10 % prevalence
            targets = list((scores > np.quantile(scores, 0.9, axis=0)).astype(np.float32))
        items = [Item(key=f"{seed}-{i}", path=Path("generated"), target=targets[i]) for i in range(n)]
        splits.append(CachedFeatures(rows=table(n, layers, dim, 2 * latent, seed), spans=[(i, 1) for i in range(n)],
                                     items=items))
    return task, splits


def grid_config(epochs: int, device: str):
    from musicssl.evaluate.probe_protocol import ProbeConfig

    return ProbeConfig(learning_rates=LEARNING_RATES, seeds=SEEDS, max_epochs=epochs,
                       early_stop_patience=epochs + 1, device=device)


def sequential(task, splits, config) -> None:
    """probe_task's sequential path on in-memory rows: per layer choice, every (lr, seed) run."""
    from musicssl.evaluate.features import CachedFeatures
    from musicssl.evaluate.probe import train_run
    from musicssl.evaluate.probe_protocol import layer_choices, split_data, standardiser

    num_layers = splits[0].rows.shape[1]
    for layer in layer_choices(num_layers, None):
        chosen = [CachedFeatures(rows=np.ascontiguousarray(c.rows[:, 1:] if layer == "weighted" else c.rows[:, layer]),
                                 spans=c.spans, items=c.items) for c in splits]
        mean, std = standardiser(chosen[0].rows)
        data = [split_data(task, c, 50.0, 1, mean, std) for c in chosen]
        for lr in config.learning_rates:
            for seed in config.seeds:
                train_run(task, *data, layer=layer, learning_rate=lr, seed=seed, config=config, fps=50.0)


def batched(task, splits, config) -> None:
    from musicssl.evaluate.probe_protocol import layer_choices, row_targets
    from musicssl.evaluate.probe_grid import GridSplit, train_grid

    grid = [GridSplit(c.rows, *row_targets(task, c, 50.0, 1), c.items) for c in splits]
    train_grid(task, *grid, layers=layer_choices(splits[0].rows.shape[1], None), config=config, fps=50.0)


def measure(job: tuple) -> tuple[float, float, float]:
    """One (size, path) in this (child) process: (seconds, peak memory in GB of this process, and
    of the largest of the processes it forked: the batched grid's CPU workers)."""
    size, path, amount, epochs, device, threads = job
    import musicssl.evaluate.probe_grid  # noqa: F401  (imports are not what is measured:
    torch.optim.SGD([torch.zeros(1, requires_grad=True)])  # the first optimiser imports torch._dynamo, ~10 s)

    torch.set_num_threads(threads)
    task, splits = make_task(size, amount)
    config = grid_config(epochs, device)
    synchronize(device)
    started = time.perf_counter()
    (batched if path == "batched" else sequential)(task, splits, config)
    synchronize(device)
    seconds = time.perf_counter() - started
    if device.startswith("cuda"):
        return seconds, torch.cuda.max_memory_allocated() / 1e9, 0.0
    # KB on Linux; a forked worker's pages shared with this process count in both
    return (seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(device: str, threads: int, size: int = 2048, dtype: torch.dtype = torch.float32) -> float:
    """Best GEMM throughput in `dtype` of 5 (after one untimed), in FLOP/s."""
    torch.set_num_threads(threads)
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    best = 0.0
    for _ in range(6):
        synchronize(device)
        started = time.perf_counter()
        a @ b
        synchronize(device)
        best = max(best, 2 * size ** 3 / (time.perf_counter() - started))
    return best


def grid_flops(rows: tuple[int, int, int], layers: int, dim: int, outputs: int, epochs: int,
               hidden: int = 512) -> float:
    """FLOPs the batched grid must do: per probe and training row, the first layer's forward and
    weight gradient (4 D H), the second layer's forward, weight and input gradients (6 H C); a
    weighted probe also mixes its K-1 layers and back (4 (K-1) D) and needs its first layer's
    input gradient (2 D H). Validation rows every epoch and once at the end, test rows once:
    forwards (2 D H + 2 H C, weighted + 2 (K-1) D)."""
    train, valid, test = rows
    per_lr_seed = len(LEARNING_RATES) * len(SEEDS)
    single, weighted = layers * per_lr_seed, per_lr_seed
    train_row = single * (4 * dim * hidden + 6 * hidden * outputs) + weighted * (
        6 * dim * hidden + 6 * hidden * outputs + 4 * (layers - 1) * dim)
    eval_row = (single + weighted) * (2 * dim * hidden + 2 * hidden * outputs) + weighted * 2 * (layers - 1) * dim
    return epochs * train * train_row + ((epochs + 1) * valid + test) * eval_row


def run_sizes(device: str, threads: int, small_items: int, small_epochs: int, mtt_fraction: float,
              mtt_epochs: int, mtt_sequential: bool = True) -> dict:
    """Seconds of every (size, path), each in its own spawned process, the fp32 matmul peak and the
    batched MTT grid's FLOPs; prints each measurement as it comes. `mtt_sequential=False` skips
    the slowest of them (252 runs one by one), for a quick check of the paths alone."""
    context = multiprocessing.get_context("spawn")
    results = {}
    for size, amount, epochs in (("small", small_items, small_epochs), ("MTT", mtt_fraction, mtt_epochs)):
        for path in ("sequential", "batched"):
            if (size, path) == ("MTT", "sequential") and not mtt_sequential:
                continue
            with context.Pool(1) as pool:
                seconds, memory, workers = pool.apply(measure, ((size.lower(), path, amount, epochs, device,
                                                                 threads),))
            results[size, path] = seconds
            forked = f" + forked workers of at most {workers:.2f} GB each" if workers else ""
            print(f"{size} {path}: {seconds:.1f} s, peak memory {memory:.2f} GB{forked}", flush=True)
    with context.Pool(1) as pool:
        peak = pool.apply(matmul_peak, (device, threads))
    rows = tuple(max(64, int(n * mtt_fraction)) for n in MTT["splits"])
    flops = grid_flops(rows, MTT["layers"], MTT["dim"], MTT["tags"], mtt_epochs)
    return {"seconds": results, "peak": peak, "rows": rows, "flops": flops,
            "mfu": flops / results["MTT", "batched"] / peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--small-items", type=int, default=300)
    parser.add_argument("--small-epochs", type=int, default=10)
    parser.add_argument("--mtt-fraction", type=float, default=1.0, help="of MTT's clips in every split")
    parser.add_argument("--mtt-epochs", type=int, default=1)
    args = parser.parse_args()
    measured = run_sizes(args.device, args.threads, args.small_items, args.small_epochs, args.mtt_fraction,
                         args.mtt_epochs)
    results, peak, rows, flops = measured["seconds"], measured["peak"], measured["rows"], measured["flops"]
    achieved = flops / results["MTT", "batched"]
    print(f"fp32 matmul peak ({args.threads} threads, {args.device}): {peak / 1e9:.1f} GFLOP/s; "
          f"batched MTT grid: {flops / 1e12:.2f} TFLOP in {results['MTT', 'batched']:.1f} s = {achieved / 1e9:.1f} GFLOP/s")
    print(f"MTT rows {rows[0]}/{rows[1]}/{rows[2]} (fraction {args.mtt_fraction}), {args.mtt_epochs} epoch(s); "
          f"small: {args.small_items} items, {args.small_epochs} epochs; device {args.device}, {args.threads} threads")
    small_s, small_b = results["small", "sequential"], results["small", "batched"]
    mtt_s, mtt_b = results["MTT", "sequential"], results["MTT", "batched"]
    print(f"probe grid (small): sequential {small_s:.1f} s, batched {small_b:.1f} s, speed-up {small_s / small_b:.1f} x")
    print(f"probe grid (MTT): sequential {mtt_s:.1f} s, batched {mtt_b:.1f} s, speed-up {mtt_s / mtt_b:.1f} x, "
          f"MFU {100 * achieved / peak:.0f} %")


if __name__ == "__main__":
    main()
