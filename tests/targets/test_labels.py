"""Labels end to end through the CLI, and the checks that guard them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from musicssl.data.label_files import LabelError, LabelGrid, check_labels, read_label_set, read_labels
from musicssl.data.manifest import read_manifest
from musicssl.interop.huggingface import export_pretrained
from tests.conftest import micro_backbone
from tests.data.test_manifest import corpus_with_bad_files

MUSICSSL = str(Path(sys.executable).parent / "musicssl")


def run(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([MUSICSSL, *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def manifest_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("labels")
    corpus = corpus_with_bad_files(root / "corpus")
    result = run("manifest", str(corpus), "-o", str(root / "manifest"), "--valid-percent", "20")
    assert "3 left out" in result.stdout
    for name in ("empty.wav", "truncated.mp3", "notes.wav"):
        assert name in result.stderr
    return root / "manifest"


def test_mfcc_labels_match_frame_counts_and_shards_merge_to_the_same(manifest_dir, tmp_path):
    whole = tmp_path / "whole"
    result = run("labels", "mfcc", "--data", str(manifest_dir), "--out", str(whole), "--k", "12",
                 "--fit-fraction", "1.0")
    assert "audio-hours/min" in result.stderr and "clusters used" in result.stderr
    label_set = read_label_set(whole)
    assert (label_set.k, label_set.grid.rate_hz) == (12, 100.0)
    for split in ("train", "valid"):
        manifest = read_manifest(manifest_dir / f"{split}.tsv")
        rows = read_labels(whole / f"{split}.km")
        # MFCC frames: 25 ms windows every 10 ms, no padding (Kaldi snip_edges).
        assert [len(r) for r in rows] == [1 + (n - 400) // 160 for _, n in manifest.items]
    assert label_set.info["splits"]["train"]["used_clusters"] > 1

    sharded = tmp_path / "sharded"
    run("labels", "mfcc", "--data", str(manifest_dir), "--out", str(sharded), "--k", "12",
        "--fit-fraction", "1.0", "--fit-only")
    for shard in ("0", "1"):
        run("labels", "mfcc", "--data", str(manifest_dir), "--out", str(sharded), "--k", "12",
            "--fit-fraction", "1.0", "--shard", shard, "--num-shards", "2")
    run("labels", "merge", str(sharded), "--data", str(manifest_dir), "--num-shards", "2")
    for split in ("train", "valid"):
        assert (sharded / f"{split}.km").read_text() == (whole / f"{split}.km").read_text()
    assert np.array_equal(np.load(sharded / "centroids.npy"), np.load(whole / "centroids.npy"))


def test_shards_without_clusters_are_refused(manifest_dir, tmp_path):
    result = subprocess.run([MUSICSSL, "labels", "mfcc", "--data", str(manifest_dir), "--out", str(tmp_path / "x"),
                             "--k", "4", "--shard", "0", "--num-shards", "2"], capture_output=True, text=True)
    assert result.returncode == 2 and "--fit-only" in result.stderr


def test_layer_labels_are_at_the_model_frame_rate(manifest_dir, tmp_path):
    model = export_pretrained(micro_backbone("hubert"), tmp_path / "model")
    run("labels", "layer", "--model", str(model), "--layer", "1", "--data", str(manifest_dir),
        "--out", str(tmp_path / "deep"), "--k", "6", "--fit-fraction", "1.0", "--splits", "train")
    label_set = read_label_set(tmp_path / "deep")
    assert label_set.grid.rate_hz == 50.0 and label_set.info["feature"]["layer"] == 1
    manifest = read_manifest(manifest_dir / "train.tsv")
    assert [len(r) for r in read_labels(tmp_path / "deep" / "train.km")] == \
        [(n - 400) // 320 + 1 for _, n in manifest.items]


def test_reusing_a_label_dir_for_other_features_is_refused(manifest_dir, tmp_path):
    run("labels", "mfcc", "--data", str(manifest_dir), "--out", str(tmp_path / "l"), "--k", "4",
        "--fit-fraction", "1.0", "--splits", "train")
    result = subprocess.run([MUSICSSL, "labels", "mfcc", "--dims", "60", "--data", str(manifest_dir),
                             "--out", str(tmp_path / "l"), "--k", "4"], capture_output=True, text=True)
    assert result.returncode == 2 and "feature.dim: 39 there, 60 now" in result.stderr


def labels_cli(*args: str) -> tuple[int, str]:
    """`musicssl labels ...` in this process: (exit status, stderr)."""
    import contextlib
    import io

    from musicssl import cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = cli.main(["labels", *args])
    return status, err.getvalue()


def test_a_label_dir_refuses_other_arguments_and_overwrite_replaces_the_whole_set(manifest_dir, tmp_path):
    out = tmp_path / "l"
    first = ("mfcc", "--data", str(manifest_dir), "--out", str(out), "--fit-fraction", "1.0")
    assert labels_cli(*first, "--k", "4")[0] == 0
    centroids, train = np.load(out / "centroids.npy"), (out / "train.km").read_text()
    assert labels_cli(*first, "--k", "4")[0] == 0  # the same arguments: resumes, same labels
    assert (out / "train.km").read_text() == train

    for change, named in ((("--k", "5"), "k: 4 there, 5 now"), (("--k", "4", "--seed", "1"), "seed: 0 there, 1 now"),
                          (("--k", "4", "--max-frames", "999"), "max_frames: 1000000 there, 999 now")):
        status, err = labels_cli(*first, *change)
        assert status == 2 and named in err and "--overwrite" in err and len(err.splitlines()) == 1
    assert np.array_equal(np.load(out / "centroids.npy"), centroids) and (out / "train.km").read_text() == train

    assert labels_cli(*first, "--k", "5", "--splits", "train", "--overwrite")[0] == 0
    assert read_label_set(out).k == 5 and np.load(out / "centroids.npy").shape == (5, 39)
    assert not (out / "valid.km").exists()  # no stale split of the old set beside the new one
    assert max(max(row) for row in read_labels(out / "train.km")) == 4


def test_labels_from_other_rows_are_refused_by_labels_and_merge(manifest_dir, tmp_path):
    other = tmp_path / "reordered"
    other.mkdir()
    manifest = read_manifest(manifest_dir / "train.tsv")
    from musicssl.data.manifest import write_manifest

    write_manifest(other / "train.tsv", manifest.root, list(reversed(manifest.items)))
    write_manifest(other / "valid.tsv", manifest.root, list(read_manifest(manifest_dir / "valid.tsv").items))
    out = tmp_path / "l"
    args = ("--out", str(out), "--k", "4", "--fit-fraction", "1.0")
    assert labels_cli("mfcc", "--data", str(manifest_dir), *args, "--fit-only")[0] == 0
    status, err = labels_cli("mfcc", "--data", str(other), *args, "--shard", "0", "--num-shards", "2")
    assert status == 2 and "rows of train.tsv" in err
    for shard in ("0", "1"):
        assert labels_cli("mfcc", "--data", str(manifest_dir), *args, "--shard", shard, "--num-shards", "2")[0] == 0
    status, err = labels_cli("merge", str(out), "--data", str(other), "--num-shards", "2")
    assert status == 2 and "train labels were made from a manifest with other rows" in err
    assert f"re-run musicssl labels mfcc --data {other} --out {out} --overwrite" in err
    assert labels_cli("merge", str(out), "--data", str(manifest_dir), "--num-shards", "2")[0] == 0


def write(path, rows):
    path.write_text("".join(" ".join(map(str, r)) + "\n" for r in rows))
    return path


def test_check_labels_names_the_row_that_does_not_fit(manifest_dir, tmp_path):
    manifest = read_manifest(manifest_dir / "train.tsv")
    grid = LabelGrid(16000, 160, 400)
    good = [[i % 3] * grid.frames(n) for i, (_, n) in enumerate(manifest.items)]
    summary = check_labels(write(tmp_path / "ok.km", good), manifest, grid, k=3)
    assert summary.used_clusters == 3 and summary.rows == len(manifest)
    assert 0 < summary.entropy_bits <= np.log2(3) + 1e-9

    off = [list(r) for r in good]
    off[1] = off[1][:-5]
    with pytest.raises(LabelError, match=rf"row 2 \({manifest.items[1][0]}\) has"):
        check_labels(write(tmp_path / "off.km", off), manifest, grid, k=3)
    with pytest.raises(LabelError, match=f"{len(manifest) - 1} rows, the manifest has {len(manifest)}"):
        check_labels(write(tmp_path / "short.km", good[:-1]), manifest, grid, k=3)
    constant = [[0] * len(r) for r in good]
    with pytest.raises(LabelError, match="only 1 cluster used"):
        check_labels(write(tmp_path / "const.km", constant), manifest, grid, k=3)
    with pytest.raises(LabelError, match="ids outside"):
        check_labels(write(tmp_path / "range.km", good), manifest, grid, k=2)


def test_tolerance_is_one_frame_per_ten_seconds(tmp_path):
    from musicssl.data.manifest import Manifest

    manifest = Manifest(Path("/x"), (("long.wav", 16000 * 25),))  # 25 s -> 3 frames of slack
    grid = LabelGrid(16000, 160, 400)
    frames = grid.frames(16000 * 25)
    check_labels(write(tmp_path / "a.km", [[0, 1] * ((frames - 3) // 2) + [0] * ((frames - 3) % 2)]), manifest, grid, 2)
    with pytest.raises(LabelError):
        check_labels(write(tmp_path / "b.km", [[0, 1] * ((frames - 4) // 2)]), manifest, grid, 2)
