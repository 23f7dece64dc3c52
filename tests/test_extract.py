"""load_model / extract: preprocessing, layer selection, chunking, errors; and the CLI."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

import musicssl
import musicssl.cli
from musicssl.audio import AudioError
from musicssl.models.backbone import normalize_waveform
from tests.conftest import tone, write_tone
from tests.numerics import float64_calibrated


def one_pass(encoder, signal: np.ndarray) -> torch.Tensor:
    """Reference: the backbone on the whole (already model-rate) signal, every hidden state."""
    wav = torch.from_numpy(signal)[None]
    if encoder.config.normalize_waveform:
        wav = normalize_waveform(wav, torch.tensor([wav.shape[1]]))
    with torch.no_grad():
        out = encoder.backbone(wav)
    return torch.stack([h[0] for h in out.layers])


def test_load_model_exposes_rates_and_layers(model_dir):
    encoder = musicssl.load_model(model_dir, device="cpu")
    assert (encoder.sample_rate, encoder.frame_rate_hz, encoder.num_hidden_states) == (16000, 50.0, 3)


def test_unchunked_extract_equals_the_backbone(model_dir):
    encoder = musicssl.load_model(model_dir, device="cpu")
    signal = tone(3.0)
    features = encoder.extract(signal, 16000, chunk_seconds=None)
    assert features.shape == (3, (48000 - 400) // 320 + 1, 32)
    assert torch.equal(features, one_pass(encoder, signal))  # the same forward: the same bits


def test_layers_are_returned_in_the_order_asked(model_dir):
    encoder = musicssl.load_model(model_dir, device="cpu")
    signal = tone(2.0)
    every = encoder.extract(signal, 16000)
    picked = encoder.extract(signal, 16000, layers=[2, 0, -2])
    assert torch.equal(picked, every[[2, 0, 1]])
    with pytest.raises(ValueError, match="hidden states 0..2"):
        encoder.extract(signal, 16000, layers=[3])


def test_other_rates_and_stereo_are_resampled_to_the_model_rate(model_dir):
    encoder = musicssl.load_model(model_dir, device="cpu")
    stereo = tone(2.0, 44100, channels=2).T  # (C, N)
    expected = soxr.resample(stereo.mean(axis=0), 44100, 16000, quality="HQ").astype(np.float32)
    assert torch.equal(encoder.extract(stereo, 44100, chunk_seconds=None), one_pass(encoder, expected))


def test_chunked_extraction_keeps_the_frame_grid_and_context_narrows_the_gap(model_dir):
    encoder = musicssl.load_model(model_dir, device="cpu")
    signal = tone(12.0, frequency=220.0)
    whole = encoder.extract(signal, 16000, chunk_seconds=None)
    plain = encoder.extract(signal, 16000, chunk_seconds=4.0)
    with_context = encoder.extract(signal, 16000, chunk_seconds=4.0, context_seconds=2.0)
    assert plain.shape == with_context.shape == whole.shape
    # Chunks as long as the track are one pass.
    assert torch.equal(encoder.extract(signal, 16000, chunk_seconds=20.0), whole)
    gap_plain = (plain - whole).abs().mean().item()
    gap_context = (with_context - whole).abs().mean().item()
    assert gap_context < gap_plain


def test_chunked_cnn_frames_equal_one_pass_for_the_layer_norm_cnn(tmp_path):
    from musicssl.audio import plan_chunks
    from musicssl.interop.huggingface import export_pretrained
    from tests.conftest import micro_backbone

    encoder = musicssl.load_model(export_pretrained(micro_backbone("data2vec"), tmp_path / "m"), device="cpu")
    signal = torch.from_numpy(tone(7.3))
    cnn = lambda wav: encoder.backbone.feature_extractor(wav[None], None)[0]  # (C, T)
    whole = cnn(signal)
    pieces = [cnn(signal[c.start:c.stop])[:, c.keep_start:c.keep_stop]
              for c in plan_chunks(signal.numel(), 32000, context_samples=8000)]
    # other lengths, so maybe other conv kernels: equal up to float32 rounding (tests/numerics.py)
    exact = copy.deepcopy(encoder.backbone.feature_extractor).double()
    truth = exact(signal.double()[None], None)[0]
    error, tolerance = float64_calibrated(torch.cat(pieces, dim=1), whole, truth)
    assert error <= tolerance


def test_extract_rejects_short_and_non_finite_audio(model_dir):
    encoder = musicssl.load_model(model_dir, device="cpu")
    with pytest.raises(AudioError, match="too short"):
        encoder.extract(np.zeros(399, np.float32), 16000)
    bad = tone(1.0)
    bad[100] = np.nan
    with pytest.raises(AudioError, match="non-finite"):
        encoder.extract(bad, 16000)


def test_load_model_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        musicssl.load_model(tmp_path / "missing")
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a file"):
        musicssl.load_model(tmp_path / "file.bin")


def test_cli_extract_writes_every_file_and_reports_bad_ones(model_dir, tmp_path):
    folder = tmp_path / "audio collection"
    (folder / "sub").mkdir(parents=True)
    write_tone(folder / "Ünïcødé song.FLAC", 2.0, 44100, channels=2)
    write_tone(folder / "sub" / "clip one.wav", 1.5)
    sf.write(str(folder / "sub" / "tone.mp3"), tone(2.0, 22050), 22050)
    (folder / "sub" / "notes.wav").write_text("not audio")
    out = tmp_path / "features.npz"
    musicssl_command = str(Path(sys.executable).parent / "musicssl")  # the console script a user types
    result = subprocess.run([musicssl_command, "extract", str(model_dir), str(folder),
                             "-o", str(out), "--layers", "0,2", "--chunk-seconds", "1"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "wrote 3 of 4 files" in result.stdout
    assert "notes.wav: cannot decode" in result.stderr
    data = np.load(out)
    assert data["layers"].tolist() == [0, 2] and float(data["frame_rate_hz"]) == 50.0
    flac = str(folder / "Ünïcødé song.FLAC")
    assert flac in data["files"].tolist() and len(data["files"]) == 3
    expected = musicssl.load_model(model_dir, device="cpu").extract_file(flac, [0, 2], chunk_seconds=1)
    np.testing.assert_array_equal(data[flac], expected.numpy())  # the same computation, stored as float32
    assert data[flac].shape == (2, (32000 - 400) // 320 + 1, 32)
