"""`musicssl prepare`: int16 shards at the model's rate, resumable, parallel, rows lining up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musicssl import audio
from musicssl.data.manifest import read_manifest, write_manifest
from musicssl.data.prepare import PreparedCorpus, prepare, shard_name
from musicssl.data.pretrain import DataConfig, PretrainDataset, build_pretrain_data

MUSICSSL = str(Path(sys.executable).parent / "musicssl")
SR = 16_000


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """7 files: 44.1 kHz stereo flac (loud enough to exceed 1.0 after resampling), 16 kHz PCM_16
    mono wav, 22.05 kHz mp3; one file that turns unreadable after the manifest was built."""
    root = tmp_path_factory.mktemp("prepare")
    rng = np.random.default_rng(0)
    names = []
    for i in range(7):
        rate, extension = [(44_100, "flac"), (SR, "wav"), (22_050, "mp3")][i % 3]
        seconds = 2.0 + 0.37 * i
        t = np.arange(int(seconds * rate)) / rate
        wav = np.sign(np.sin(2 * np.pi * (150 + 40 * i) * t)) * 0.999 if i == 0 else (
            0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.05 * rng.standard_normal(t.size))
        wav = np.stack([wav, wav if i == 0 else wav[::-1]], axis=1)[:, :1 if extension == "wav" else 2].astype(np.float32)
        sf.write(str(root / f"{i}.{extension}"), wav, rate)
        names.append(f"{i}.{extension}")
    (root / "manifest").mkdir()
    write_manifest(root / "manifest" / "train.tsv", root, [(n, len(audio.load_audio(root / n, SR))) for n in names])
    return root


def test_rows_equal_the_decoded_files_within_half_an_int16_step(source, tmp_path):
    summary = prepare(source / "manifest", tmp_path / "prep", SR, num_shards=3, workers=1, progress=False)
    assert (len(summary.written), summary.done, summary.total, summary.unreadable) == (3, 3, 3, 0)
    manifest = read_manifest(source / "manifest" / "train.tsv")
    assert read_manifest(tmp_path / "prep" / "train.tsv") == manifest  # the same rows: labels line up
    corpus = PreparedCorpus(tmp_path / "prep", "train", SR)
    for row in range(len(manifest)):
        whole = audio.load_audio(manifest.path(row), SR)
        stored = corpus.read(row, 0, len(whole))
        step = float(corpus.steps[row])
        # round-to-nearest, then the float32 product k * step (relative error eps32/2)
        bound = step / 2 + float(np.abs(whole).max()) * np.finfo(np.float32).eps
        assert stored.dtype == np.float32 and np.abs(stored - whole).max() <= bound, row
        if manifest.path(row).suffix == ".wav":  # mono PCM_16 at the model's rate: stored exactly
            assert np.array_equal(stored, whole)
        assert np.array_equal(corpus.read(row, 1000, 3000), stored[1000:3000])
    assert corpus.steps[0] > 1 / 32768  # the resampled square wave overshoots 1.0: no clipping


def test_a_killed_or_partial_prepare_resumes_and_array_jobs_give_the_same_bytes(source, tmp_path):
    one = tmp_path / "one"
    prepare(source / "manifest", one, SR, num_shards=3, workers=1, progress=False)
    # Array jobs: each writes its own shard, in parallel processes, through the CLI.
    jobs = tmp_path / "jobs"
    command = [MUSICSSL, "prepare", "--data", str(source / "manifest"), "-o", str(jobs), "--num-shards", "3"]
    running = [subprocess.Popen([*command, "--shard", str(k)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for k in (0, 2)]
    assert all(p.wait(timeout=300) == 0 for p in running), [p.stderr.read() for p in running]
    with pytest.raises(ValueError, match="1 of 3 train shards are not written yet"):
        PreparedCorpus(jobs, "train", SR)
    # A killed writer leaves only a hidden partial file (atomic.py's name, with the dead job's
    # pid); the next run writes the missing shard only.
    (jobs / f".{shard_name('train', 1, 3)}.i16.99999.partial").write_bytes(b"half a shard")
    summary = prepare(source / "manifest", jobs, SR, num_shards=3, workers=1, progress=False)
    assert summary.written == [shard_name("train", 1, 3)] and summary.done == 3
    for k in range(3):
        name = shard_name("train", k, 3)
        assert (one / f"{name}.i16").read_bytes() == (jobs / f"{name}.i16").read_bytes()
        assert (one / f"{name}.npz").read_bytes() == (jobs / f"{name}.npz").read_bytes()
    refused = subprocess.run([*command[:-1], "2"], capture_output=True, text=True)
    assert refused.returncode == 2 and "use another --out or the same manifest" in refused.stderr


def test_pretrain_data_reads_crops_from_the_shards_and_skips_unreadable_rows(source, tmp_path, capfd):
    import shutil

    corpus = tmp_path / "corpus"
    shutil.copytree(source, corpus)
    manifest = read_manifest(source / "manifest" / "train.tsv")
    write_manifest(corpus / "manifest" / "train.tsv", corpus, list(manifest.items))
    (corpus / "4.wav").write_bytes(b"gone")
    prepare(corpus / "manifest", tmp_path / "prep", SR, num_shards=2, workers=2, progress=False)
    assert "4.wav: cannot decode" in capfd.readouterr().err  # from a worker process
    config = DataConfig(crop_seconds=1.0, min_seconds=0.5, batch_seconds=2.0, micro_batch_seconds=1.0)
    shards, _ = build_pretrain_data(tmp_path / "prep", config=config)
    # the whole-file path: the shards differ from it by the int16 rounding alone
    files = PretrainDataset(read_manifest(corpus / "manifest" / "train.tsv"), SR, SR, SR // 2, seed=0,
                            crop_only=False)
    assert shards.prepared is not None and files.prepared is None
    for epoch in range(2):
        for row in range(len(manifest)):
            fast, slow = shards[(epoch, row)], files[(epoch, row)]
            if row == 4:
                assert fast is None and slow is None
                continue
            assert fast["offset"] == slow["offset"]
            step = float(shards.prepared.steps[row])
            bound = step / 2 + float(slow["wav"].abs().max()) * np.finfo(np.float32).eps
            assert (fast["wav"] - slow["wav"]).abs().max() <= bound
    assert shards.skipped == {"undecodable": 2}
    with pytest.raises(ValueError, match="prepared at 16000 Hz, the model reads 24000 Hz"):
        build_pretrain_data(tmp_path / "prep", sample_rate=24_000, config=config)
