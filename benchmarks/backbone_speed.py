"""Speed of our backbone against transformers' model with the same weights, on CPU.

Run (from the repository root; takes several minutes for both presets and both dtypes):

    .venv/bin/python benchmarks/backbone_speed.py
    .venv/bin/python benchmarks/backbone_speed.py --presets hubert_base --dtypes fp32 --json out.json

For each base preset, ours is built (seeded), exported with ``export_pretrained`` and loaded back
with ``transformers.AutoModel`` (HubertModel / Data2VecAudioModel, SDPA attention), so both models
hold identical weights. Both run with LayerDrop off (``layerdrop=0``, so all 12 blocks run on every
step; LayerDrop would only add noise to the timings) and transformers' SpecAugment off (ours does
no masking without a mask argument); dropout stays as configured, in train mode for both.

Input: random waveform (batch, seconds * 16000), no padding. Steps:

- eval:  ``torch.no_grad()`` forward in eval mode, all hidden states returned.
- train: forward in train mode, loss = sum over all L+1 hidden states of mean(h.float() ** 2),
  backward, zero grads (no optimizer step).
- bf16:  the forward (of either model) runs under ``torch.autocast("cpu", dtype=torch.bfloat16)``.

What the numbers mean:

- ours s / hf s: median wall time of one step over ``--steps`` timed rounds (after one warm-up).
  Within a mode (eval or train) every model x dtype runs once per round (ours fp32, hf fp32,
  ours bf16, hf bf16, then again), so a busy machine slows all of them alike.
- hf/ours: median over rounds of (hf time / ours time) in the same round: > 1 means ours is
  faster. The target lines use the same per-round ratio (ours bf16 against hf fp32 of the
  same round). spread: slowest / fastest step of that mode among all models and dtypes,
  a noise indicator (ratios stay meaningful when absolute times do not).
- GFLOP: model FLOPs per step counted from the layer shapes (``model_flops``): convolutions,
  linear layers and attention matmuls only (norms, activations, softmax ignored); train = 3x
  forward (backward ~ 2x forward). The same figure is used for both models.
- MFU: (GFLOP / step time) / matmul peak of the same dtype, where the peak is measured in this run
  as the GFLOP/s of a 2048 x 2048 @ 2048 x 2048 matmul (fp32, or bf16 tensors for bf16) at the same
  thread count: the median of samples taken at the start and after every timed round, so the
  peak sees the same machine load as the model steps.
- mem GB: peak resident memory of one step above the resident memory right after the model is
  built, measured in a fresh worker subprocess per (model, preset, dtype, mode) (warm-up step +
  one step; the process high-water mark VmHWM minus the post-build VmRSS). Includes activations,
  gradients and allocator slack, not the weights themselves.

Targets (printed with PASS/MISS): ours fp32 train at least as fast as transformers' fp32 train;
ours bf16-autocast train at least 1.5x faster than transformers' fp32 train.
``--device cuda`` runs both models on the GPU (autocast on CUDA, steps timed up to
``torch.cuda.synchronize``, the matmul peak measured there, no RSS memory workers).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from musicssl.models.backbone import Backbone, count_parameters
from musicssl.models.backbone_config import BackboneConfig, backbone_preset

SAMPLE_RATE = 16_000
SEED = 0
MATMUL_SIZE = 2048
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEVICE = torch.device("cpu")  # --device


# ---------------------------------------------------------------------------------------------
# FLOPs from layer shapes


def conv_frames(num_samples: int, conv_layers) -> list[int]:
    """Output length of each CNN layer (no padding)."""
    frames, length = [], num_samples
    for _, kernel, stride in conv_layers:
        length = (length - kernel) // stride + 1
        frames.append(length)
    return frames


def model_flops(config: BackboneConfig, batch: int, num_samples: int, train: bool) -> float:
    """Multiply-add FLOPs (2 per MAC) of one step; norms/activations/softmax ignored; train = 3x."""
    flops, in_channels = 0.0, 1
    frames = conv_frames(num_samples, config.conv_layers)
    for (channels, kernel, _), t_out in zip(config.conv_layers, frames):
        flops += 2 * in_channels * channels * kernel * t_out
        in_channels = channels
    t, d, f = frames[-1], config.dim, config.ffn_dim
    flops += 2 * in_channels * d * t  # feature projection
    flops += config.pos_conv_depth * 2 * d * (d // config.pos_conv_groups) * config.pos_conv_kernel * t
    per_block = 4 * 2 * d * d * t + 2 * 2 * t * t * d + 2 * 2 * d * f * t
    flops += config.num_layers * per_block
    return batch * flops * (3 if train else 1)


# ---------------------------------------------------------------------------------------------
# models and steps


def bench_config(preset: str) -> BackboneConfig:
    return dataclasses.replace(backbone_preset(preset), layerdrop=0.0)


def build_ours(preset: str) -> Backbone:
    torch.manual_seed(SEED)
    return Backbone(bench_config(preset))


def load_hf(directory: str | Path):
    import transformers

    transformers.utils.logging.disable_progress_bar()
    return transformers.AutoModel.from_pretrained(
        str(directory), attn_implementation="sdpa", layerdrop=0.0, apply_spec_augment=False)


def hidden_states(model, wav: torch.Tensor) -> tuple[torch.Tensor, ...]:
    if isinstance(model, Backbone):
        return model(wav).layers
    return model(wav, output_hidden_states=True).hidden_states


def autocast(dtype: str):
    return torch.autocast(DEVICE.type, dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()


def eval_step(model, wav: torch.Tensor, dtype: str) -> None:
    model.eval()
    with torch.no_grad(), autocast(dtype):
        hidden_states(model, wav)


def train_step(model, wav: torch.Tensor, dtype: str) -> None:
    model.train()
    with autocast(dtype):
        states = hidden_states(model, wav)
    loss = sum(h.float().pow(2).mean() for h in states)
    loss.backward()
    model.zero_grad(set_to_none=True)


STEPS = {"eval": eval_step, "train": train_step}


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)  # kernels are queued: the step ends when the device is done
    return time.perf_counter() - start


def time_round_robin(models: dict, wav: torch.Tensor, dtypes: list[str], mode: str, steps: int,
                     peak_samples: dict[str, list[float]]) -> dict[tuple[str, str], list[float]]:
    """Seconds per step of every (impl, dtype): one warm-up each, then `steps` rounds in which
    every combination runs once (so load changes hit all alike), plus one matmul-peak sample
    per dtype per round."""
    step = STEPS[mode]
    combos = [(impl, dtype) for dtype in dtypes for impl in models]
    for impl, dtype in combos:
        step(models[impl], wav, dtype)
    times = {combo: [] for combo in combos}
    for _ in range(steps):
        for impl, dtype in combos:
            times[impl, dtype].append(timed(step, models[impl], wav, dtype))
        for dtype in dtypes:
            peak_samples[dtype].append(matmul_gflops(DTYPES[dtype]))
    return times


def median_ratio(slow: list[float], fast: list[float]) -> float:
    """Median over rounds of slow[i] / fast[i] (times from the same round)."""
    return statistics.median(a / b for a, b in zip(slow, fast))


def random_wav(batch: int, seconds: float) -> torch.Tensor:
    generator = torch.Generator().manual_seed(SEED + 1)
    return torch.randn(batch, int(seconds * SAMPLE_RATE), generator=generator)


# ---------------------------------------------------------------------------------------------
# matmul peak and machine info


def matmul_gflops(dtype: torch.dtype, size: int = MATMUL_SIZE, repeats: int = 3) -> float:
    """GFLOP/s of a size^3 matmul in `dtype` (median of `repeats`, after one untimed)."""
    a, b = torch.randn(size, size, device=DEVICE).to(dtype), torch.randn(size, size, device=DEVICE).to(dtype)
    a @ b
    seconds = statistics.median(timed(torch.matmul, a, b) for _ in range(repeats))
    return 2 * size ** 3 / seconds / 1e9


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def header(threads: int) -> str:
    import transformers

    return "\n".join([
        f"date          {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"cpu           {cpu_name()} ({os.cpu_count()} logical cores visible)",
        f"torch         {torch.__version__}   transformers {transformers.__version__}   python {platform.python_version()}",
        f"threads       {threads} (torch.set_num_threads)",
        f"load average  {load_average()} at start (other processes slow every step; see 'spread')",
    ])


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


# ---------------------------------------------------------------------------------------------
# peak memory: one worker subprocess per (impl, preset, dtype, mode)


def rss_gb(field: str) -> float:
    """VmRSS (current) or VmHWM (peak) of this process, in GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / 1e9
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(args: argparse.Namespace) -> None:
    """Build one model, record RSS, run warm-up + one step, print the peak above it as JSON."""
    torch.set_num_threads(args.threads)
    model = build_ours(args.preset) if args.impl == "ours" else load_hf(args.hf_dir)
    wav = random_wav(args.batch, args.seconds)
    baseline = rss_gb("VmRSS")
    for _ in range(2):
        STEPS[args.mode](model, wav, args.dtype)
    print(json.dumps({"peak_gb": rss_gb("VmHWM") - baseline, "baseline_gb": baseline}))


