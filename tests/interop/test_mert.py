"""MERT-v1 read natively from its published directory format (no remote code), against a
reference composed from transformers' Hubert classes as MERT's modeling code composes them;
`conv_pos_batch_norm` against transformers' HubertModel; MERT's options refused by name."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import soundfile as sf
import torch

transformers = pytest.importorskip("transformers")
from transformers import HubertConfig, HubertModel  # noqa: E402

from musicssl.cli import main  # noqa: E402
from musicssl.extract import load_model  # noqa: E402
from musicssl.interop.huggingface import import_pretrained  # noqa: E402
from tests.conftest import perturb_, tone  # noqa: E402
from tests.evaluate.test_benchmark_cli import FAST, gtzan_root  # noqa: E402, F401
from tests.interop.mert_reference import (MERT_95M, MERT_330M, MERT_MICRO, build_reference,  # noqa: E402
                                          reference_hidden_states, save_mert_format)
from tests.interop.test_huggingface import (SMALL, assert_padded_items_match_the_reference_alone,  # noqa: E402
                                           assert_state_matches, padded_batch,
                                           reference_states)

# Tolerances: as in test_huggingface, each float32 hidden state is compared with the float32
# reference within a small multiple of the reference's own float32 rounding against a float64 run
# of the same weights (tests/numerics.py), and that rounding must stay below 1e-4 of the states'
# scale, so the comparison is sharp (a mapping bug is O(signal)).


def check_parity(shape: dict, tmp_path, weights: str, seconds: float = 1.0) -> None:
    reference, mert_json = build_reference(shape)
    directory = save_mert_format(reference, mert_json, tmp_path / "mert", weights)
    encoder = load_model(directory, device="cpu")
    assert encoder.sample_rate == 24000 and encoder.frame_rate_hz == 75.0
    assert not encoder.config.normalize_waveform
    wav = tone(seconds, 24000, frequency=330.0)
    ours = encoder.extract(wav, 24000, chunk_seconds=None)  # (L+1, T, D)
    want = reference_hidden_states(reference, torch.from_numpy(wav)[None])
    truth = reference_hidden_states(copy.deepcopy(reference).double(), torch.from_numpy(wav)[None].double())
    assert ours.shape == (len(want), 74, shape["hidden_size"])  # (24000 - 400) // 320 + 1 frames
    for layer, (reference_state, exact) in enumerate(zip(want, truth)):
        assert_state_matches(ours[layer], reference_state[0], exact[0], f"hidden state {layer}")
    assert want[-1].std() > 0.1  # not two near-constant tensors


def test_mert_95m_shapes_match_the_reference(tmp_path):
    check_parity(MERT_95M, tmp_path, weights="bin")


@pytest.mark.slow
def test_mert_330m_shapes_match_the_reference(tmp_path):
    check_parity(MERT_330M, tmp_path, weights="safetensors")


def test_mert_micro_pre_ln_safetensors(tmp_path):
    check_parity({**MERT_MICRO, "do_stable_layer_norm": True, "attention_relax": 32.0}, tmp_path, "safetensors")


@pytest.mark.parametrize("option, value", [("feature_extractor_cqt", True), ("deepnorm", True)])
def test_unsupported_mert_options_are_refused_by_name(option, value, tmp_path):
    reference, mert_json = build_reference(MERT_MICRO)
    directory = save_mert_format(reference, {**mert_json, option: value}, tmp_path / "mert")
    with pytest.raises(ValueError, match=f"config.json: {option}=true"):
        load_model(directory, device="cpu")


def relaxed_softmax(scores: torch.Tensor, relax: float) -> torch.Tensor:
    """MERT's attention_relax: softmax((a / r - max(a / r)) * r)."""
    scaled = scores / relax
    return torch.softmax((scaled - scaled.amax(-1, keepdim=True)) * relax, dim=-1)


