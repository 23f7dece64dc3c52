"""Sharded extraction: processes split a task's items, each writes its own cache files, the
cache reads them all (and equals one process's), a killed shard resumes; under torchrun rank 0
waits for the others and probes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from musicssl.cli import main
from musicssl.evaluate.features import FeatureCache
from musicssl.evaluate.sources import open_source
from musicssl.evaluate.tasks import get_task
from musicssl.interop.huggingface import import_pretrained
from tests.evaluate.test_batching import _pooled64, assert_within_float16_rounding
from tests.evaluate.test_benchmark_cli import gtzan_root, model_dir  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[2]
FAST = ["--tasks", "gtzan", "--layers", "2", "--lrs", "5e-3", "--max-epochs", "2", "--quiet"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}", "OMP_NUM_THREADS": "1"}


def _benchmark(*args: str) -> list[str]:
    return [sys.executable, "-m", "musicssl.cli", "benchmark", *args]


def _cache(cache_dir: Path, model: Path, data: Path) -> tuple[FeatureCache, list]:
    task = get_task("gtzan")
    splits = task.load(data)
    cache = FeatureCache(cache_dir, open_source(str(model), device="cpu"), "gtzan", task.protocol)
    return cache, splits.train + splits.valid + splits.test


@pytest.fixture
def gtzan(gtzan_root, tmp_path):  # noqa: F811
    """A data root holding the generated GTZAN as DATA_ROOT/GTZAN."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "GTZAN").symlink_to(gtzan_root)
    return root / "GTZAN"


def test_two_shard_processes_fill_the_cache_of_one(tmp_path, gtzan, model_dir):  # noqa: F811
    root = gtzan.parent
    common = [str(model_dir), "--data-root", str(root), "-o", str(tmp_path / "out"), *FAST]
    runs = [subprocess.Popen(_benchmark(*common, "--shard", str(i), "--num-shards", "2"), env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for run in runs:
        _, err = run.communicate(timeout=600)
        assert run.returncode == 0, err
        assert "without --shard probes them" in err
    cache_dir = tmp_path / "out" / "cache"
    cache, items = _cache(cache_dir, model_dir, gtzan)
    files = sorted(path.name for path in cache.directory.iterdir() if path.name != "meta.json")
    assert files == ["index-0-of-2.jsonl", "index-1-of-2.jsonl", "rows-0-of-2.f16", "rows-1-of-2.f16"]
    index_files = [cache.directory / f"index-{i}-of-2.jsonl" for i in range(2)]
    shard_keys = [{json.loads(line)["key"] for line in path.read_text().splitlines()} for path in index_files]
    assert shard_keys[0].isdisjoint(shard_keys[1]) and shard_keys[0] | shard_keys[1] == {item.key for item in items}
    assert min(len(keys) for keys in shard_keys) == len(items) // 2  # one file per item: an even split
    assert cache.missing(items) == []

    single, _ = _cache(tmp_path / "single", model_dir, gtzan)
    single.extract(items, progress=False)
    merged, alone = cache.load(items), single.load(items)
    assert merged.spans == alone.spans and [i.key for i in merged.items] == [i.key for i in alone.items]
    # The shards batch other windows together than one process does: float32 rounding may differ.
    backbone = import_pretrained(model_dir).eval()
    today = np.stack([single.source.pool(single.source.frames(w)) for w in _windows(single, items)])
    exact = np.stack([_pooled64(backbone, w) for w in _windows(single, items)])
    assert_within_float16_rounding(merged.rows, today, exact)
    assert_within_float16_rounding(alone.rows, today, exact)

    # The probe step, without --shard, extracts nothing more and writes no single-process file.
    assert main(["benchmark", *common]) == 0
    assert not (cache.directory / "rows.f16").exists() or (cache.directory / "rows.f16").stat().st_size == 0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["results"][0]["task"] == "gtzan"


def _windows(cache: FeatureCache, items) -> list[np.ndarray]:
    from musicssl import audio

    return [audio.load_audio(item.path, 16000) for item in items]  # GTZAN: one window per clip


def test_a_killed_shard_resumes_its_own_files(tmp_path, gtzan, model_dir):  # noqa: F811
    task = get_task("gtzan")
    splits = task.load(gtzan)
    items = splits.train + splits.valid + splits.test
    source = open_source(str(model_dir), device="cpu")
    reference = FeatureCache(tmp_path / "ref", source, "gtzan", task.protocol, shard=(1, 2))
    reference.extract(items, progress=False)
    mine = reference.shard_items(items)
    partial = FeatureCache(tmp_path / "cache", source, "gtzan", task.protocol, shard=(1, 2))
    partial.extract(items, progress=False)
    lines = partial.index_path.read_text().splitlines()
    # killed after 5 items: the 6th item's rows are half written, its index line cut
    partial.index_path.write_text("\n".join(lines[:5]) + '\n{"key": "x", "sta')
    with open(partial.rows_path, "r+b") as rows:
        rows.truncate(partial.rows_path.stat().st_size - 700)
    other = FeatureCache(tmp_path / "cache", source, "gtzan", task.protocol, shard=(0, 2))
    resumed = FeatureCache(tmp_path / "cache", source, "gtzan", task.protocol, shard=(1, 2))
    assert resumed.extract(items, progress=False) == len(mine) - 5
    assert other.rows_path.exists() is False  # a shard touches only its own files
    np.testing.assert_array_equal(resumed.load(mine).rows, reference.load(mine).rows)


def test_torchrun_ranks_extract_their_share_and_rank_0_probes(tmp_path, gtzan, model_dir):  # noqa: F811
    root = gtzan.parent
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "musicssl.cli", "benchmark",
               str(model_dir), "--data-root", str(root), "-o", str(tmp_path / "out"), *FAST]
    run = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    cache, items = _cache(tmp_path / "out" / "cache", model_dir, gtzan)
    assert {path.name for path in cache.directory.glob("index*")} == {"index-0-of-2.jsonl", "index-1-of-2.jsonl"}
    assert cache.missing(items) == []
    result = json.loads((tmp_path / "out" / "results.json").read_text())["results"][0]
    assert result["task"] == "gtzan" and result["sizes"]["test"] > 0


def test_shard_numbers_are_checked(tmp_path, gtzan, model_dir):  # noqa: F811
    with pytest.raises(ValueError, match="expected 0 <= shard < num_shards"):
        FeatureCache(tmp_path, open_source(str(model_dir), device="cpu"), "gtzan", get_task("gtzan").protocol,
                     shard=(2, 2))
