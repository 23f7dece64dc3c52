"""Our CQT against nnAudio's `CQT1992v2` as MERT builds it: the answers of `make parity-cqt` (where
the kernels and the full-width transform's magnitudes are equal bit for bit, nnAudio 0.3.4) pinned in
fixtures/cqt_reference.safetensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file

from musicssl.models.cqt import ConstantQTransform, CQTConfig, cqt_kernels
from tests.models.cqt_cases import CASES, SAMPLE_RATE, case_input
from tests.numerics import U32, gamma

FIXTURE = Path(__file__).parent / "fixtures" / "cqt_reference.safetensors"


@pytest.fixture(scope="module")
def cqt() -> ConstantQTransform:
    return ConstantQTransform()


def test_magnitudes_match_nnaudio_within_the_convolution_bound(cqt):
    reference = load_file(str(FIXTURE))
    _, batch, samples, seed = CASES[0]
    wav = torch.from_numpy(case_input(batch, samples, seed))
    ours = cqt(wav)
    assert ours.shape == (1, 336, samples // 320 + 1) == reference["pinned/cqt"].shape
    # Each real / imaginary part is a 65,536-term sum, in another order on another CPU: off by at most
    # gamma(W) times the sum of |terms| (times the length scale), and the magnitude by the norm of both.
    kernels = cqt._on(wav.device)
    x = F.pad(wav.double().abs()[:, None], (cqt.width // 2, cqt.width // 2))
    terms = [F.conv1d(x, kernels[part].double().abs(), stride=320) * kernels["scale"].double()
             for part in ("real", "imag")]
    bound = gamma(cqt.width) * torch.sqrt(terms[0] ** 2 + terms[1] ** 2) + 4 * U32 * ours.double().abs()
    error = (ours.double() - torch.from_numpy(reference["pinned/cqt"]).double()).abs()
    worst = int(error.argmax())
    assert bool((error <= bound).all()), f"max error {float(error.max()):.3g}, bound {float(bound.flatten()[worst]):.3g}"
    assert float(error.max()) < 1e-3 * float(ours.max())  # and in fact far inside it


def test_kernel_lengths_and_width_are_nnaudios():
    kernels, lengths, freqs = cqt_kernels(CQTConfig())
    reference = load_file(str(FIXTURE))
    np.testing.assert_array_equal(lengths, reference["kernel_lengths"])
    assert kernels.shape == (336, 65_536)  # 2^ceil(log2(50,466)), the longest kernel (32.7 Hz)
    assert freqs[48] == pytest.approx(65.4) and freqs[-1] == pytest.approx(32.7 * 2 ** (335 / 48))


def test_a_tone_peaks_in_its_bin_and_frames_are_centred(cqt):
    bin_ = 150  # 32.7 * 2^(150/48) = 286.6 Hz
    frequency = 32.7 * 2 ** (bin_ / 48)
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    out = cqt(torch.from_numpy(np.sin(2 * np.pi * frequency * t).astype(np.float32))[None])  # (1, 336, 76)
    assert out.shape[-1] == SAMPLE_RATE // 320 + 1
    middle = out[0, :, 30:45]
    assert bool((middle.argmax(0) == bin_).all())
    # librosa normalisation (L1-normed kernel x sqrt(length)): a unit sine in mid-signal reads
    # sum(window) / (2 * sum(window)) * sqrt(length) = sqrt(length) / 2.
    length = float(cqt._on(torch.device("cpu"))["scale"][bin_, 0]) ** 2
    assert float(middle[bin_].mean()) == pytest.approx(np.sqrt(length) / 2, rel=0.02)


def test_octave_spans_are_the_full_convolution_within_rounding(cqt):
    wav = torch.from_numpy(case_input(1, 3_200, 5))
    full = ConstantQTransform(full_width=True)(wav).double()
    kernels = cqt._on(wav.device)
    assert sum(re.shape[0] * re.shape[-1] for _, re, _ in kernels["octaves"]) < 336 * 65_536 / 4.5
    x = F.pad(wav.double().abs()[:, None], (cqt.width // 2, cqt.width // 2))
    terms = [F.conv1d(x, kernels[part].double().abs(), stride=320) * kernels["scale"].double()
             for part in ("real", "imag")]
    bound = 2 * gamma(cqt.width) * torch.sqrt(terms[0] ** 2 + terms[1] ** 2) + 8 * U32 * full.abs()
    assert bool(((cqt(wav).double() - full).abs() <= bound).all())


def test_autocast_does_not_change_the_transform(cqt):
    wav = torch.from_numpy(case_input(1, 4_000, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = cqt(wav)
    assert inside.dtype == torch.float32 and torch.equal(inside, cqt(wav))
