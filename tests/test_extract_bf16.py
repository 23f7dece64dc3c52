"""`--dtype bf16` (issue 27): bf16 autocast around the encoder where the CPU computes bf16 natively,
refused (saying why) where it does not, features within bf16's rounding of float32's, and cached
features that record the precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import musicssl
from musicssl import extract
from musicssl.cli import main
from musicssl.evaluate.sources import open_source
from tests.conftest import tone, write_tone

U_BF16 = 2.0**-8  # bf16's unit roundoff: 8 significant bits


@pytest.fixture
def native_bf16(monkeypatch):
    """A CPU that reports avx512_bf16 (on one that does not, torch emulates it: slower, same numbers)."""
    monkeypatch.setattr(extract, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})


@pytest.fixture
def no_bf16(monkeypatch):
    monkeypatch.setattr(extract, "cpu_flags", lambda: {"avx2", "fma"})


def test_auto_is_fp32_on_a_cpu_and_bf16_is_refused_without_native_support(model_dir, no_bf16):
    assert musicssl.load_model(model_dir, device="cpu").dtype == "fp32"
    with pytest.raises(ValueError, match="no native bf16.*avx512_bf16"):
        musicssl.load_model(model_dir, device="cpu", dtype="bf16")
    with pytest.raises(ValueError, match="dtype must be one of"):
        musicssl.load_model(model_dir, device="cpu", dtype="fp16")


def test_bf16_features_are_float32_within_bf16_rounding(model_dir, native_bf16):
    fp32 = musicssl.load_model(model_dir, device="cpu")
    bf16 = musicssl.load_model(model_dir, device="cpu", dtype="bf16")
    signal = tone(3.0)
    a, b = fp32.extract(signal, 16000), bf16.extract(signal, 16000)
    assert b.dtype == torch.float32 and b.shape == a.shape
    # Each bf16 matmul / convolution rounds its inputs to 8 significant bits (relative u = 2^-8);
    # the errors of the CNN's blocks and the Transformer's layers add along the depth, and a
    # LayerNorm renormalises each state: a state's relative error stays within about
    # depth x u, given twice that margin here. A wrong path (no autocast, a wrong cast) is either 0
    # or orders of magnitude larger.
    depth = len(fp32.config.conv_layers) + fp32.config.num_layers
    for index in range(a.shape[0]):
        relative = float((a[index] - b[index]).norm() / a[index].norm())
        assert 0 < relative <= 2 * depth * U_BF16, (index, relative)


def test_bf16_and_fp32_caches_never_mix(model_dir, native_bf16):
    default = open_source(str(model_dir), device="cpu")
    fp32 = open_source(str(model_dir), device="cpu", dtype="fp32")
    bf16 = open_source(str(model_dir), device="cpu", dtype="bf16")
    assert default.fingerprint == fp32.fingerprint != bf16.fingerprint
    assert bf16.describe()["dtype"] == "bf16" and fp32.describe()["dtype"] == "fp32"


def test_extract_cli_refuses_bf16_on_a_cpu_without_it_in_one_line(model_dir, tmp_path, capsys, no_bf16):
    write_tone(tmp_path / "a.wav", 1.0)
    out = tmp_path / "f.npz"
    assert main(["extract", str(model_dir), str(tmp_path / "a.wav"), "-o", str(out), "--dtype", "bf16"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "no native bf16" in error and not out.exists()


def test_extract_cli_bf16_writes_float32_features(model_dir, tmp_path, native_bf16):
    write_tone(tmp_path / "a.wav", 1.0)
    out = tmp_path / "f.npz"
    assert main(["extract", str(model_dir), str(tmp_path / "a.wav"), "-o", str(out), "--dtype", "bf16"]) == 0
    with np.load(out) as archive:
        (array,) = [archive[key] for key in archive.files if key.endswith("a.wav")]
    assert array.dtype == np.float32 and np.isfinite(array).all()
