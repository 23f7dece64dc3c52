"""Reading only the crop: the same crops, samples and labels as decoding the whole file."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from musicssl import audio
from musicssl.data.crop_read import MARGIN_SECONDS, WholeFile, read_span
from musicssl.data.manifest import read_manifest, write_manifest
from musicssl.data.pretrain import LabelRows, PretrainDataset, collate
from musicssl.data.label_files import LabelGrid

SR = 16_000
GRID = LabelGrid(SR, 320, 400)  # 50 Hz
EPS32 = float(np.finfo(np.float32).eps)
FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS"),
           "mp3": ("MP3", "MPEG_LAYER_III")}


def music(seconds: float, rate: int, seed: int) -> np.ndarray:
    """(n, 2) float32: two detuned harmonic tones and noise, different on each channel."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    left = sum(np.sin(2 * np.pi * 220 * k * t) / k for k in range(1, 6))
    right = sum(np.sin(2 * np.pi * 331 * k * t) / k for k in range(1, 4))
    wav = np.stack([left, right], axis=1) * 0.2 + 0.05 * rng.standard_normal((t.size, 2))
    return wav.astype(np.float32)


def resampler_tolerance(native: int, magnitude: float) -> float:
    """Float32 rounding of soxr's filter sums, both readings, plus the tail cut by the margin.

    An output sample is a sum of L = (taps reaching 1e-8 of the peak) products h_i x_i; float32
    accumulation errs by about eps32 * sqrt(L) * sum|h_i| * max|x| (random-walk rounding), and the
    two readings round independently (x2). sum|h_i| over input taps is (native / SR) times the sum
    of the response to one input impulse on the output grid; L is its support times native / SR.
    The piece lacks the filter's taps beyond the margin (MARGIN_SECONDS), < 1e-8 of the peak each.
    """
    impulse = np.zeros(4 * native, np.float32)
    impulse[2 * native] = 1.0
    response = np.abs(soxr.resample(impulse, native, SR, quality=audio.RESAMPLE_QUALITY))  # (4 * SR,)
    gain = native / SR * response.sum()
    support = np.flatnonzero(response > 1e-8 * response.max())
    taps = (support[-1] - support[0] + 1) * native / SR
    assert (support[-1] - support[0]) / 2 < MARGIN_SECONDS * SR  # the margin covers the filter's reach
    return (2 * EPS32 * math.sqrt(taps) * gain + 1e-8 * taps) * magnitude


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """One 12 s 44.1 kHz stereo file per format, one 22.05 kHz, one at the model's rate; a
    manifest of their whole-file lengths (as `musicssl manifest` writes it)."""
    root = tmp_path_factory.mktemp("crop_read")
    items = []
    for i, (extension, (kind, subtype)) in enumerate(FORMATS.items()):
        sf.write(str(root / f"song.{extension}"), music(12.0, 44_100, i), 44_100, format=kind, subtype=subtype)
        items.append(f"song.{extension}")
    sf.write(str(root / "low.flac"), music(7.3, 22_050, 7), 22_050)
    sf.write(str(root / "model_rate.flac"), music(6.0, SR, 8), SR)
    items += ["low.flac", "model_rate.flac"]
    write_manifest(root / "train.tsv", root, [(name, len(audio.load_audio(root / name, SR))) for name in items])
    return root / "train.tsv"


@pytest.mark.parametrize("name", ["song.wav", "song.flac", "song.ogg", "song.mp3", "low.flac"])
def test_a_span_equals_the_whole_file_decode_within_the_resamplers_rounding(corpus, name):
    path = corpus.parent / name
    whole = audio.load_audio(path, SR)  # (N,)
    tolerance = resampler_tolerance(sf.info(str(path)).samplerate, float(np.abs(whole).max()))
    crop = 5 * SR if len(whole) > 5 * SR else SR
    rng = np.random.default_rng(0)
    for start in [0, 1, 159, len(whole) - crop, *rng.integers(0, len(whole) - crop, 6)]:
        span = read_span(path, SR, len(whole), int(start), int(start) + crop)
        assert span.shape == (crop,) and span.dtype == np.float32
        assert np.abs(span - whole[start:start + crop]).max() <= tolerance, (start, tolerance)


