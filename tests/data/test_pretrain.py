"""Pre-training data: crops keyed by (seed, epoch, row), aligned labels, bad files, update plans, loaders."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from musicssl import audio
from musicssl.data.label_files import LabelError, LabelGrid
from musicssl.data.manifest import build_manifest, read_manifest, write_manifest
from musicssl.data.pretrain import (Batch, DataConfig, LabelRows, PretrainDataset, UpdateLoader, UpdatePlan,
                                    build_pretrain_data, collate)
from tests.conftest import write_tone

SR = 16_000
GRID = LabelGrid(SR, 160, 400)  # 100 Hz, MFCC's grid


def make_corpus(root: Path, seconds: list[float]) -> Path:
    """Files 0..k-1 of the given lengths (different tones), and a manifest of them in that order."""
    root.mkdir(parents=True)
    names = []
    for i, length in enumerate(seconds):
        write_tone(root / f"{i:02d}.wav", length, frequency=200.0 + 50 * i, seed=i)
        names.append((f"{i:02d}.wav", int(length * SR)))
    write_manifest(root / "train.tsv", root, names)
    return root / "train.tsv"


def frame_index_labels(manifest, path: Path) -> LabelRows:
    """A .km file whose row i holds 0, 1, ..., frames-1 (each id is its own frame index)."""
    rows = [" ".join(map(str, range(GRID.frames(n)))) for _, n in manifest.items]
    path.write_text("\n".join(rows) + "\n")
    return LabelRows(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("pretrain") / "audio", [3.0, 2.5, 0.8, 3.2, 2.0, 1.7, 2.2, 4.0])


def dataset_of(manifest_path: Path, crop_seconds: float = 1.0, min_seconds: float = 0.5, seed: int = 0,
               **kwargs) -> PretrainDataset:
    return PretrainDataset(read_manifest(manifest_path), SR, round(crop_seconds * SR), round(min_seconds * SR),
                           seed, **kwargs)


# ---------------------------------------------------------------------------------------------- crops


def test_crop_is_keyed_by_seed_epoch_and_row(corpus):
    dataset, again = dataset_of(corpus), dataset_of(corpus)
    full = audio.load_audio(dataset.manifest.path(0), SR)  # 3 s file, 1 s crops
    for epoch in range(3):
        item = dataset[(epoch, 0)]
        expected = int(np.random.default_rng([0, epoch, 0]).integers(0, len(full) - SR + 1))
        assert item["offset"] == expected
        assert torch.equal(item["wav"], torch.from_numpy(full[expected:expected + SR]))
    # Asking in another order, from another instance, gives the same crop.
    keys = [(e, i) for e in range(4) for i in (0, 1, 3, 7)]
    first = {key: dataset[key]["offset"] for key in keys}
    assert all(again[key]["offset"] == first[key] for key in reversed(keys))
    # Epochs draw new offsets; another seed draws others.
    assert len({dataset[(e, 7)]["offset"] for e in range(10)}) >= 9
    assert dataset_of(corpus, seed=1)[(0, 7)]["offset"] != first[(0, 7)]


def test_short_file_is_used_whole_and_normalize_standardises_the_crop(corpus):
    item = dataset_of(corpus)[(0, 2)]  # 0.8 s file, 1 s crops
    assert (item["offset"], len(item["wav"])) == (0, int(0.8 * SR))
    normalized = dataset_of(corpus, normalize=True)[(3, 3)]
    assert len(normalized["wav"]) == SR
    assert abs(normalized["wav"].mean().item()) < 1e-4 and abs(normalized["wav"].std(unbiased=False).item() - 1) < 1e-3
    raw = dataset_of(corpus)[(3, 3)]["wav"]
    # fairseq's data2vec normalisation: F.layer_norm over the 1-D crop (eps 1e-5).
    assert torch.allclose(normalized["wav"], torch.nn.functional.layer_norm(raw, raw.shape), atol=1e-5)


# ---------------------------------------------------------------------------------------------- labels


def test_label_crop_starts_at_the_crop_offset(corpus, tmp_path):
    manifest = read_manifest(corpus)
    labels = frame_index_labels(manifest, tmp_path / "train.km")
    dataset = dataset_of(corpus, labels=labels, label_grid=GRID)
    for epoch in range(5):
        for row in (0, 3, 7):
            item = dataset[(epoch, row)]
            start, total = round(item["offset"] * 100 / SR), GRID.frames(manifest.num_samples(row))
            assert item["labels"][0].item() == start
            assert len(item["labels"]) == min(100, total - start)  # round(16000 * 100 / 16000) = 100
            assert torch.equal(item["labels"], torch.arange(start, start + len(item["labels"])))


def test_collate_cuts_labels_to_the_shortest_crop(corpus, tmp_path):
    manifest = read_manifest(corpus)
    dataset = dataset_of(corpus, labels=frame_index_labels(manifest, tmp_path / "train.km"), label_grid=GRID)
    items = [dataset[(1, row)] for row in (0, 2, 5)]  # 1 s crops and the whole 0.8 s file
    batch = collate(items)
    n = int(0.8 * SR)
    assert batch.wav.shape == (3, n) and batch.lengths.tolist() == [n] * 3
    # The 0.8 s file has frames(12800) = 78 labels < round(12800 * 100 / 16000) = 80: all rows keep 78.
    assert GRID.frames(n) == 78 and batch.labels.shape == (3, 78)
    for b, item in enumerate(items):
        assert torch.equal(batch.wav[b], item["wav"][:n])
        start = round(item["offset"] * 100 / SR)
        assert torch.equal(batch.labels[b], torch.arange(start, start + 78))
    long_only = collate([dataset[(1, row)] for row in (0, 3)])
    assert long_only.labels.shape == (2, 100)  # equal crops: round(n * rate / sr) each, no cut


# ---------------------------------------------------------------------------------------------- bad files


def test_bad_files_become_none_and_are_counted(tmp_path, capsys):
    root = tmp_path / "audio"
    root.mkdir()
    for name, seconds in [("good1.wav", 2.5), ("good2.wav", 3.0), ("corrupt.wav", 2.5), ("short.wav", 1.0),
                          ("changed.wav", 2.5)]:
        write_tone(root / name, seconds)
    build_manifest(root, tmp_path / "manifest", workers=1, progress=False)
    (root / "corrupt.wav").write_text("this is not audio any more")
    write_tone(root / "changed.wav", 2.0)
    manifest = read_manifest(tmp_path / "manifest" / "train.tsv")
    row = {name: i for i, (name, _) in enumerate(manifest.items)}
    dataset = PretrainDataset(manifest, SR, 2 * SR, round(1.5 * SR), seed=0)
    keys = [(0, row[name]) for name in ("good1.wav", "corrupt.wav", "short.wav", "good2.wav", "changed.wav")]
    items = [dataset[key] for key in keys]
    assert [item is None for item in items] == [False, True, True, False, True]
    batch = collate(items)
    assert batch.skipped == 3 and batch.wav.shape == (2, 2 * SR)
    assert batch.indices.tolist() == [row["good1.wav"], row["good2.wav"]]
    assert collate([dataset[key] for key in keys[1:3]]) is None
    assert dataset.skipped == {"undecodable": 2, "too short": 2, "changed": 1}
    log = capsys.readouterr().err
    assert log.count("corrupt.wav (undecodable)") == 1 and log.count("short.wav (too short)") == 1
    assert "changed.wav (changed): decodes to 32000 samples, the manifest says 40000" in log


# ---------------------------------------------------------------------------------------------- plan


def test_plan_covers_disjoint_items_and_ranks_split_the_single_process_plan():
    config = DataConfig(batch_seconds=80, micro_batch_seconds=20, seed=3)  # G = 16, m = 4
    single = UpdatePlan(50, config)
    assert (single.updates_per_epoch, single.accumulation_steps) == (3, 4)
    ranks = [UpdatePlan(50, config, world_size=2, rank=r) for r in range(2)]
    assert ranks[0].accumulation_steps == 2
    for epoch in range(2):
        seen = []
        for update in range(3):
            whole = [key for mb in single.micro_batches(epoch, update) for key in mb]
            assert [len(mb) for mb in single.micro_batches(epoch, update)] == [4] * 4
            split = [key for plan in ranks for mb in plan.micro_batches(epoch, update) for key in mb]
            assert split == whole and all(e == epoch for e, _ in whole)
            seen += [row for _, row in whole]
        assert len(seen) == len(set(seen)) == 48  # the 2 left over are dropped
    assert single.global_items(0, 0).tolist() != single.global_items(1, 0).tolist()
    assert UpdatePlan(50, DataConfig(batch_seconds=80, micro_batch_seconds=5), 4, 3).accumulation_steps == 4


def test_plan_position_round_trips():
    plan = UpdatePlan(50, DataConfig())
    for global_update in range(20):
        epoch, update = plan.position(global_update)
        assert 0 <= update < 3 and epoch * plan.updates_per_epoch + update == global_update
    assert plan.position(7) == (2, 1)


def test_plan_rejects_uneven_settings_with_suggestions():
    with pytest.raises(ValueError, match=r"16 is not divisible by 12.*batch_seconds in \[60.0, 120.0\]"):
        UpdatePlan(100, DataConfig(), world_size=3)
    with pytest.raises(ValueError, match=r"micro_batch_seconds in \[5.0, 10.0, 20.0, 40.0\]"):
        UpdatePlan(100, DataConfig(micro_batch_seconds=15), world_size=2)
    with pytest.raises(ValueError, match="fewer than the 16 crops of one update"):
        UpdatePlan(10, DataConfig())
    assert (DataConfig().crops_per_update, DataConfig().crops_per_micro_batch) == (16, 4)


# ---------------------------------------------------------------------------------------------- loader


def batches_equal(a: Batch | None, b: Batch | None) -> bool:
    if a is None or b is None:
        return a is b
    return (torch.equal(a.wav, b.wav) and torch.equal(a.lengths, b.lengths) and torch.equal(a.indices, b.indices)
            and (a.labels is b.labels is None or torch.equal(a.labels, b.labels)) and a.skipped == b.skipped)


def take(loader: UpdateLoader, start: int, count: int) -> list[tuple[int, list[Batch | None]]]:
    out = []
    for update, micro_batches in loader.iterate(start):
        out.append((update, micro_batches))
        if len(out) == count:
            return out


def test_loader_with_workers_equals_in_process_and_resumes(corpus, tmp_path):
    manifest = read_manifest(corpus)
    dataset = dataset_of(corpus, min_seconds=1.0, labels=frame_index_labels(manifest, tmp_path / "t.km"),
                         label_grid=GRID)  # row 2 (0.8 s) is skipped
    config = DataConfig(crop_seconds=1.0, batch_seconds=4.0, micro_batch_seconds=2.0)  # 2 updates per epoch
    plan = UpdatePlan(len(dataset), config)
    in_process = UpdateLoader(dataset, plan)
    serial = take(in_process, 0, 5)
    with_workers = UpdateLoader(dataset, plan, num_workers=2)
    parallel = take(with_workers, 0, 5)
    assert [u for u, _ in serial] == [u for u, _ in parallel] == list(range(5))
    for (_, a), (_, b) in zip(serial, parallel):
        assert len(a) == plan.accumulation_steps == 2 and all(map(batches_equal, a, b))
    # Row 2 is too short: never in a batch, and counted once per time the plan hands it out.
    rows = [row for _, mbs in serial for mb in mbs if mb is not None for row in mb.indices.tolist()]
    handed_out = sum(key[1] == 2 for g in range(5) for mb in plan.micro_batches(*plan.position(g)) for key in mb)
    assert 2 not in rows and handed_out >= 2 and in_process.skipped_total == with_workers.skipped_total == handed_out
    resumed = take(UpdateLoader(dataset, plan), 3, 2)
    assert [u for u, _ in resumed] == [3, 4]
    for (_, a), (_, b) in zip(resumed, serial[3:]):
        assert all(map(batches_equal, a, b))


def test_rank_crops_equal_single_process_crops(corpus):
    dataset = dataset_of(corpus)
    config = DataConfig(crop_seconds=1.0, batch_seconds=4.0, micro_batch_seconds=1.0)
    single = take(UpdateLoader(dataset, UpdatePlan(len(dataset), config)), 0, 3)
    ranks = [take(UpdateLoader(dataset, UpdatePlan(len(dataset), config, 2, r)), 0, 3) for r in range(2)]
    for update in range(3):
        assert all(map(batches_equal, single[update][1], ranks[0][update][1] + ranks[1][update][1]))


# ---------------------------------------------------------------------------------------------- label rows


@pytest.mark.parametrize("trailing_newline", [True, False])
def test_label_rows_read_the_right_row_and_pickle(tmp_path, trailing_newline):
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, 500, size=rng.integers(0, 60)) for _ in range(2000)]
    path = tmp_path / "train.km"
    path.write_text("\n".join(" ".join(map(str, r)) for r in rows) + ("\n" if trailing_newline else ""))
    labels = LabelRows(path)
    assert len(labels) == 2000 and labels.offsets.dtype == np.int64
    for i in (0, 1, 999, 1998, 1999, 17, 1234):
        assert labels[i].dtype == np.int64 and np.array_equal(labels[i], rows[i])
    assert np.array_equal(labels[-1], rows[-1])
    copy = pickle.loads(pickle.dumps(labels))  # after a read: the open file is not pickled
    assert all(np.array_equal(copy[i], rows[i]) for i in (1500, 3, 42))
    with pytest.raises(IndexError, match="row 2000 out of range"):
        labels[2000]


# ---------------------------------------------------------------------------------------------- from files


def write_label_set(label_dir: Path, manifest, shift: int = 0) -> None:
    label_dir.mkdir()
    info = {"k": 7, "grid": {"sample_rate": SR, "hop": 160, "window": 400}}
    (label_dir / "labels.json").write_text(json.dumps(info))
    rows = [" ".join(str(j % 7) for j in range(GRID.frames(n) + shift)) for _, n in manifest.items]
    (label_dir / "train.km").write_text("\n".join(rows) + "\n")


def test_build_checks_labels_before_training(corpus, tmp_path, capsys):
    manifest = read_manifest(corpus)
    write_label_set(tmp_path / "labels", manifest)
    config = DataConfig(crop_seconds=1.0, min_seconds=1.0, batch_seconds=2.0, micro_batch_seconds=1.0)
    dataset, plan = build_pretrain_data(corpus.parent, "train", tmp_path / "labels", SR, config)
    err = capsys.readouterr().err
    assert "train: 8 rows" in err and "1 of 8 files are shorter than data.min_seconds=1" in err
    assert (dataset.crop_samples, dataset.min_samples) == (SR, SR)
    assert (plan.accumulation_steps, plan.updates_per_epoch) == (2, 4)  # 2 crops per update, 8 rows
    item = dataset[(0, 0)]
    start = round(item["offset"] * 100 / SR)
    assert item["labels"].tolist() == [(start + j) % 7 for j in range(100)]
    _, plan = build_pretrain_data(corpus.parent, "train", tmp_path / "labels", SR, config, world_size=2, rank=1)
    assert plan.accumulation_steps == 1 and capsys.readouterr().err == ""  # only rank 0 prints
    write_label_set(tmp_path / "bad", manifest, shift=30)
    with pytest.raises(LabelError, match="row 1"):
        build_pretrain_data(corpus.parent, "train", tmp_path / "bad", SR, config)


def test_two_label_sets_stack_one_column_each_and_must_share_a_grid(corpus, tmp_path):
    manifest = read_manifest(corpus)
    write_label_set(tmp_path / "mfcc", manifest)
    write_label_set(tmp_path / "pitch", manifest, shift=1)  # one label more per row: cut to the shortest
    config = DataConfig(crop_seconds=1.0, min_seconds=1.0, batch_seconds=2.0, micro_batch_seconds=1.0)
    single, _ = build_pretrain_data(corpus.parent, "train", tmp_path / "mfcc", SR, config)
    both, _ = build_pretrain_data(corpus.parent, "train", [tmp_path / "mfcc", tmp_path / "pitch"], SR, config)
    item, stacked = single[(0, 3)], both[(0, 3)]
    assert stacked["labels"].shape == (100, 2) and stacked["offset"] == item["offset"]
    assert stacked["labels"][:, 0].tolist() == item["labels"].tolist() == stacked["labels"][:, 1].tolist()
    batch = collate([both[(0, 0)], both[(0, 3)]])
    assert batch.labels.shape == (2, 100, 2)
    info = json.loads((tmp_path / "pitch" / "labels.json").read_text())
    info["grid"]["hop"] = 320
    (tmp_path / "pitch" / "labels.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="share one frame grid"):
        build_pretrain_data(corpus.parent, "train", [tmp_path / "mfcc", tmp_path / "pitch"], SR, config)
