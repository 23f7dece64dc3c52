"""`musicssl extract` never leaves a wrong or emptied output behind (issue 26, items 4, 8, 12):
arguments out of range and unwritable outputs are refused before any work, a run in which no
file can be read keeps the previous archive, and `--pool mean` streams a running sum."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import musicssl
from musicssl.cli import main
from tests.conftest import tone, write_tone
from tests.numerics import U32, U64, gamma


def mean_bound(frames: torch.Tensor, u: float) -> torch.Tensor:
    """Elementwise bound on |fl(mean over axis 1) - mean| of (K, T, D) frames summed in precision
    `u`, in any order: gamma(T) * mean(|x|) for the sum (Higham eq. 3.5), plus one rounding of
    the division in float32 (the result is stored as float32)."""
    magnitude = frames.double().abs().mean(1)
    return gamma(frames.shape[1], u) * magnitude + U32 * frames.double().mean(1).abs()


def test_pooled_extraction_equals_the_mean_of_the_frames(model_dir):
    encoder = musicssl.load_model(model_dir, device="cpu")
    signal = tone(6.0, frequency=330.0)
    # several chunks with context: the running sum must see every frame of every chunk once
    frames = encoder.extract(signal, 16000, chunk_seconds=1.0, context_seconds=0.5)  # (K, T, D)
    pooled = encoder.extract_mean(signal, 16000, chunk_seconds=1.0, context_seconds=0.5)  # (K, D)
    assert pooled.dtype == torch.float32 and pooled.shape == (3, 32)
    truth = frames.double().mean(1)
    # ours: float64 sum, then one float32 rounding; the float32 mean of the same frames: float32 sum
    assert torch.all((pooled.double() - truth).abs() <= mean_bound(frames, U64))
    float32_mean = frames.mean(1).double()
    assert torch.all((pooled.double() - float32_mean).abs() <= mean_bound(frames, U64) + mean_bound(frames, U32))
    # a frame dropped or counted twice is far outside that bound
    shifted = frames[:, 1:].double().mean(1)
    assert torch.any((shifted - truth).abs() > 100 * mean_bound(frames, U32))
    # the layer order asked for is kept
    assert torch.equal(encoder.extract_mean(signal, 16000, [2, 0], 1.0, 0.5), pooled[[2, 0]])


def test_cli_pool_mean_writes_the_streamed_mean(model_dir, tmp_path):
    path = write_tone(tmp_path / "a.wav", 5.0)
    out = tmp_path / "pooled.npz"
    assert main(["extract", str(model_dir), str(path), "-o", str(out), "--pool", "mean", "--chunk-seconds", "2"]) == 0
    frames = musicssl.load_model(model_dir, device="cpu").extract_file(path, chunk_seconds=2.0)
    stored = torch.from_numpy(np.load(out)[str(path)]).double()
    assert torch.all((stored - frames.double().mean(1)).abs() <= mean_bound(frames, U64))


def test_extract_that_reads_no_file_keeps_the_existing_output(model_dir, tmp_path, capsys):
    good = write_tone(tmp_path / "good.wav", 1.0)
    out = tmp_path / "keep.npz"
    assert main(["extract", str(model_dir), str(good), "-o", str(out)]) == 0
    before = out.read_bytes()
    assert main(["extract", str(model_dir), str(tmp_path / "typo.wav"), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # the progress bar, the skipped file, the error
    assert any(line.startswith("skipped ") and "typo.wav" in line for line in err)
    assert err[-1].startswith("musicssl extract: error: ") and "keep.npz: not written: none of the 1" in err[-1]
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p != model_dir) == ["good.wav", "keep.npz"]  # no partial


@pytest.mark.parametrize("argument", [["--chunk-seconds", "-5"], ["--chunk-seconds", "0"],
                                      ["--chunk-seconds", "nan"], ["--chunk-seconds", "inf"],
                                      ["--context-seconds", "-1"]])
def test_extract_refuses_out_of_range_numbers_at_parse_time(model_dir, tmp_path, capsys, argument):
    path = write_tone(tmp_path / "a.wav", 1.0)
    with pytest.raises(SystemExit) as exit_info:
        main(["extract", str(model_dir), str(path), "-o", str(tmp_path / "o.npz"), *argument])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {argument[0]}: expected a number" in err and "Traceback" not in err
    assert not (tmp_path / "o.npz").exists()


def test_extract_one_pass_is_spelt_none(model_dir, tmp_path):
    path = write_tone(tmp_path / "a.wav", 3.0)
    out = tmp_path / "o.npz"
    assert main(["extract", str(model_dir), str(path), "-o", str(out), "--chunk-seconds", "none"]) == 0
    whole = musicssl.load_model(model_dir, device="cpu").extract_file(path, chunk_seconds=None)
    np.testing.assert_array_equal(np.load(out)[str(path)], whole.numpy())


def unwritable_outputs(tmp_path):
    tmp_path.mkdir()
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_dir").mkdir()
    yield tmp_path / "a_file" / "out.npz", "a_file is a file, not a folder"
    yield tmp_path / "a_file" / "deeper" / "out.npz", "a_file is a file, not a folder"
    yield tmp_path / "a_dir", "a_dir: is a directory"


def test_extract_refuses_an_unwritable_output_before_any_work(model_dir, tmp_path, capsys, monkeypatch):
    path = write_tone(tmp_path / "a.wav", 1.0)
    monkeypatch.setattr(musicssl.extract, "load_model", lambda *a, **k: pytest.fail("work began"))
    for out, reason in unwritable_outputs(tmp_path / "outputs"):
        assert main(["extract", str(model_dir), str(path), "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and reason in err and "Traceback" not in err
    assert not list((tmp_path / "outputs").rglob("*partial*"))
    assert list((tmp_path / "outputs" / "a_dir").iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_extract_refuses_a_read_only_folder(model_dir, tmp_path, capsys):
    path = write_tone(tmp_path / "a.wav", 1.0)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["extract", str(model_dir), str(path), "-o", str(locked / "o.npz")]) == 2
        assert "no permission to write in" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)
