"""Label-making speed: our MFCC + k-means assignment vs librosa MFCC + scikit-learn `predict`,
and our k-means fit vs scikit-learn MiniBatchKMeans with fairseq's settings, in one run.

    .venv/bin/pip install librosa        # baseline only
    .venv/bin/python benchmarks/label_speed.py [--minutes 20] [--k 500] [--fit-frames 200000] [--device cuda]

Both labelling pipelines decode the same generated FLAC files with `audio.load_audio` and
produce 39-dim MFCC + deltas at 100 Hz, then nearest-centroid ids:
- ours: `MfccFeatures` (torch, Kaldi-compatible) + `KMeansModel.assign` (batched matmuls);
- baseline: `librosa.feature.mfcc` (n_fft 400, hop 160, 23 mels, 13 cepstra) + `librosa.feature.delta`
  (orders 1, 2) + `MiniBatchKMeans.predict` with the same number of clusters.
Printed: audio-hours per minute for each, with and without decoding, and the ratio (target >= 5x);
then each part's milliseconds per minute of audio, and the ceiling: the ratio an exact pipeline
would reach if everything but its FFT and its assignment took no time.
The fit comparison uses the same sample of our MFCC frames for both libraries: seconds and
inertia per frame (target: >= 5x faster at <= 1 % worse inertia).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from musicssl import audio
from musicssl.targets.kmeans import KMeansConfig, fit_kmeans
from musicssl.targets.labels import MfccFeatures


def make_corpus(directory: Path, minutes: float, seed: int = 0) -> list[Path]:
    """One-minute FLAC files of chords with vibrato, noise bursts and silences (music-like MFCCs)."""
    rng = np.random.default_rng(seed)
    paths, rate = [], 16_000
    for index in range(int(np.ceil(minutes))):
        t = np.arange(60 * rate) / rate
        notes = 110 * 2 ** (rng.integers(0, 36, size=(12, 3)) / 12)  # 12 chords of 3 notes, 5 s each
        freq = np.repeat(notes, 5 * rate, axis=0)[: t.size]  # (N, 3)
        phase = 2 * np.pi * np.cumsum(freq * (1 + 0.003 * np.sin(2 * np.pi * 5 * t))[:, None], axis=0) / rate
        wav = 0.2 * np.sin(phase).sum(1) + 0.05 * rng.standard_normal(t.size) * (np.sin(2 * np.pi * 2 * t) > 0.7)
        path = directory / f"track_{index:03d}.flac"
        sf.write(str(path), (wav / np.abs(wav).max() * 0.8).astype(np.float32), rate)
        paths.append(path)
    return paths


def librosa_mfcc(wav: np.ndarray) -> np.ndarray:
    import librosa

    static = librosa.feature.mfcc(y=wav, sr=16_000, n_mfcc=13, n_fft=400, hop_length=160, n_mels=23)
    return np.concatenate([static, librosa.feature.delta(static, order=1),
                           librosa.feature.delta(static, order=2)]).T  # (T, 39)


def timed_pass(paths: list[Path], label) -> tuple[float, float]:
    """(total seconds, seconds spent decoding) of label(wav) over every file."""
    decoding = total = 0.0
    for path in paths:
        start = time.perf_counter()
        wav = audio.load_audio(path, 16_000)
        decoded = time.perf_counter()
        label(wav)
        total += time.perf_counter() - start
        decoding += decoded - start
    return total, decoding


def hours_per_minute(audio_hours: float, seconds: float) -> float:
    return audio_hours / (seconds / 60)


def labelling(paths: list[Path], k: int, audio_hours: float, features: MfccFeatures):
    """Our side runs on `features.device` (MFCC and assignment alike); the baseline on the CPU.
    Returns both fitted cluster models, (ours, baseline), for `ceiling`."""
    from sklearn.cluster import MiniBatchKMeans

    sample = np.concatenate([features(audio.load_audio(p, 16_000))[::7] for p in paths])
    ours = fit_kmeans(sample, KMeansConfig(k=k, max_iter=5))
    baseline = MiniBatchKMeans(n_clusters=k, n_init=1, max_iter=1, batch_size=10_000, random_state=0)
    baseline.fit(np.concatenate([librosa_mfcc(audio.load_audio(p, 16_000))[::7] for p in paths[:3]]))
    librosa_mfcc(audio.load_audio(paths[0], 16_000))  # numba compiles on first use: not timed

    ours_total, ours_decode = timed_pass(paths, lambda wav: ours.assign(features(wav), device=features.device))
    base_total, base_decode = timed_pass(paths, lambda wav: baseline.predict(librosa_mfcc(wav).astype(np.float32)))
    print(f"\nlabelling {audio_hours:.2f} h of audio, k = {k} (audio-hours per minute, higher is better)")
    print(f"  {'':34s} {'with decoding':>14s} {'compute only':>14s}")
    for name, total, decode in (("ours (torch MFCC + matmul assign)", ours_total, ours_decode),
                                ("librosa MFCC + sklearn predict", base_total, base_decode)):
        print(f"  {name:34s} {hours_per_minute(audio_hours, total):14.2f} "
              f"{hours_per_minute(audio_hours, total - decode):14.2f}")
    print(f"  ratio ours / baseline: {base_total / ours_total:.2f}x with decoding, "
          f"{(base_total - base_decode) / (ours_total - ours_decode):.2f}x compute only (target >= 5x)")
    return ours, baseline


def best_ms(function, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def ceiling(paths: list[Path], k: int, features: MfccFeatures, ours, baseline) -> None:
    """Per minute of audio: each part of both pipelines (with `labelling`'s cluster models), and
    the best ratio ANY exact pipeline could reach here if everything but its 512-point FFT and
    its k-means assignment were free."""
    wav = audio.load_audio(paths[0], 16_000)[: 60 * 16_000]
    ours_features, their_features = features(wav), librosa_mfcc(wav).astype(np.float32)
    frames = torch.from_numpy(wav).unfold(0, 400, 160).contiguous()  # (T, 400), framed outside the timing
    parts = {"ours: MFCC": best_ms(lambda: features(wav)),
             "ours: assign": best_ms(lambda: ours.assign(ours_features, device=features.device)),
             "ours: rfft alone (512-point, every frame)": best_ms(lambda: torch.fft.rfft(frames, n=512)),
             "baseline: librosa MFCC": best_ms(lambda: librosa_mfcc(wav)),
             "baseline: sklearn predict": best_ms(lambda: baseline.predict(their_features))}
    print(f"\nper minute of audio, k = {k} (ms, best of 7)")
    for name, ms in parts.items():
        print(f"  {name:44s} {ms:8.2f}")
    base = parts["baseline: librosa MFCC"] + parts["baseline: sklearn predict"]
    ours_total = parts["ours: MFCC"] + parts["ours: assign"]
    floor = parts["ours: rfft alone (512-point, every frame)"] + parts["ours: assign"]
    print(f"  ratio now {base / ours_total:.2f}x; ceiling with only the FFT and the assignment left "
          f"{base / floor:.2f}x (target 5x)")


def fitting(paths: list[Path], k: int, fit_frames: int, features: MfccFeatures) -> None:
    frames = np.concatenate([features(audio.load_audio(p, 16_000)) for p in paths])
    rng = np.random.default_rng(0)
    frames = frames[rng.choice(len(frames), size=min(fit_frames, len(frames)), replace=False)]
    results = {}
    for library in ("faiss", "sklearn"):
        start = time.perf_counter()
        model = fit_kmeans(frames, KMeansConfig(k=k, library=library))
        results[library] = (time.perf_counter() - start, model.inertia(frames))
    (ours_s, ours_inertia), (sk_s, sk_inertia) = results["faiss"], results["sklearn"]
    print(f"\nk-means fit on {len(frames):,} x {frames.shape[1]} MFCC frames, k = {k}")
    print(f"  ours (faiss, k-means++, {KMeansConfig(k=k).resolved_max_iter()} iterations): "
          f"{ours_s:7.1f} s, inertia/frame {ours_inertia:.2f}")
    print(f"  sklearn MiniBatchKMeans, fairseq settings (n_init 20, max_iter 100): "
          f"{sk_s:7.1f} s, inertia/frame {sk_inertia:.2f}")
    print(f"  speed-up {sk_s / ours_s:.1f}x (target >= 5x), inertia {100 * (ours_inertia / sk_inertia - 1):+.2f} % "
          f"(target <= +1 %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--k", type=int, default=500)
    parser.add_argument("--fit-frames", type=int, default=200_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="where our MFCC and assignment run (cpu, cuda)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    features = MfccFeatures("mfcc39", device=args.device)
    with tempfile.TemporaryDirectory() as directory:
        paths = make_corpus(Path(directory), args.minutes)
        hours = sum(audio.audio_info(p).num_frames for p in paths) / 16_000 / 3600
        print(f"torch {torch.__version__}, {args.threads} threads, ours on {args.device}, {len(paths)} files")
        ours, baseline = labelling(paths, args.k, hours, features)
        ceiling(paths, args.k, features, ours, baseline)
        fitting(paths, args.k, args.fit_frames, features)


if __name__ == "__main__":
    main()
