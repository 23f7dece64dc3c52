"""Our EnCodec 24 kHz encoder and quantiser against the `encodec` package: the answers of `make
parity-encodec` (equal bit for bit there, encodec 0.1.1) pinned in fixtures/encodec_reference.safetensors,
the weights regenerated from their seed, so no 60 MB checkpoint and no encodec package is needed."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from musicssl.interop.encodec import _shapes, encodec_state_dict, published_names
from musicssl.models.encodec import EncodecConfig, EncodecTokenizer
from tests.models.encodec_cases import CASES, WEIGHT_SEED, case_input, compare_codes, published_tensor
from tests.numerics import float64_calibrated

FIXTURE = Path(__file__).parent / "fixtures" / "encodec_reference.safetensors"


def random_tokenizer(seed: int = WEIGHT_SEED) -> EncodecTokenizer:
    """The weights benchmarks/encodec_side.py gives EnCodec, for the keys we read."""
    shapes = _shapes(EncodecConfig())
    state = {theirs: published_tensor(theirs, shapes[ours], seed) for ours, theirs in published_names().items()}
    tokenizer = EncodecTokenizer()
    tokenizer.load_state_dict(encodec_state_dict(state, Path("random.th")))
    return tokenizer.eval()


@pytest.fixture(scope="module")
def tokenizer() -> EncodecTokenizer:
    return random_tokenizer()


def test_latents_and_codes_match_encodecs_pinned_answers(tokenizer):
    with safe_open(str(FIXTURE), "np") as reference:
        metadata = reference.metadata()
        theirs_codes, theirs_latents = reference.get_tensor("pinned/codes"), reference.get_tensor("pinned/latents")
    name, samples, seed = CASES[0]
    assert (metadata["weight_seed"], metadata["samples"], metadata["seed"]) == (str(WEIGHT_SEED), str(samples), str(seed))
    wav = torch.from_numpy(case_input(samples, seed))
    with torch.no_grad():
        ours, truth = tokenizer(wav), copy.deepcopy(tokenizer).double()(wav.double())
    assert ours["latents"].shape == (1, 128, math.ceil(samples / 320)) and theirs_codes.shape == (39, 8)
    # another CPU's kernels sum in another order: within the float32 rounding EnCodec's answer shows
    # against our float64 run, not bit for bit
    error, tolerance = float64_calibrated(ours["latents"][0], torch.from_numpy(theirs_latents), truth["latents"][0])
    assert error <= tolerance, (error, tolerance)
    ties, failures = compare_codes(ours["codes"][0].numpy(), theirs_codes, truth["latents"][0].numpy(),
                                   tokenizer.codebooks.numpy(), tolerance)
    assert not failures and ties <= 2, (ties, failures)
    assert len(np.unique(theirs_codes[:, 0])) > 10  # the case is not degenerate: many codes in use


def test_a_flip_far_from_a_tie_is_a_failure_not_a_tie(tokenizer):
    _, samples, seed = CASES[0]
    with torch.no_grad():
        out = tokenizer(torch.from_numpy(case_input(samples, seed)))
    codes = out["codes"][0].numpy()
    flipped = codes.copy()
    flipped[5, 2] = (codes[5, 2] + 1) % 1024
    ties, failures = compare_codes(flipped, codes, out["latents"][0].double().numpy(), tokenizer.codebooks.numpy(), 1e-5)
    assert (ties, len(failures)) == (0, 1) and "frame 5 stage 2" in failures[0]


@pytest.mark.parametrize("samples", [1, 100, 319, 320, 321, 12_345])
def test_frames_are_ceil_n_over_320_and_tokens_whole_frames_only(tokenizer, samples):
    wav = torch.from_numpy(case_input(samples, 3)) if samples > 1 else torch.full((1, 1), 0.1)
    with torch.no_grad():
        out = tokenizer(wav)
    assert out["latents"].shape == (1, 128, math.ceil(samples / 320))
    assert tokenizer.tokens(wav).shape == (1, samples // 320, 8)
    assert bool((out["codes"] >= 0).all()) and bool((out["codes"] < 1024).all())


def test_each_stage_takes_the_nearest_code_to_what_the_previous_left(tokenizer):
    """The quantiser in float64 by brute force (|r - e|^2 for every code) gives the same codes."""
    wav = torch.from_numpy(case_input(4_000, 7))
    with torch.no_grad():
        out = tokenizer(wav)
    residual = out["latents"][0].double().T  # (T, 128)
    for stage, codebook in enumerate(tokenizer.codebooks.double()):
        nearest = torch.cdist(residual, codebook).argmin(-1)
        assert torch.equal(nearest, out["codes"][0, :, stage]), stage
        residual = residual - codebook[nearest]


def test_the_configuration_is_encodec_24khz_at_6_kbps():
    config = EncodecConfig()
    assert (config.hop, config.frame_rate, config.num_codebooks, config.lstm_width) == (320, 75, 8, 512)
    assert not config.normalize and config.segment_seconds is None


def test_building_a_tokenizer_leaves_the_global_random_stream_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    EncodecTokenizer()
    assert torch.equal(torch.rand(3), expected)


def test_autocast_does_not_change_the_codes(tokenizer):
    wav = torch.from_numpy(case_input(3_200, 4))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = tokenizer(wav)["codes"]
    with torch.no_grad():
        assert torch.equal(autocast, tokenizer(wav)["codes"])