def measure_memory(impl: str, preset: str, dtype: str, mode: str, hf_dir: str,
                   args: argparse.Namespace) -> float | None:
    command = [sys.executable, __file__, "--_worker", "--impl", impl, "--presets", preset,
               "--dtypes", dtype, "--mode", mode, "--hf-dir", hf_dir, "--batch", str(args.batch),
               "--seconds", str(args.seconds), "--threads", str(args.threads)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"  memory worker failed ({impl} {preset} {dtype} {mode}): {result.stderr.strip()[-500:]}")
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_gb"]


# ---------------------------------------------------------------------------------------------
# main


def run_preset(preset: str, args: argparse.Namespace, peak_samples: dict[str, list[float]]) -> list[dict]:
    ours = build_ours(preset).to(DEVICE)
    wav = random_wav(args.batch, args.seconds).to(DEVICE)
    rows = []
    with tempfile.TemporaryDirectory() as hf_dir:
        from musicssl.interop.huggingface import export_pretrained

        export_pretrained(ours, hf_dir)
        models = {"ours": ours, "hf": load_hf(hf_dir).to(DEVICE)}
        print(f"\n{preset}: ours {count_parameters(ours):,} params, {type(models['hf']).__name__} "
              f"{count_parameters(models['hf']):,} params (layerdrop 0, SpecAugment off, sdpa)", flush=True)
        times = {mode: time_round_robin(models, wav, args.dtypes, mode, args.steps, peak_samples)
                 for mode in ("eval", "train")}
        for dtype in args.dtypes:
            for mode in ("eval", "train"):
                ours_t, hf_t = times[mode]["ours", dtype], times[mode]["hf", dtype]
                every = [t for combo_times in times[mode].values() for t in combo_times]
                row = {"preset": preset, "dtype": dtype, "mode": mode,
                       "ours_s": statistics.median(ours_t), "hf_s": statistics.median(hf_t),
                       "ratio": median_ratio(hf_t, ours_t), "spread": max(every) / min(every),
                       "gflop": model_flops(ours.config, args.batch, wav.shape[1], mode == "train") / 1e9,
                       "ours_times": ours_t, "hf_times": hf_t}
                if "fp32" in args.dtypes and mode == "train":
                    row["hf_fp32_over_ours"] = median_ratio(times[mode]["hf", "fp32"], ours_t)
                if not args.no_memory:
                    row["ours_mem_gb"] = measure_memory("ours", preset, dtype, mode, hf_dir, args)
                    row["hf_mem_gb"] = measure_memory("hf", preset, dtype, mode, hf_dir, args)
                print("  " + format_progress(row), flush=True)
                rows.append(row)
    return rows


