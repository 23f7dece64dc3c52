"""Manifests: scanning, failure report, fairseq format, validation of what is read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musicssl.data.manifest import ManifestError, build_manifest, read_manifest, split_items
from tests.conftest import tone, write_tone


def corpus_with_bad_files(root):
    """Five good files in three formats and rates, plus the three bad kinds the issue names."""
    (root / "album one").mkdir(parents=True)
    write_tone(root / "album one" / "a.wav", 1.0)
    write_tone(root / "album one" / "Ünïcødé b.FLAC", 1.5, 44100, channels=2)
    sf.write(str(root / "c.mp3"), tone(2.0, 22050), 22050)
    write_tone(root / "d.flac", 0.7)
    write_tone(root / "e.wav", 1.2, 8000)
    sf.write(str(root / "empty.wav"), np.zeros(0, np.float32), 16000)
    full = root / "full.mp3"
    sf.write(str(full), tone(2.0, 16000), 16000)
    (root / "truncated.mp3").write_bytes(full.read_bytes()[:200])
    full.unlink()
    (root / "notes.wav").write_text("this is not audio")
    return root


def test_manifest_lists_good_files_and_reports_bad_ones(tmp_path):
    root = corpus_with_bad_files(tmp_path / "corpus")
    summary = build_manifest(root, tmp_path / "manifest", valid_percent=40, seed=1, workers=1, progress=False)
    assert (summary.train, summary.valid) == (3, 2)
    assert sorted(path for path, _ in summary.failed) == ["empty.wav", "notes.wav", "truncated.mp3"]
    report = (tmp_path / "manifest" / "manifest_report.tsv").read_text().splitlines()
    assert report[0] == "path\treason" and len(report) == 4
    train, valid = read_manifest(tmp_path / "manifest" / "train.tsv"), read_manifest(tmp_path / "manifest" / "valid.tsv")
    assert train.root == root.resolve()
    lengths = dict(train.items + valid.items)
    assert lengths["album one/a.wav"] == 16000
    assert lengths["e.wav"] == 19200  # 1.2 s at 8 kHz, resampled to 16 kHz
    assert abs(lengths["album one/Ünïcødé b.FLAC"] - 24000) <= 1
    assert abs(lengths["c.mp3"] - 32000) <= 2


def test_manifest_is_reproducible_and_parallel_equals_serial(tmp_path):
    root = corpus_with_bad_files(tmp_path / "corpus")
    build_manifest(root, tmp_path / "one", valid_percent=40, seed=3, workers=1, progress=False)
    build_manifest(root, tmp_path / "two", valid_percent=40, seed=3, workers=2, progress=False)
    for name in ("train.tsv", "valid.tsv", "manifest_report.tsv"):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text()


def test_split_is_seeded_and_keeps_order():
    items = [(f"{i}.wav", 100 + i) for i in range(20)]
    train, valid = split_items(items, 25, seed=0)
    assert len(valid) == 5 and len(train) == 15
    assert train == [item for item in items if item in train] and valid == [item for item in items if item in valid]
    assert split_items(items, 25, seed=0) == (train, valid)
    assert split_items(items, 25, seed=1) != (train, valid)


@pytest.mark.parametrize("text, message", [
    ("", "first line must be the audio root"),
    ("/root\ta\n", "root directory alone"),
    ("/root\na.wav 100\n", r"train.tsv:2: expected 'relative/path<TAB>num_samples'"),
    ("/root\na.wav\tlots\n", r"train.tsv:2: num_samples 'lots' is not an integer"),
    ("/root\na.wav\t10\nb.wav\t0\n", r"train.tsv:3: num_samples must be positive"),
])
def test_reading_a_bad_manifest_names_the_line(tmp_path, text, message):
    path = tmp_path / "train.tsv"
    path.write_text(text)
    with pytest.raises(ManifestError, match=message):
        read_manifest(path)


def test_shards_cover_every_row_once():
    from musicssl.data.manifest import Manifest

    manifest = Manifest(Path("/x"), tuple((f"{i}", 1) for i in range(10)))
    rows = [list(manifest.shard(i, 3)) for i in range(3)]
    assert sum(rows, []) == list(range(10))


def test_names_a_tsv_cannot_hold_are_reported_and_left_out(tmp_path, capsys):
    from musicssl import cli

    root = tmp_path / "corpus"
    root.mkdir()
    for name in ("good.wav", "tab\there.wav", "new\nline.wav", "para\u2029graph.wav"):
        write_tone(root / name, 0.5)
    assert cli.main(["manifest", str(root), "-o", str(tmp_path / "m"), "--workers", "1"]) == 0
    out, err = capsys.readouterr()
    assert "3 left out" in out
    for name in ("tab\there.wav", "new\nline.wav", "para\u2029graph.wav"):
        assert f"skipped {name!r}: its name holds a tab or line break" in err
    assert read_manifest(tmp_path / "m" / "train.tsv").items == (("good.wav", 8000),)  # the next step reads it
    report = (tmp_path / "m" / "manifest_report.tsv").read_text(encoding="utf-8").split("\n")
    assert len(report) == 5 and all(line.count("\t") == 1 for line in report[:4])  # header + 3 rows, then ""


def test_fingerprint_follows_the_rows_and_the_sidecar_records_it(tmp_path):
    import json

    root = tmp_path / "corpus"
    root.mkdir()
    for index in range(6):
        write_tone(root / f"{index}.wav", 0.5, frequency=200.0 + 50 * index)  # equal lengths
    build_manifest(root, tmp_path / "a", valid_percent=34, seed=0, workers=1, progress=False)
    build_manifest(root, tmp_path / "b", valid_percent=34, seed=1, workers=1, progress=False)
    a, b = (read_manifest(tmp_path / name / "train.tsv") for name in "ab")
    assert len(a) == len(b) and [n for _, n in a.items] == [n for _, n in b.items] and a.items != b.items
    assert a.fingerprint != b.fingerprint
    moved = type(a)(Path("/elsewhere"), a.items)  # the root is not part of the rows' identity
    assert moved.fingerprint == a.fingerprint
    sidecar = json.loads((tmp_path / "a" / "manifest.json").read_text())["splits"]
    assert sidecar["train"] == {"rows": len(a), "fingerprint": a.fingerprint, "sample_rate": 16_000}
    assert sidecar["valid"]["fingerprint"] == read_manifest(tmp_path / "a" / "valid.tsv").fingerprint
    assert (tmp_path / "a" / "train.tsv").read_text().splitlines()[0] == str(root.resolve())  # fairseq's tsv


def test_a_manifest_read_at_another_rate_is_refused_recorded_or_not(tmp_path):
    from musicssl.data.manifest import ManifestError, check_sample_rate

    root = tmp_path / "audio"
    root.mkdir()
    write_tone(root / "a.wav", 1.0)
    build_manifest(root, tmp_path / "m", workers=1, progress=False, sample_rate=16_000)
    check_sample_rate(tmp_path / "m" / "train.tsv", 16_000)
    with pytest.raises(ManifestError, match="at 16000 Hz, this model reads 24000 Hz.*--sample-rate 24000"):
        check_sample_rate(tmp_path / "m" / "train.tsv", 24_000)
    (tmp_path / "m" / "manifest.json").unlink()  # an older manifest: the headers tell
    with pytest.raises(ManifestError, match="about 16000 Hz"):
        check_sample_rate(tmp_path / "m" / "train.tsv", 24_000)