def test_attention_relax_does_not_change_fp32_output_at_mert_330m_value():
    # Exactly, softmax((a/r - max(a/r)) r) = softmax(a - max a) = softmax(a): a shift. In fp32,
    # r = 32 (MERT-330M's value, a power of two) scales by an exponent change, which commutes
    # with rounding: (a/32 - m/32) * 32 rounds exactly like a - m, and softmax subtracts the max
    # itself, so the probabilities are bitwise equal. A non-power-of-two r rounds a/r: the logits
    # move by a few ulp of max|a|, and softmax turns an absolute logit error d into a relative
    # probability error ~d. Scores at MERT-330M's head size (64) and attention span (~750 frames
    # = 10 s), logits up to ~30.
    generator = torch.Generator().manual_seed(0)
    q, k = (torch.randn(16, 750, 64, generator=generator) * 1.5 for _ in range(2))
    scores = q @ k.transpose(1, 2) / 8.0  # (H, T, T)
    plain = torch.softmax(scores, dim=-1)
    assert torch.equal(relaxed_softmax(scores, 32.0), plain)

    exact = torch.softmax(scores.double(), dim=-1)
    relaxed = relaxed_softmax(scores, 10.0)
    bound = 8 * torch.finfo(torch.float32).eps * scores.abs().max().item()  # relative, per probability
    assert ((relaxed.double() - exact).abs() / exact).max() < bound
    assert ((plain.double() - exact).abs() / exact).max() < bound
    assert (relaxed - plain).abs().max() > 0  # r = 10 does change fp32 output, at rounding level


def batch_norm_hubert(tmp_path):
    torch.manual_seed(0)
    reference = HubertModel(HubertConfig(**SMALL, num_conv_pos_embeddings=16, conv_pos_batch_norm=True)).eval()
    perturb_(reference)
    norm = reference.encoder.pos_conv_embed.batch_norm
    generator = torch.Generator().manual_seed(1)
    norm.running_mean.copy_(torch.randn(norm.num_features, generator=generator) * 0.1)  # not the 0 / 1 init
    norm.running_var.copy_(torch.rand(norm.num_features, generator=generator) + 0.5)
    reference.save_pretrained(tmp_path / "bn")
    return reference, tmp_path / "bn"


def test_conv_pos_batch_norm_matches_transformers_on_a_padded_batch(tmp_path):
    reference, directory = batch_norm_hubert(tmp_path)
    ours = import_pretrained(directory, isolate_padding=False).eval()
    assert ours.config.pos_conv_batch_norm
    wav, lengths, attention_mask = padded_batch()
    with torch.no_grad():
        out = ours(wav, lengths)
    for layer, (got, (want, truth)) in enumerate(zip(out.layers, reference_states(reference, wav, attention_mask))):
        for item, frames in enumerate(out.lengths.tolist()):
            assert_state_matches(got[item, :frames], want[item, :frames], truth[item, :frames], f"{layer}/{item}")


def test_conv_pos_batch_norm_isolated_padding_gives_the_unpadded_result(tmp_path):
    assert_padded_items_match_the_reference_alone(*batch_norm_hubert(tmp_path))


def test_extract_and_benchmark_cli_run_on_a_mert_directory(tmp_path, gtzan_root):  # noqa: F811
    reference, mert_json = build_reference(MERT_MICRO)
    directory = save_mert_format(reference, mert_json, tmp_path / "MERT-micro")
    audio = tmp_path / "clip.wav"
    sf.write(audio, tone(1.5, 24000), 24000, subtype="FLOAT")
    out = tmp_path / "features.npz"
    assert main(["extract", str(directory), str(audio), "-o", str(out), "--device", "cpu"]) == 0
    with np.load(out) as saved:
        assert float(saved["frame_rate_hz"]) == 75.0 and int(saved["sample_rate"]) == 24000
        features = saved[str(audio)]
    clip = torch.from_numpy(tone(1.5, 24000))[None]
    want = reference_hidden_states(reference, clip)
    truth = reference_hidden_states(copy.deepcopy(reference).double(), clip.double())
    assert features.shape == (3, 112, 32)
    assert_state_matches(torch.from_numpy(features[-1]), want[-1][0], truth[-1][0], "last hidden state")

    root = tmp_path / "data"
    root.mkdir()
    (root / "GTZAN").symlink_to(gtzan_root, target_is_directory=True)
    bench = tmp_path / "bench"
    assert main(["benchmark", str(directory), "--tasks", "gtzan", "--data-root", str(root), "-o", str(bench),
                 "--device", "cpu", *FAST]) == 0
    (result,) = json.loads((bench / "results.json").read_text())["results"]
    assert result["model"] == "MERT-micro" and 0.0 <= result["test"]["accuracy"] <= 1.0