def format_progress(row: dict) -> str:
    return (f"{row['preset']} {row['dtype']} {row['mode']}: ours {row['ours_s']:.3f} s, "
            f"hf {row['hf_s']:.3f} s, hf/ours {row['ratio']:.2f}x")


def add_mfu(rows: list[dict], peaks: dict[str, float]) -> None:
    for row in rows:
        peak = peaks[row["dtype"]]
        row["ours_mfu"] = row["gflop"] / row["ours_s"] / peak
        row["hf_mfu"] = row["gflop"] / row["hf_s"] / peak


COLUMNS = (f"{'preset':<14} {'dtype':<5} {'mode':<5} {'ours s':>7} {'hf s':>7} {'hf/ours':>7} {'spread':>6} "
           f"{'GFLOP':>6} {'MFU ours':>8} {'MFU hf':>7} {'mem ours':>8} {'mem hf':>7}")


def format_row(row: dict) -> str:
    gb = lambda value: "  n/a" if value is None else f"{value:5.2f}"
    return (f"{row['preset']:<14} {row['dtype']:<5} {row['mode']:<5} {row['ours_s']:7.3f} "
            f"{row['hf_s']:7.3f} {row['ratio']:6.2f}x {row['spread']:5.2f}x {row['gflop']:6.0f} "
            f"{row['ours_mfu']:8.1%} {row['hf_mfu']:7.1%} {gb(row.get('ours_mem_gb')):>6}GB "
            f"{gb(row.get('hf_mem_gb')):>5}GB")


