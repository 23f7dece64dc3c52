"""Random EnCodec 24 kHz weights of a seed, seeded waveforms, and the code comparison, shared by
benchmarks/encodec_parity.py (ours against the `encodec` package, live) and tests/models/test_encodec.py
(ours against its pinned answers).

Plain torch and numpy, no musicssl import: benchmarks/encodec_side.py reads it in the encodec venv too.
Every published tensor is drawn from its own generator, seeded by (seed, crc32 of its key), so either
side regenerates the same values for the keys it holds (the reference: all 252 of `EncodecModel`'s;
ours: the encoder and the quantiser, without the decoder). A 60 MB checkpoint is never stored.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch

SAMPLE_RATE = 24_000
WEIGHT_SEED = 29
# The latents of these weights have a standard deviation of about 2.2 (measured on the pinned case):
# codes drawn at that scale are used, not all won by the smallest code.
CODEBOOK_STD = 2.0

# name, samples, seed. "pinned" is the case tests/models/fixtures/encodec_reference.safetensors keeps.
CASES = [
    ("pinned", 12_345, 1),  # 0.51 s, 39 frames (the last one partial)
    ("short", 100, 2),  # shorter than every stride's padding: EnCodec's zero-then-reflect padding
    ("clip", 72_000, 3),  # 3 s, 225 frames
]


def published_tensor(key: str, shape: tuple[int, ...], seed: int = WEIGHT_SEED) -> torch.Tensor:
    """The value of one key of a random `EncodecModel` state dict: weight-norm directions
    kaiming-uniform, norms in [1, 1.6] (gain about sqrt 2), small biases, LSTM as torch initialises
    it, codebooks N(0, CODEBOOK_STD^2), every codebook marked initialised."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
    uniform = torch.rand(shape, generator=generator, dtype=torch.float64)  # [0, 1)
    name = key.rsplit(".", 1)[-1]
    if name == "inited":
        value = torch.ones(shape, dtype=torch.float64)
    elif name in ("embed", "embed_avg"):
        value = CODEBOOK_STD * torch.randn(shape, generator=generator, dtype=torch.float64)
    elif name == "cluster_size":
        value = 10 * uniform
    elif name == "weight_g":
        value = 1.0 + 0.6 * uniform
    elif name == "weight_v" or name == "weight":
        bound = 1 / math.sqrt(math.prod(shape[1:]))
        value = bound * (2 * uniform - 1)
    elif name.startswith(("weight_ih", "weight_hh", "bias_ih", "bias_hh")):
        bound = 1 / math.sqrt(shape[-1] if name.startswith("weight") else shape[0] // 4)
        value = bound * (2 * uniform - 1)
    else:  # conv biases (and any other tensor of the decoder)
        value = 0.1 * (2 * uniform - 1)
    return value.float()


def case_input(samples: int, seed: int) -> np.ndarray:
    """(1, n) float32 at 24 kHz: a few partials, a swept tone, noise, and a 50 ms silence (0.5 peak)."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / SAMPLE_RATE
    x = 0.2 * np.sin(2 * np.pi * (80 * t + 3000 * t * t))
    for frequency in 55 * 2 ** rng.uniform(0, 6, 5):
        x += rng.uniform(0.02, 0.1) * np.sin(2 * np.pi * frequency * t + rng.uniform(0, 2 * np.pi))
    x += 0.03 * rng.standard_normal(samples)
    x[samples // 3: samples // 3 + 1_200] = 0.0
    return (0.5 * x / np.abs(x).max())[None].astype(np.float32)


def compare_codes(ours: np.ndarray, theirs: np.ndarray, latents: np.ndarray, codebooks: np.ndarray,
                  latent_bound: float) -> tuple[int, list[str]]:
    """(ties, failures) for (T, S) codes of one waveform. Codes are equal except where a distance tie
    flips one: at a frame's first differing stage s, the residual (float64 `latents` (D, T) minus the
    agreed codes of stages < s) must be as near one code as the other within what float32 can move
    them: a latent off by `latent_bound` per element moves d(a) - d(b) by at most 2 bound |e_a - e_b|_1,
    and each implementation rounds |x|^2 - 2 x.e + |e|^2 by at most gamma(D + 2) times its terms'
    magnitudes (tests/numerics.py). Later stages of such a frame follow another residual and are
    not compared. A flip outside that bound is a failure."""
    codebooks = codebooks.astype(np.float64)
    dim = codebooks.shape[-1]
    gamma = (dim + 2) * 2.0**-24 / (1 - (dim + 2) * 2.0**-24)
    ties, failures = 0, []
    for frame in np.flatnonzero((ours != theirs).any(axis=1)):
        stage = int(np.flatnonzero(ours[frame] != theirs[frame])[0])
        residual = latents[:, frame].astype(np.float64)
        for previous in range(stage):
            residual = residual - codebooks[previous, ours[frame, previous]]
        a, b = codebooks[stage, ours[frame, stage]], codebooks[stage, theirs[frame, stage]]
        gap = abs(np.sum((residual - a) ** 2) - np.sum((residual - b) ** 2))

        def rounding(e):
            return gamma * np.sum(residual ** 2 + 2 * np.abs(residual * e) + e ** 2)

        # the residual carries the latents' error plus one float32 rounding per subtraction
        bound_x = latent_bound + (stage + 1) * 2.0**-24 * (np.abs(residual).max() + np.abs(codebooks).max())
        bound = 2 * bound_x * np.abs(a - b).sum() + 2 * (rounding(a) + rounding(b))
        if gap <= bound:
            ties += 1
        else:
            failures.append(f"frame {frame} stage {stage}: ours {ours[frame, stage]}, theirs {theirs[frame, stage]}, "
                            f"distance gap {gap:.3g} > the rounding bound {bound:.3g}")
    return ties, failures
