"""`musicssl labels rvq --codec encodec --checkpoint FILE.th`: EnCodec 24 kHz codes of every manifest row
as the same CODES layout as `--rvq` (8 codebooks of 1,024 at 75 Hz, codebooks.json recording the
checkpoint's sha256 and the codec's settings), which `pretrain mert --labels CODES` reads; a checkpoint
of another architecture, or no checkpoint, refused in one line with nothing written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from musicssl import audio
from musicssl.cli import main
from musicssl.data.label_files import expand_label_dirs, read_label_set, read_labels
from musicssl.data.manifest import read_manifest
from musicssl.interop.encodec import load_encodec
from musicssl.train.mert import mert_run
from tests.interop.test_encodec import random_checkpoint_state, write_checkpoint
from tests.train.test_pretrain_musichubert import pitched_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("encodec_labels")
    pitched_corpus(root / "corpus", files=4, seconds=1.5)  # 16 kHz files: resampled to 24 kHz
    assert main(["manifest", str(root / "corpus"), "-o", str(root / "data"), "--sample-rate", "24000",
                 "--valid-percent", "25", "--workers", "1"]) == 0
    write_checkpoint(root / "codec.th")
    return root


def test_encodec_codes_are_the_codecs_tokens_in_the_codebook_layout(corpus, capsys):
    out = corpus / "codes"
    assert main(["labels", "rvq", "--data", str(corpus / "data"), "-o", str(out), "--codec", "encodec",
                 "--checkpoint", str(corpus / "codec.th")]) == 0
    err = capsys.readouterr().err
    assert err.count("resampled to 24000 Hz") == 1 and "16000 Hz audio" in err  # said once
    listing = json.loads((out / "codebooks.json").read_text())
    assert listing["codebooks"] == [f"codebook_{i}" for i in range(8)]
    assert listing["grid"] == {"sample_rate": 24000, "hop": 320, "window": 320, "rate_hz": 75.0}
    source = listing["source"]
    assert source["kind"] == "encodec" and source["checkpoint"] == str((corpus / "codec.th").resolve())
    assert source["sha256"] == hashlib.sha256((corpus / "codec.th").read_bytes()).hexdigest()
    assert source["codec"] == {"sample_rate": 24000, "bandwidth_kbps": 6.0, "frame_rate": 75, "num_codebooks": 8,
                               "codebook_size": 1024, "normalize": False, "segment_seconds": None}
    tokenizer, _ = load_encodec(corpus / "codec.th")
    for split in ("train", "valid"):
        manifest = read_manifest(corpus / "data" / f"{split}.tsv")
        rows = [read_labels(out / f"codebook_{i}" / f"{split}.km") for i in range(8)]
        for row in range(len(manifest)):
            wav = torch.from_numpy(audio.load_audio(manifest.path(row), 24_000))
            expected = tokenizer.tokens(wav[None])[0]  # (T, 8)
            assert expected.shape[0] == manifest.num_samples(row) // 320
            for codebook in range(8):
                assert rows[codebook][row].tolist() == expected[:, codebook].tolist()
    info = json.loads((out / "codebook_5" / "labels.json").read_text())
    assert info["k"] == 1024 and info["feature"]["codebook"] == 5 and info["feature"]["sha256"] == source["sha256"]
    assert set(info["manifest_fingerprints"]) == {"train", "valid"}
    # what `pretrain mert --labels CODES` reads: 8 label sets of 1,024 at 75 Hz of 24 kHz audio
    run = mert_run("tiny", [read_label_set(d) for d in expand_label_dirs(out)])
    assert run.model.codebooks == (1024,) * 8
    assert len({read_label_set(d).fingerprint for d in expand_label_dirs(out)}) == 8


def refused(capsys, *argv: str) -> str:
    try:
        code = main(list(argv))
    except SystemExit as parse_error:  # argparse's refusals exit while parsing
        code = parse_error.code
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_checkpoint_of_another_architecture_is_refused_and_nothing_written(corpus, tmp_path, capsys):
    state = random_checkpoint_state()
    state["encoder.model.0.conv.conv.weight_v"] = torch.zeros(32, 2, 7)  # a stereo input layer
    bad = write_checkpoint(tmp_path / "other.th", state)
    out = tmp_path / "codes"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    line = refused(capsys, "labels", "rvq", "--data", str(corpus / "data"), "-o", str(out), "--codec", "encodec",
                   "--checkpoint", str(bad))
    assert line.startswith(f"musicssl labels: error: {bad}: ") and "48 kHz" in line
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".codes*"))  # no temporary sibling either
    (tmp_path / "short.th").write_bytes((corpus / "codec.th").read_bytes()[:5000])
    line = refused(capsys, "labels", "rvq", "--data", str(corpus / "data"), "-o", str(tmp_path / "new"),
                   "--codec", "encodec", "--checkpoint", str(tmp_path / "short.th"))
    assert str(tmp_path / "short.th") in line and not (tmp_path / "new").exists()


def test_the_codec_without_a_checkpoint_or_with_an_rvq_is_one_line(corpus, tmp_path, capsys):
    common = ["labels", "rvq", "--data", str(corpus / "data"), "-o", str(tmp_path / "codes")]
    assert "needs --checkpoint" in refused(capsys, *common, "--codec", "encodec")
    assert "not allowed with argument" in refused(capsys, *common, "--codec", "encodec", "--rvq", str(tmp_path))
    assert "--checkpoint goes with --codec" in refused(capsys, *common, "--rvq", str(tmp_path), "--checkpoint", "x.th")
    assert "one of the arguments --rvq --codec is required" in refused(capsys, *common)
    assert not (tmp_path / "codes").exists()


def test_a_16khz_manifest_is_refused_with_the_command_that_fixes_it(corpus, tmp_path, capsys):
    assert main(["manifest", str(corpus / "corpus"), "-o", str(tmp_path / "data16k"), "--workers", "1"]) == 0
    capsys.readouterr()
    line = refused(capsys, "labels", "rvq", "--data", str(tmp_path / "data16k"), "-o", str(tmp_path / "codes"),
                   "--codec", "encodec", "--checkpoint", str(corpus / "codec.th"))
    assert "16000 Hz" in line and "--sample-rate 24000" in line and not (tmp_path / "codes").exists()