def test_at_the_models_rate_a_span_is_the_decode_itself(corpus):
    path = corpus.parent / "model_rate.flac"
    whole = audio.load_audio(path, SR)
    for start in (0, 12_345, len(whole) - SR):
        assert np.array_equal(read_span(path, SR, len(whole), start, start + SR), whole[start:start + SR])


def test_crop_only_gives_the_same_crops_and_labels_as_decoding_the_whole_file(corpus, tmp_path):
    manifest = read_manifest(corpus)
    rows = [" ".join(map(str, range(GRID.frames(n)))) for _, n in manifest.items]
    (tmp_path / "train.km").write_text("\n".join(rows) + "\n")
    make = {crop_only: PretrainDataset(manifest, SR, 5 * SR, SR, seed=3, labels=LabelRows(tmp_path / "train.km"),
                                       label_grid=GRID, crop_only=crop_only) for crop_only in (True, False)}
    for epoch in range(3):
        for row in range(len(manifest)):
            fast, slow = make[True][(epoch, row)], make[False][(epoch, row)]
            assert fast["offset"] == slow["offset"] and torch.equal(fast["labels"], slow["labels"])
            assert (fast["whole_file"], slow["whole_file"]) == (False, True)
            native = sf.info(str(manifest.path(row))).samplerate
            tolerance = resampler_tolerance(native, float(slow["wav"].abs().max()))
            assert fast["wav"].shape == slow["wav"].shape
            assert (fast["wav"] - slow["wav"]).abs().max() <= tolerance


def test_a_format_not_measured_to_seek_exactly_is_read_whole_and_counted(tmp_path, capsys):
    """AU is a real format libsndfile reads, but not one measured here: decoded whole, logged once
    per file, counted per batch (the trainer's log.jsonl sums it as whole_file_reads)."""
    sf.write(str(tmp_path / "a.au"), music(3.0, 44_100, 0), 44_100, format="AU")
    sf.write(str(tmp_path / "b.flac"), music(3.0, 44_100, 1), 44_100)
    write_manifest(tmp_path / "train.tsv", tmp_path, [(n, len(audio.load_audio(tmp_path / n, SR)))
                                                      for n in ("a.au", "b.flac")])
    manifest = read_manifest(tmp_path / "train.tsv")
    with pytest.raises(WholeFile, match="format AU is not one measured to seek exactly"):
        read_span(manifest.path(0), SR, manifest.num_samples(0), 0, SR)
    dataset = PretrainDataset(manifest, SR, SR, SR // 2, seed=0)
    batches = [collate([dataset[(epoch, 0)], dataset[(epoch, 1)]]) for epoch in range(3)]
    assert [b.whole_file_reads for b in batches] == [1, 1, 1] and all(b.skipped == 0 for b in batches)
    assert capsys.readouterr().err.count("a.au whole: format AU") == 1
    whole = audio.load_audio(manifest.path(0), SR)
    item = dataset[(0, 0)]
    assert torch.equal(item["wav"], torch.from_numpy(whole[item["offset"]:item["offset"] + SR]))


def test_a_file_replaced_since_the_manifest_falls_back_and_is_skipped_as_changed(tmp_path, capsys):
    sf.write(str(tmp_path / "a.flac"), music(3.0, 44_100, 0), 44_100)
    write_manifest(tmp_path / "train.tsv", tmp_path, [("a.flac", len(audio.load_audio(tmp_path / "a.flac", SR)))])
    sf.write(str(tmp_path / "a.flac"), music(2.5, 44_100, 0), 44_100)
    dataset = PretrainDataset(read_manifest(tmp_path / "train.tsv"), SR, SR, SR // 2, seed=0)
    assert dataset[(0, 0)] is None and dataset.skipped == {"changed": 1}
    assert "not the manifest's 48000 samples" in capsys.readouterr().err