def target_lines(rows: list[dict]) -> list[str]:
    lines = []
    for row in rows:
        if row["mode"] != "train" or "hf_fp32_over_ours" not in row:
            continue
        ratio = row["hf_fp32_over_ours"]
        if row["dtype"] == "fp32":
            lines.append(f"{row['preset']}: fp32 train: ours vs transformers fp32 = {ratio:.2f}x "
                         f"(target >= 1.0) {'PASS' if ratio >= 1.0 else 'MISS'}")
        else:
            lines.append(f"{row['preset']}: bf16 train (ours) vs transformers fp32 train = {ratio:.2f}x "
                         f"(target >= 1.5) {'PASS' if ratio >= 1.5 else 'MISS'}")
    return lines


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["hubert_base", "data2vec_base"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model after 1 warm-up")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory workers")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (cuda: no RSS memory workers)")
    # internal: the peak-memory worker
    parser.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=["ours", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=list(STEPS), help=argparse.SUPPRESS)
    parser.add_argument("--hf-dir", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args._worker:
        args.preset, args.dtype = args.presets[0], args.dtypes[0]
        return worker(args)
    torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = torch.device(args.device)
    args.no_memory = args.no_memory or DEVICE.type != "cpu"  # RSS says nothing about GPU memory
    print(header(args.threads) + f"\ndevice        {DEVICE}"
          + (f" ({torch.cuda.get_device_name(DEVICE)})" if DEVICE.type == "cuda" else ""))
    print(f"input         batch {args.batch} x {args.seconds:g} s ({int(args.seconds * SAMPLE_RATE)} samples), "
          f"{args.steps} timed rounds after 1 warm-up, medians; every model x dtype of a mode interleaved")
    peak_samples = {name: [matmul_gflops(DTYPES[name], repeats=5)] for name in args.dtypes}
    rows = [row for preset in args.presets for row in run_preset(preset, args, peak_samples)]
    peaks = {name: statistics.median(samples) for name, samples in peak_samples.items()}
    add_mfu(rows, peaks)
    print("\nmatmul peak   " + "   ".join(
        f"{name} {peaks[name]:.0f} GFLOP/s (samples {min(s):.0f}-{max(s):.0f})" for name, s in peak_samples.items())
        + f"  ({MATMUL_SIZE}^3 matmul, median of samples taken between rounds)")
    print("\n" + COLUMNS)
    for row in rows:
        print(format_row(row))
    print("\nhf/ours = median over rounds of hf time / ours time (> 1: ours faster); spread = slowest / fastest"
          "\nstep among all models and dtypes of that mode (> ~1.3: the machine was busy; trust ratios over"
          "\nabsolute times); mem = peak RSS of a step above the built model.")
    for line in target_lines(rows):
        print(line)
    print(f"load average  {load_average()} at the end")
    if args.json:
        meta = {"torch": torch.__version__, "threads": args.threads, "batch": args.batch,
                "seconds": args.seconds, "steps": args.steps, "matmul_peak_gflops": peaks,
                "matmul_samples_gflops": peak_samples}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
