"""Peak memory of pooled feature extraction (`extract --pool mean`): a long track against a 1-minute one.

    .venv/bin/python benchmarks/extract_memory.py [--preset hubert_tiny] [--long-minutes 180] [--device cpu]

Each length is written to a temporary 16 kHz FLAC (white noise, a block at a time); a fresh
subprocess builds the model (random weights), warms it up on a 40-s file, and extracts the time
mean of every hidden state from the file as the CLI does (`Encoder.extract_mean_file`, chunks of
30 s): the file is decoded and resampled in blocks, cut into the chunk windows and pooled in a
float64 running sum, so nothing track-sized is held (a data2vec model reads the file twice). The
figure is the process's total peak resident memory (VmHWM) above its resident memory after the
warm-up, the warm-up's freed heap trimmed and VmHWM reset: the ratio long / 1 min should be about
1 (target: within 1.2x). `input_mb` is 0 (no decoded track held; kept for device_check's rows).
With `--device cuda` the peak is torch.cuda.max_memory_allocated above the model's allocation.

Measured (chunks of 30 s, AMD EPYC, 2 threads, a machine shared with other jobs, 2026-12-07),
total peak above the model, 1 min -> long:
  hubert_tiny   --malloc default: 94.9 -> 125.4 MB (180 min, 420 s): 1.32x
  data2vec_tiny --malloc default: 137.0 -> 142.8 MB (180 min, 737 s, two reads): 1.04x
  hubert_tiny   --malloc fixed:   57.9 -> 58.4 MB (180 min): 1.01x
  data2vec_tiny --malloc fixed:   84.0 -> 84.2 MB (60 min only, for time): 1.00x
With the default allocator the 1-minute figure itself varied from 95 to 113 MB between runs
(hubert_tiny) and a 20-minute run's peak rose in steps over its chunks while the memory in use
did not: what the extraction holds is flat (fixed), the rest is glibc keeping freed buffers.
Before the stream (the decoded track held whole, in-memory track, not trimmed; so not comparable
peak for peak): hubert_tiny 1 min 73.3 MB, 180 min 732.5 MB (659 MB of it the decoded waveform).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def rss_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def release_and_reset_peak() -> None:
    """Return the warm-up's freed heap to the system and restart VmHWM from the current resident
    size, so that the peak counts what the extraction itself holds: otherwise whether glibc had
    kept the warm-up's freed blocks moved the 1-minute figure between 30 and 70 MB from run to run."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # Linux >= 4.0: reset the peak resident set size (VmHWM) to VmRSS


def write_track(path: str, minutes: float) -> None:
    """0.1 x white noise at 16 kHz as 16-bit FLAC, written a block at a time (no track-sized array)."""
    import numpy as np
    import soundfile as sf

    samples, rng = int(16000 * 60 * minutes), np.random.default_rng(0)
    with sf.SoundFile(path, "w", 16000, 1, format="FLAC", subtype="PCM_16") as track:
        for start in range(0, samples, 1 << 22):
            track.write(0.1 * rng.standard_normal(min(1 << 22, samples - start), dtype=np.float32))


def worker(preset: str, path: str, warm_up: str, chunk_seconds: float, device: str) -> None:
    import torch

    from musicssl.extract import Encoder
    from musicssl.models.backbone import Backbone
    from musicssl.models.backbone_config import backbone_preset

    torch.set_num_threads(2)
    torch.manual_seed(0)
    encoder = Encoder(Backbone(backbone_preset(preset)), device=device)
    encoder.extract_mean_file(warm_up, chunk_seconds=chunk_seconds)  # 40 s: two chunks, every buffer once
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        release_and_reset_peak()
    baseline = torch.cuda.memory_allocated() / 2**20 if cuda else rss_mb("VmRSS")
    started = time.perf_counter()
    pooled = encoder.extract_mean_file(path, chunk_seconds=chunk_seconds)  # (K, D): what --pool mean runs
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else rss_mb("VmHWM")
    # input_mb: track-sized input held, none since the file is streamed (a decoded block is
    # part of the working memory); kept so that rows compare with the in-memory measurements.
    print(json.dumps({"peak_above_model_mb": peak - baseline, "input_mb": 0.0, "seconds": seconds,
                      "layers": pooled.shape[0]}))


# glibc serves a freed buffer's memory again from its heap rather than return it, and raises its
# mmap threshold after each large free (up to 32 MB): the activations of successive chunks then
# land at different places and the resident peak creeps up with the number of chunks, by chance.
# A fixed threshold maps every buffer over 128 kB and unmaps it when freed, so the peak is what
# the extraction holds at once (`--malloc fixed`); `default` is what a user's process shows.
MALLOC_ENV = {"default": {}, "fixed": {"MALLOC_MMAP_THRESHOLD_": "131072"}}


def measure(preset: str, minutes: float, chunk_seconds: float, device: str, malloc: str = "default") -> dict:
    with tempfile.TemporaryDirectory(prefix="extract_memory_") as folder:
        path, warm_up = os.path.join(folder, "track.flac"), os.path.join(folder, "warm_up.flac")
        write_track(path, minutes)
        write_track(warm_up, 40 / 60)
        result = subprocess.run([sys.executable, __file__, "--worker", "--preset", preset, "--track", path,
                                 "--warm-up", warm_up, "--chunk-seconds", str(chunk_seconds), "--device", device],
                                capture_output=True, text=True, check=True, env={**os.environ, **MALLOC_ENV[malloc]})
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="hubert_tiny")
    parser.add_argument("--chunk-seconds", type=float, default=30.0)
    parser.add_argument("--long-minutes", type=float, default=180.0, help="the long track (default: 3 hours)")
    parser.add_argument("--track", default=None, help=argparse.SUPPRESS)  # the worker's file
    parser.add_argument("--warm-up", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--malloc", choices=sorted(MALLOC_ENV), default="default",
                        help="glibc's allocator as it is, or with a fixed mmap threshold (see MALLOC_ENV)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.preset, args.track, args.warm_up, args.chunk_seconds, args.device)
        return
    rows = measure_lengths(args.preset, args.chunk_seconds, args.device, (1.0, args.long_minutes), args.malloc)
    print(f"{args.preset}, --pool mean of a 16 kHz FLAC over all {rows[1.0]['layers']} hidden states, chunks of "
          f"{args.chunk_seconds:g} s, 2 threads, {args.device}, malloc {args.malloc}")
    for minutes, row in rows.items():
        print(f"  {minutes:6.0f} min: peak {row['peak_above_model_mb']:7.1f} MB above the model, {row['seconds']:.0f} s")
    ratio = rows[args.long_minutes]["peak_above_model_mb"] / max(rows[1.0]["peak_above_model_mb"], 1e-9)
    print(f"  total peak {args.long_minutes:g} min / 1 min: {ratio:.2f}x (flat = about 1, target <= 1.2)")


def measure_lengths(preset: str, chunk_seconds: float, device: str,
                    lengths: tuple[float, float] = (1.0, 180.0), malloc: str = "default") -> dict[float, dict]:
    """One worker per track length (minutes); each row also gets working_mb = peak - decoded input."""
    rows = {minutes: measure(preset, minutes, chunk_seconds, device, malloc) for minutes in lengths}
    for row in rows.values():
        row["working_mb"] = row["peak_above_model_mb"] - row["input_mb"]
    return rows


if __name__ == "__main__":
    main()
