"""Peak memory of pooled feature extraction (`extract --pool mean`): a long track against a 1-minute one.

    .venv/bin/python benchmarks/extract_memory.py [--preset hubert_tiny] [--long-minutes 180] [--device cpu]

Each measurement runs in a fresh subprocess: build the model (random weights), extract the time
mean of every hidden state of a generated track (`Encoder.extract_mean`, what `--pool mean` runs,
chunks of 30 s), and report the process's peak resident memory (VmHWM) above its resident memory
after the model was built and warmed up. The decoded track itself grows with its length (16 kHz
float32: 691 MB for 3 hours) and is shown apart; everything else is the working memory, which the
running sum keeps flat: the ratio long / 1 min should be about 1 (target: within 1.2x). Holding
the (K, T, D) frames before pooling instead took 1.66 GB for 3 hours of the tiny model.
With `--device cuda` the peak is torch.cuda.max_memory_allocated above the model's allocation.

Measured (defaults, AMD EPYC, 2 threads, a machine shared with other jobs): 1 min peak 73.3 MB
(input 3.7, working 69.6); 180 min peak 732.5 MB (input 659.2, working 73.4): working 1.05x.
The decoded track is still held whole (decoding and waveform normalisation see the whole file).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def rss_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(preset: str, minutes: float, chunk_seconds: float, device: str) -> None:
    import numpy as np
    import torch

    from musicssl.extract import Encoder
    from musicssl.models.backbone import Backbone
    from musicssl.models.backbone_config import backbone_preset

    torch.set_num_threads(2)
    torch.manual_seed(0)
    encoder = Encoder(Backbone(backbone_preset(preset)), device=device)
    encoder.extract_mean(np.zeros(16000 * 40, np.float32), 16000, chunk_seconds=chunk_seconds)  # warm-up: 2 chunks
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated() / 2**20 if cuda else rss_mb("VmRSS")
    samples = int(16000 * 60 * minutes)
    wav = np.empty(samples, np.float32)  # filled a block at a time: no float64 track-sized temporary
    rng = np.random.default_rng(0)
    for start in range(0, samples, 1 << 22):
        wav[start:start + (1 << 22)] = 0.1 * rng.standard_normal(min(1 << 22, samples - start), dtype=np.float32)
    started = time.perf_counter()
    pooled = encoder.extract_mean(wav, 16000, chunk_seconds=chunk_seconds)  # (K, D)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else rss_mb("VmHWM")
    input_mb = 0.0 if cuda else wav.nbytes / 2**20  # on a GPU only chunks are moved to the device
    print(json.dumps({"peak_above_model_mb": peak - baseline, "input_mb": input_mb, "seconds": seconds,
                      "layers": pooled.shape[0]}))


def measure(preset: str, minutes: float, chunk_seconds: float, device: str) -> dict:
    result = subprocess.run([sys.executable, __file__, "--worker", "--preset", preset, "--minutes", str(minutes),
                             "--chunk-seconds", str(chunk_seconds), "--device", device],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="hubert_tiny")
    parser.add_argument("--chunk-seconds", type=float, default=30.0)
    parser.add_argument("--long-minutes", type=float, default=180.0, help="the long track (default: 3 hours)")
    parser.add_argument("--minutes", type=float, default=None, help=argparse.SUPPRESS)  # the worker's track
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.preset, args.minutes, args.chunk_seconds, args.device)
        return
    rows = measure_lengths(args.preset, args.chunk_seconds, args.device, (1.0, args.long_minutes))
    print(f"{args.preset}, --pool mean over all {rows[1.0]['layers']} hidden states, chunks of "
          f"{args.chunk_seconds:g} s, 2 threads, {args.device}")
    for minutes, row in rows.items():
        print(f"  {minutes:6.0f} min: peak {row['peak_above_model_mb']:7.1f} MB above the model "
              f"(decoded input {row['input_mb']:.1f} MB, working {row['working_mb']:.1f} MB), {row['seconds']:.0f} s")
    print(f"  working memory {args.long_minutes:g} min / 1 min: "
          f"{rows[args.long_minutes]['working_mb'] / max(rows[1.0]['working_mb'], 1e-9):.2f}x (flat = about 1, target <= 1.2)")


def measure_lengths(preset: str, chunk_seconds: float, device: str,
                    lengths: tuple[float, float] = (1.0, 180.0)) -> dict[float, dict]:
    """One worker per track length (minutes); each row also gets working_mb = peak - decoded input."""
    rows = {minutes: measure(preset, minutes, chunk_seconds, device) for minutes in lengths}
    for row in rows.values():
        row["working_mb"] = row["peak_above_model_mb"] - row["input_mb"]
    return rows


if __name__ == "__main__":
    main()
