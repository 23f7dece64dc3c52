"""Pre-training loader speed: whole-file decoding (before) vs crop-only reading vs prepared shards.

    PYTHONPATH=src .venv/bin/python benchmarks/loader_speed.py [--songs 40] [--song-seconds 240] [--device cpu]

A corpus of `--songs` generated songs (harmonic notes, drums-like noise bursts; 44.1 kHz stereo),
written once as FLAC and as MP3 under `--corpus` (kept for the next run), a manifest of each
(lengths at 16 kHz from the headers: what `audio.load_audio` returns, measured equal in
libsndfile 1.2.2), and `musicssl prepare` shards of the FLAC manifest. Then, in one process (one
core), 5 s crops at 16 kHz of random (epoch, row) keys, collated 4 to a batch and copied to
`--device` (pinned and non-blocking on CUDA), read three ways:

* today: `PretrainDataset(crop_only=False)`, the whole file decoded and resampled per crop;
* crop-only: `PretrainDataset(crop_only=True)`, the crop plus soxr's margin;
* prepared: `PretrainDataset(prepared=...)`, a slice of an int16 memory map.

Printed: audio seconds delivered per second per way and format, the prepare time, and last
`loader: today T, crop-only C (Rc x), prepared P (Rp x) audio-s/s` (FLAC; ratios to today).
Targets: crop-only >= 10x today on FLAC; prepared >= 45 audio-s/s per core.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from musicssl.data.manifest import read_manifest, write_manifest
from musicssl.data.prepare import PreparedCorpus, is_prepared, prepare
from musicssl.data.pretrain import PretrainDataset, collate
from musicssl.train.trainer import to_device

SR, NATIVE, CROP_SECONDS, BATCH = 16_000, 44_100, 5.0, 4


def song(index: int, seconds: float) -> np.ndarray:
    """(n, 2) float32: a melody of harmonic notes (new note every 0.25-1 s) and noise bursts."""
    rng = np.random.default_rng(index)
    n = int(seconds * NATIVE)
    out = np.zeros((n, 2), np.float32)
    position = 0
    while position < n:
        length = min(n - position, int(rng.uniform(0.25, 1.0) * NATIVE))
        t = np.arange(length) / NATIVE
        f0 = 110 * 2 ** (rng.integers(0, 36) / 12)
        note = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3)) / k for k in range(1, 7))
        note *= np.exp(-t * rng.uniform(1, 6))
        burst = rng.standard_normal(length) * np.exp(-t * 40) * 0.5
        out[position:position + length, 0] = 0.25 * note + burst
        out[position:position + length, 1] = 0.25 * note * 0.8 + burst * 0.6
        position += length
    return out


def write_song(args: tuple[Path, int, float]) -> None:
    root, index, seconds = args
    wav = song(index, seconds)
    for extension, kind in (("flac", "FLAC"), ("mp3", "MP3")):
        path = root / extension / f"song_{index:03d}.{extension}"
        if not path.exists():
            partial = path.with_name(f".{path.name}")
            sf.write(str(partial), wav, NATIVE, format=kind)
            partial.replace(path)


def make_corpus(root: Path, songs: int, seconds: float, workers: int) -> dict[str, Path]:
    for extension in ("flac", "mp3"):
        (root / extension).mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(write_song, [(root, i, seconds) for i in range(songs)]))
    manifests = {}
    for extension in ("flac", "mp3"):
        names = sorted(p.name for p in (root / extension).glob(f"song_*.{extension}"))[:songs]
        items = [(name, round(sf.info(str(root / extension / name)).frames * SR / NATIVE)) for name in names]
        (root / f"manifest_{extension}").mkdir(exist_ok=True)
        write_manifest(root / f"manifest_{extension}" / "train.tsv", root / extension, items)
        manifests[extension] = root / f"manifest_{extension}"
    return manifests


def measure(dataset: PretrainDataset, crops: int, device: torch.device, seed: int = 0) -> float:
    """Audio seconds per second: `crops` random keys, batches of BATCH, copied to `device`."""
    rng = np.random.default_rng(seed)
    keys = [(int(rng.integers(0, 1000)), int(rng.integers(0, len(dataset)))) for _ in range(crops)]
    cuda = device.type == "cuda"
    started, delivered = time.perf_counter(), 0.0
    for first in range(0, crops, BATCH):
        batch = collate([dataset[key] for key in keys[first:first + BATCH]])
        batch = batch.pin_memory() if cuda else batch
        moved = to_device(batch, device)  # as the trainer moves it: non-blocking when pinned
        delivered += moved.wav.shape[0] * moved.wav.shape[1] / SR
    if cuda:
        torch.cuda.synchronize(device)
    return delivered / (time.perf_counter() - started)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--songs", type=int, default=40)
    parser.add_argument("--song-seconds", type=float, default=240.0)
    parser.add_argument("--corpus", type=Path, default=Path("/tmp/musicssl-loader-bench"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--today-crops", type=int, default=12, help="crops read by whole-file decoding")
    parser.add_argument("--crops", type=int, default=200, help="crops read by crop-only reading")
    parser.add_argument("--prepared-crops", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="processes generating the corpus and writing shards (not timed)")
    return parser.parse_args(argv)


def measure_rates(args: argparse.Namespace) -> dict:
    """Audio-s/s of every (format, way) and of the prepared shards, printing each as it comes."""
    device = torch.device(args.device)
    root = args.corpus / f"{args.songs}x{args.song_seconds:g}s"
    started = time.perf_counter()
    manifests = make_corpus(root, args.songs, args.song_seconds, args.workers)
    print(f"corpus: {args.songs} songs x {args.song_seconds:g} s, 44.1 kHz stereo flac + mp3 in {root} "
          f"({time.perf_counter() - started:.0f} s, cached)", flush=True)
    shards = root / "prepared_flac"
    if not is_prepared(shards) or len(PreparedCorpus(shards, "train", SR).lengths) != args.songs:
        started = time.perf_counter()
        prepare(manifests["flac"], shards, SR, workers=args.workers, progress=False)
        print(f"prepare: {args.songs * args.song_seconds / 3600:.2f} h of flac into int16 shards in "
              f"{time.perf_counter() - started:.0f} s with {args.workers} process(es)", flush=True)
    crop = round(CROP_SECONDS * SR)
    rates = {}
    for extension in ("flac", "mp3"):
        manifest = read_manifest(manifests[extension] / "train.tsv")
        for name, crop_only, crops in (("today", False, args.today_crops), ("crop-only", True, args.crops)):
            dataset = PretrainDataset(manifest, SR, crop, SR, seed=0, crop_only=crop_only)
            rates[extension, name] = measure(dataset, crops, device)
            print(f"{extension:5s} {name:10s} {rates[extension, name]:9.1f} audio-s/s  ({crops} crops)", flush=True)
    manifest = read_manifest(manifests["flac"] / "train.tsv")
    dataset = PretrainDataset(manifest, SR, crop, SR, seed=0, prepared=PreparedCorpus(shards, "train", SR))
    rates["prepared"] = measure(dataset, args.prepared_crops, device)
    print(f"int16 prepared   {rates['prepared']:9.1f} audio-s/s  ({args.prepared_crops} crops)", flush=True)
    return rates


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device(args.device)
    rates = measure_rates(args)
    for extension in ("flac", "mp3"):
        print(f"{extension}: crop-only / today = {rates[extension, 'crop-only'] / rates[extension, 'today']:.1f} x")
    today, crop_only, shard = rates["flac", "today"], rates["flac", "crop-only"], rates["prepared"]
    print(f"device {device}, 1 process, torch capability {torch.backends.cpu.get_cpu_capability()}", file=sys.stderr)
    print(f"loader: today {today:.1f}, crop-only {crop_only:.1f} ({crop_only / today:.1f} x), "
          f"prepared {shard:.0f} ({shard / today:.0f} x) audio-s/s")


if __name__ == "__main__":
    main()
