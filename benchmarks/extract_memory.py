"""Peak memory of chunked feature extraction: a 10-minute track against a 1-minute one.

    .venv/bin/python benchmarks/extract_memory.py [--preset hubert_base] [--layer 12] [--device cpu]

Each measurement runs in a fresh subprocess: build the model (random weights), extract one
hidden state of a generated track with `chunk_seconds=30`, report the process's peak resident
memory (VmHWM) above its resident memory after the model was built and warmed up. The output
itself grows with the track (T x D floats: 30,000 x 768 x 4 B = 92 MB for 10 minutes at 50 Hz),
so the figure printed is also shown without it. Chunking keeps the rest flat: the ratio of
working memory (peak minus output) for 10 min vs 1 min should be about 1. With `--device cuda`
the figure is the device's peak allocation (torch.cuda.max_memory_allocated) above the model's
(the input and output columns stay their host sizes); not measured on a GPU yet.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def rss_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(preset: str, minutes: float, layer: int, chunk_seconds: float, device: str) -> None:
    import numpy as np
    import torch

    from musicssl.extract import Encoder
    from musicssl.models.backbone import Backbone
    from musicssl.models.backbone_config import backbone_preset

    torch.set_num_threads(2)
    torch.manual_seed(0)
    encoder = Encoder(Backbone(backbone_preset(preset)), device=device)
    encoder.extract(np.zeros(16000 * 5, np.float32), 16000, layers=[layer])  # warm-up
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated() / 2**20 if cuda else rss_mb("VmRSS")
    wav = (0.1 * np.random.default_rng(0).standard_normal(int(16000 * 60 * minutes))).astype(np.float32)
    features = encoder.extract(wav, 16000, layers=[layer], chunk_seconds=chunk_seconds)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else rss_mb("VmHWM")
    output_mb = features.numel() * 4 / 2**20
    input_mb = wav.nbytes / 2**20
    print(json.dumps({"peak_above_model_mb": peak - baseline, "output_mb": output_mb,
                      "input_mb": input_mb, "frames": features.shape[1]}))


def measure(preset: str, minutes: float, layer: int, chunk_seconds: float, device: str) -> dict:
    result = subprocess.run([sys.executable, __file__, "--worker", "--preset", preset, "--minutes", str(minutes),
                             "--layer", str(layer), "--chunk-seconds", str(chunk_seconds), "--device", device],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="hubert_base")
    parser.add_argument("--layer", type=int, default=12)
    parser.add_argument("--chunk-seconds", type=float, default=30.0)
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", action="store_true")
    args = parser.parse_args()
    if args.worker:
        worker(args.preset, args.minutes, args.layer, args.chunk_seconds, args.device)
        return
    rows = measure_lengths(args.preset, args.layer, args.chunk_seconds, args.device)
    print(f"{args.preset}, layer {args.layer}, chunks of {args.chunk_seconds:g} s, 2 threads, {args.device}")
    for minutes, row in rows.items():
        print(f"  {minutes:4.0f} min: peak {row['peak_above_model_mb']:7.1f} MB above the model "
              f"(input {row['input_mb']:.1f} MB, output {row['output_mb']:.1f} MB, working {row['working_mb']:.1f} MB)")
    work = [row["working_mb"] for row in rows.values()]
    print(f"  working memory 10 min / 1 min: {work[1] / max(work[0], 1e-9):.2f}x (flat = about 1)")


def measure_lengths(preset: str, layer: int, chunk_seconds: float, device: str,
                    lengths: tuple[float, float] = (1.0, 10.0)) -> dict[float, dict]:
    """One worker per track length (minutes); each row also gets working_mb = peak - output - input."""
    rows = {minutes: measure(preset, minutes, layer, chunk_seconds, device) for minutes in lengths}
    for row in rows.values():
        row["working_mb"] = row["peak_above_model_mb"] - row["output_mb"] - row["input_mb"]
    return rows


if __name__ == "__main__":
    main()
