"""Speed of our beat DBN (evaluate/beats.py) against madmom-infer's Viterbi, on CPU.

Run (from the repository root; ~1 minute):

    .venv/bin/python benchmarks/beat_decode_speed.py
    .venv/bin/python benchmarks/beat_decode_speed.py --clips 45 --seconds 8 --fps 50 --rounds 5

The workload is a probe's beat validation split: `--clips` clips of `--seconds` at `--fps`
(the demo: 45 clips of 8 s at 50 Hz, decoded after every training epoch). Activations are
float32, as a probe's softmax gives them: a noisy bump on every beat of a random tempo.

Three decoders, each timed over all clips, once per round, in turn (a busy machine slows all
of them alike); the figures are medians over rounds:

- madmom-infer: tests/evaluate/madmom_reference.py (its HiddenMarkovModel.viterbi on the DBN
  assembled from madmom's beat parts, with madmom's post-processing), one clip at a time; the
  model is built once, outside the timing. The baseline.
- ours, one at a time: `dbn_beats` on each clip.
- ours, batched: `dbn_beats_batch` on all clips (what the probe calls).

Every decoder's beats are checked equal to madmom-infer's before timing. Ratios > 1 mean
ours is faster.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.evaluate


def activations(clips: int, seconds: float, fps: float, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    frames = int(seconds * fps)
    out = []
    for _ in range(clips):
        period = 60.0 * fps / rng.uniform(70, 180)
        beat_frames = np.round(np.arange(rng.uniform(0, period), frames - 1, period)).astype(int)
        clip = 0.1 * rng.random(frames) + 0.02
        clip[beat_frames] += rng.uniform(0.2, 0.6, len(beat_frames))
        out.append(np.clip(clip, 0.0, 0.99).astype(np.float32))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=45)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--fps", type=float, default=50.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from musicssl.evaluate import beats
    from tests.evaluate.madmom_reference import madmom_beats, madmom_dbn

    clips = activations(args.clips, args.seconds, args.fps, args.seed)
    dbn = madmom_dbn(args.fps)  # built once, outside the timing
    decoders = {
        "madmom-infer, one at a time": lambda: [madmom_beats(clip, args.fps, dbn=dbn) for clip in clips],
        "ours, one at a time": lambda: [beats.dbn_beats(clip, args.fps) for clip in clips],
        "ours, batched": lambda: beats.dbn_beats_batch(clips, args.fps),
    }
    reference = decoders["madmom-infer, one at a time"]()
    for name, decode in decoders.items():
        assert all(np.array_equal(ours, theirs) for ours, theirs in zip(decode(), reference)), name
    times: dict[str, list[float]] = {name: [] for name in decoders}
    for _ in range(args.rounds):
        for name, decode in decoders.items():
            start = time.perf_counter()
            decode()
            times[name].append(time.perf_counter() - start)
    baseline = statistics.median(times["madmom-infer, one at a time"])
    print(f"{args.clips} clips of {args.seconds:g} s at {args.fps:g} fps, median of {args.rounds} rounds "
          f"(beats equal to madmom-infer's for every decoder)")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:30s} {median:7.3f} s   {baseline / median:5.1f}x madmom-infer")


if __name__ == "__main__":
    main()
