"""Seeded waveforms on which our CQT is compared with nnAudio's `CQT1992v2` as MERT builds it
(benchmarks/cqt_parity.py live, tests/models/test_cqt.py against the pinned answers).

Plain numpy and no musicssl import: benchmarks/cqt_side.py reads it in the nnAudio venv too.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 24_000
# MERT's nnAudio arguments (yizhilll/MERT mert_fairseq/models/mert/mert_model.py:524-527 at label rate 75)
NNAUDIO_ARGUMENTS = dict(sr=24_000, hop_length=24_000 // 75, fmin=32.7, fmax=None, n_bins=336, bins_per_octave=336 // 7,
                         filter_scale=1, norm=1, window="hann", center=True, pad_mode="constant", trainable=False,
                         output_format="Magnitude", verbose=False)

# name, batch, samples, seed. "pinned" is the one whose answers tests/models/fixtures/cqt_reference.safetensors keeps.
CASES = [
    ("pinned", 1, 12_000, 1),  # 0.5 s: 38 frames, 51 KB of answers
    ("crop", 2, 120_000, 2),  # two 5 s crops, MERT's training input
    ("odd", 1, 24_317, 3),  # a length that is no multiple of the hop
]


def case_input(batch: int, samples: int, seed: int) -> np.ndarray:
    """(B, n) float32: partials on and off CQT bin centres (C1 .. 4 kHz), a chirp, and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / SAMPLE_RATE
    x = np.zeros((batch, samples))
    for b in range(batch):
        for frequency in 32.7 * 2 ** (rng.uniform(0, 7, 6)):
            x[b] += rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * frequency * t + rng.uniform(0, 2 * np.pi))
        x[b] += 0.2 * np.sin(2 * np.pi * (60 * t + 2000 * t * t))  # 60 Hz .. up, a swept tone
        x[b] += 0.05 * rng.standard_normal(samples)
    return x.astype(np.float32)
