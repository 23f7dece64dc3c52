"""Where one window's extraction spends its time, ours against transformers' (issue 27): torch's
profiler on the bare forward of the same weights (every hidden state, no pooling), each side run
once to warm up and then `--rounds` times, grouped by operator, the largest first.

    .venv/bin/python benchmarks/extract_profile.py [--preset hubert_base] [--seconds 30] [--dtype fp32|bf16]
        [--threads 2] [--top 15] [--device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile


def build(preset: str, device: str):
    from transformers import AutoModel

    from musicssl.interop.huggingface import export_pretrained
    from musicssl.models.backbone import Backbone
    from musicssl.models.backbone_config import backbone_preset

    torch.manual_seed(0)
    ours = Backbone(backbone_preset(preset)).eval()
    with tempfile.TemporaryDirectory() as directory:
        export_pretrained(ours, Path(directory))
        theirs = AutoModel.from_pretrained(directory).eval()
    return ours.to(device), theirs.to(device)


def table(name: str, run, rounds: int, top: int, device: str) -> float:
    run()  # warm-up: allocator, oneDNN primitive caches
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    started = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(rounds):
            run()
    seconds = (time.perf_counter() - started) / rounds
    print(f"\n{name}: {seconds:.3f} s a window (profiled, mean of {rounds})")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="hubert_base")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ours, theirs = build(args.preset, args.device)
    wav = torch.randn(1, int(args.seconds * 16_000), device=args.device) * 0.1
    autocast = (torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16) if args.dtype == "bf16"
                else contextlib.nullcontext())

    def run_ours():
        with torch.inference_mode(), autocast:
            ours(wav)

    def run_theirs():
        with torch.inference_mode(), autocast:
            theirs(wav, output_hidden_states=True)

    mine = table(f"ours ({args.preset}, {args.dtype})", run_ours, args.rounds, args.top, args.device)
    other = table(f"transformers ({args.preset}, {args.dtype})", run_theirs, args.rounds, args.top, args.device)
    print(f"\nbare forward, one {args.seconds:g}-s window: ours {mine:.3f} s, transformers {other:.3f} s, "
          f"ratio {other / mine:.2f}x; torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}")


if __name__ == "__main__":
    main()
