"""The HEAR adapter: the embeddings are extract's, batched; timestamps are frame centres."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from musicssl import hear
from musicssl.extract import load_model
from musicssl.interop.huggingface import export_pretrained
from tests.conftest import micro_backbone, tone
from tests.numerics import float64_calibrated



def assert_equals_extract(got, encoder, wav, rate, layer="mean"):
    """A batched float32 run vs extract's one-sound run: not the same GEMM shapes, so compared
    within a small multiple of extract's own float32 rounding against a float64 run of the same
    backbone on the same prepared input (tests/numerics.py), which must stay far below the signal."""
    want = encoder.extract(wav, rate, layers=None if layer == "mean" else [layer])
    exact = copy.deepcopy(encoder.backbone).double()
    with torch.no_grad():
        out = exact(encoder.prepare(wav, rate)[None].double())
    states = list(out.layers[:-1]) + [out.last_hidden_state]
    truth = torch.stack(states).mean(0)[0] if layer == "mean" else states[layer][0]
    error, tolerance = float64_calibrated(got, want.mean(0), truth)
    assert error <= tolerance, f"{error:.2e} > {tolerance:.2e}"
    assert tolerance < 1e-4 * float(truth.abs().max())


@pytest.fixture
def model_dir(tmp_path):
    return export_pretrained(micro_backbone("hubert", layer_norm_first=True), tmp_path / "micro")


def batch(seconds: float, rate: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([tone(seconds, rate, frequency=f, seed=i)
                                      for i, f in enumerate((220.0, 440.0, 1000.0))]))


def test_attributes_are_what_hear_requires(model_dir):
    model = hear.load_model(str(model_dir))
    assert isinstance(model, torch.nn.Module)
    assert model.sample_rate == 16000 and model.scene_embedding_size == model.timestamp_embedding_size == 32
    assert isinstance(model.scene_embedding_size, int)


@pytest.mark.parametrize("layer", ["mean", 1, -1])
def test_timestamp_embeddings_equal_extract_and_timestamps_are_frame_centres(model_dir, layer):
    model = hear.load_model(str(model_dir), layer=layer)
    encoder = load_model(model_dir, device="cpu")
    audio = batch(1.3, 16000)
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
    frames = (20800 - 400) // 320 + 1
    assert embeddings.shape == (3, frames, 32) and embeddings.dtype == torch.float32
    assert timestamps.shape == (3, frames)
    # frame t covers samples [320 t, 320 t + 400): centre 320 t + 200 samples = 20 t + 12.5 ms
    assert torch.equal(timestamps[1], 20.0 * torch.arange(frames) + 12.5)
    for item in range(3):
        assert_equals_extract(embeddings[item], encoder, audio[item].numpy(), 16000, layer)
    scene = hear.get_scene_embeddings(audio, model)
    assert scene.shape == (3, 32) and torch.allclose(scene, embeddings.mean(1))


def test_long_audio_is_chunked_like_extract(model_dir):
    model = hear.load_model(str(model_dir))
    model.chunk_seconds = 0.5
    encoder = load_model(model_dir, device="cpu")
    audio = batch(1.7, 16000)[:1]  # one sound: the same windows and shapes as extract, bit for bit
    embeddings, _ = hear.get_timestamp_embeddings(audio, model)
    want = encoder.extract(audio[0].numpy(), 16000, chunk_seconds=0.5).mean(0)
    assert torch.equal(embeddings[0], want)
    whole = encoder.extract(audio[0].numpy(), 16000, chunk_seconds=None).mean(0)
    assert (embeddings[0] - whole).abs().max() > 1e-3 * whole.abs().max()  # chunking really applied


def test_a_24_khz_model_declares_48_khz_and_resamples(tmp_path):
    pytest.importorskip("transformers")
    from tests.interop.mert_reference import MERT_MICRO, build_reference, save_mert_format

    reference, mert_json = build_reference(MERT_MICRO)
    directory = save_mert_format(reference, mert_json, tmp_path / "mert")
    model = hear.load_model(str(directory))
    assert model.sample_rate == 48000 and model.model_rate == 24000
    audio = batch(1.0, 48000)
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
    assert timestamps[0, 1] - timestamps[0, 0] == pytest.approx(320 / 24000 * 1000)  # 75 Hz frames
    assert_equals_extract(embeddings[2], load_model(directory, device="cpu"), audio[2].numpy(), 48000)


def test_bad_input_is_refused_with_the_reason(model_dir):
    model = hear.load_model(str(model_dir))
    with pytest.raises(ValueError, match="n_sounds, n_samples"):
        hear.get_scene_embeddings(torch.zeros(16000), model)
    with pytest.raises(ValueError, match="fewer than the receptive field"):
        hear.get_scene_embeddings(torch.zeros(2, 100), model)


def test_hear_2021_validator_accepts_the_adapter(model_dir):
    # hearvalidator imports tensorflow, which is not in our venv: this runs where both are
    # installed (it passed in a throwaway venv on top of ours, 16 kHz and 24 kHz models).
    validate = pytest.importorskip("hearvalidator.validate")
    validate.ValidateModel("musicssl.hear", str(model_dir), "cpu")()  # raises ModelError on a violation
