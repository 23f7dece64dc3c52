"""The probe on generated features: it learns what is learnable, not what is not, and the
grid chooses on validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from musicssl.evaluate.features import CachedFeatures
from musicssl.evaluate.probe import train_run
from musicssl.evaluate.probe_protocol import (MLPProbe, ProbeConfig, RunResult, SplitData, frame_targets, item_outputs,
                                              layer_choices, select, song_ensembles, split_data, standardiser)
from musicssl.evaluate.tasks.base import Item, Protocol, Task

FAST = ProbeConfig(max_epochs=30, early_stop_patience=8, hidden_size=64)


class ToyTask(Task):
    default_dir = "toy"
    source = "generated in the test"

    def __init__(self, kind="multiclass", outputs=("a", "b", "c", "d")):
        metrics = {"multiclass": ("accuracy",), "multilabel": ("roc_auc", "ap"), "regression": ("r2",)}[kind]
        self.protocol = Protocol(name="toy", title="Toy", kind=kind, outputs=outputs, metrics=metrics)

    def load(self, root, **options):
        raise NotImplementedError


def blobs(n: int, dim: int = 16, classes: int = 4, seed: int = 0, shuffle_labels: bool = False,
          windows: int = 1) -> CachedFeatures:
    """Linearly separable classes: class c sits at +5 on dimension c, unit noise elsewhere."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    rows = rng.standard_normal((n * windows, dim)).astype(np.float32)
    rows[np.arange(n * windows), np.repeat(labels, windows)] += 5.0
    if shuffle_labels:
        labels = rng.permutation(labels)
    items = [Item(key=f"x{i}", path=Path(f"x{i}.wav"), target=int(labels[i])) for i in range(n)]
    return CachedFeatures(rows=rows, spans=[(i * windows, windows) for i in range(n)], items=items)


def prepare(task, splits: list[CachedFeatures]) -> list[SplitData]:
    mean, std = standardiser(splits[0].rows)
    return [split_data(task, cached, 50.0, 1, mean, std) for cached in splits]


def test_probe_learns_a_linearly_separable_task():
    task = ToyTask()
    train, valid, test = prepare(task, [blobs(400, seed=0), blobs(100, seed=1), blobs(200, seed=2)])
    run = train_run(task, train, valid, test, layer=0, learning_rate=1e-3, seed=0, config=FAST, fps=50.0)
    assert run.test["accuracy"] > 0.95
    assert 1 <= run.best_epoch <= run.epochs <= 30


def test_shuffled_labels_stay_near_chance():
    task = ToyTask()
    data = [blobs(400, seed=0, shuffle_labels=True), blobs(100, seed=1, shuffle_labels=True),
            blobs(400, seed=2, shuffle_labels=True)]
    train, valid, test = prepare(task, data)
    run = train_run(task, train, valid, test, layer=0, learning_rate=1e-3, seed=0, config=FAST, fps=50.0)
    assert abs(run.test["accuracy"] - 0.25) < 0.1  # chance is 1/4; 400 test items: std ~0.02


def test_window_logits_are_averaged_per_item():
    logits = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    out = item_outputs(logits, np.array([0, 0, 1]), 2)
    np.testing.assert_allclose(out, [[2.0, 1.0], [5.0, 5.0]])


def test_windows_train_with_their_item_label():
    task = ToyTask()
    cached = blobs(5, windows=3)
    mean, std = standardiser(cached.rows)
    data = split_data(task, cached, 50.0, 1, mean, std)
    assert data.y.tolist() == [int(item.target) for item in cached.items for _ in range(3)]
    assert data.row_item.tolist() == [i for i in range(5) for _ in range(3)]
    torch.testing.assert_close(data.x.mean(0), torch.zeros(16), atol=1e-5, rtol=0)


def test_weighted_layers_probe_learns_from_the_informative_layer():
    task = ToyTask()
    splits = []
    for n, seed in ((400, 0), (100, 1), (200, 2)):
        cached = blobs(n, seed=seed)
        noise = np.random.default_rng(seed + 10).standard_normal((n, 3, 16)).astype(np.float32)
        noise[:, 1] = cached.rows  # only layer 2 of 1..3 carries the classes
        cached.rows = noise
        splits.append(cached)
    train, valid, test = prepare(task, splits)
    run = train_run(task, train, valid, test, layer="weighted", learning_rate=5e-3, seed=0, config=FAST, fps=50.0)
    assert run.test["accuracy"] > 0.9
    weights = run.extra["layer_weights"]
    assert len(weights) == 3 and abs(sum(weights) - 1) < 1e-5 and np.argmax(weights) == 1


def test_zeros_layer_weight_init_starts_every_seed_from_the_layer_mean():
    torch.manual_seed(0)
    normal = MLPProbe(16, 4, 8, 0.0, weighted_layers=3)
    zeros = MLPProbe(16, 4, 8, 0.0, weighted_layers=3, layer_weight_init="zeros")
    assert normal.layer_weights.abs().sum() > 0
    torch.testing.assert_close(zeros.layer_weights.detach(), torch.zeros(3))
    x = torch.randn(5, 3, 16)
    mean_first = zeros.mlp(x.mean(1))
    torch.testing.assert_close(zeros(x), mean_first)
    with pytest.raises(ValueError, match="layer_weight_init"):
        ProbeConfig(layer_weight_init="uniform")
    with pytest.raises(ValueError, match="batch_size"):
        ProbeConfig(batch_size=0)


def test_regression_and_multilabel_probes_learn():
    rng = np.random.default_rng(0)

    def regression(n):
        x = rng.standard_normal((n, 8)).astype(np.float32)
        y = np.stack([x[:, 0] + 0.5 * x[:, 1], x[:, 2] - x[:, 3]], 1).astype(np.float32)
        items = [Item(key=str(i), path=Path("a"), target=y[i]) for i in range(n)]
        return CachedFeatures(rows=x, spans=[(i, 1) for i in range(n)], items=items)

    task = ToyTask("regression", ("arousal", "valence"))
    run = train_run(task, *prepare(task, [regression(500), regression(100), regression(200)]), layer=0,
                    learning_rate=1e-3, seed=0, config=FAST, fps=50.0)
    assert run.test["r2"] > 0.8

    def tags(n):
        x = rng.standard_normal((n, 8)).astype(np.float32)
        y = (x[:, :3] > 0).astype(np.float32)
        items = [Item(key=str(i), path=Path("a"), target=y[i]) for i in range(n)]
        return CachedFeatures(rows=x, spans=[(i, 1) for i in range(n)], items=items)

    task = ToyTask("multilabel", ("t0", "t1", "t2"))
    run = train_run(task, *prepare(task, [tags(500), tags(100), tags(200)]), layer=0,
                    learning_rate=1e-3, seed=0, config=FAST, fps=50.0)
    assert run.test["roc_auc"] > 0.95 and run.test["ap"] > 0.9


def test_selection_uses_validation_mean_over_seeds_not_test():
    def run(layer, lr, seed, valid, test):
        return RunResult(layer=layer, learning_rate=lr, seed=seed, epochs=1, best_epoch=1,
                         valid={"accuracy": valid}, test={"accuracy": test})

    runs = [run(0, 1e-3, 0, 0.9, 0.1), run(0, 1e-3, 1, 0.5, 0.1),   # mean valid 0.7
            run(1, 1e-3, 0, 0.8, 0.9), run(1, 1e-3, 1, 0.8, 0.9)]   # mean valid 0.8
    layer, lr, chosen = select(runs, "accuracy")
    assert (layer, lr) == (1, 1e-3) and len(chosen) == 2


def test_beat_frame_targets_are_widened_on_the_frame_grid():
    item = Item(key="b", path=Path("b.wav"), target=np.array([0.0, 0.5, 0.96]))
    labels = frame_targets(item, 50, fps=50.0, widen=1)
    assert np.flatnonzero(labels).tolist() == [0, 1, 24, 25, 26, 47, 48, 49]
    assert np.flatnonzero(frame_targets(item, 50, fps=50.0, widen=0)).tolist() == [0, 25, 48]


def beat_clips(n: int, seed: int, seconds: float = 8.0, fps: float = 50.0) -> CachedFeatures:
    """Frames of clips at 100-140 BPM. Dimension 0 is +3 on the 7 frames around each beat and
    says nothing about which of them is the beat: 3 of them are training positives (±1 frame),
    so even a perfect probe's P(beat) stays near 3/7 < 0.5, though the beats are plain to see."""
    rng = np.random.default_rng(seed)
    frames, rows, spans, items = int(seconds * fps), [], [], []
    for i in range(n):
        period = 60.0 / rng.uniform(100, 140)
        beats = np.arange(rng.uniform(0.1, period), seconds - 0.1, period)
        x = rng.standard_normal((frames, 8)).astype(np.float32)
        near = np.round(beats * fps).astype(int)[:, None] + np.arange(-3, 4)
        x[near[(near >= 0) & (near < frames)], 0] += 3.0
        spans.append((i * frames, frames))
        rows.append(x)
        items.append(Item(key=f"c{i}", path=Path(f"c{i}.wav"), target=np.round(beats * fps) / fps))
    return CachedFeatures(rows=np.concatenate(rows), spans=spans, items=items)


def test_beat_probe_is_monitored_with_its_decoder_and_trains_past_the_first_epoch():
    # Before: the training monitor picked peaks >= 0.5, which a probe of sparse beats never
    # reaches: F was 0 at every epoch and early stopping kept the first epoch's weights.
    protocol = Protocol(name="toy_beats", title="Beats", kind="beats", outputs=("other", "beat"),
                        metrics=("beat_f",), window_seconds=None)
    task = ToyTask()
    task.protocol = protocol
    train, valid, test = prepare(task, [beat_clips(24, 0), beat_clips(8, 1), beat_clips(8, 2)])
    assert 0.08 < train.y.float().mean() < 0.2
    config = ProbeConfig(max_epochs=10, early_stop_patience=10, hidden_size=32, batch_size=1, beat_decoder="dbn")
    run = train_run(task, train, valid, test, layer=0, learning_rate=1e-3, seed=0, config=config, fps=50.0)
    assert run.best_epoch > 1
    assert run.valid["beat_f"] > 0.75 and run.test["beat_f"] > 0.6  # the first epoch's weights: 0.39 valid


def test_song_ensembles_decide_per_song():
    items = [Item(key=f"s{i}", path=Path("x"), target=0, group=group) for i, group in enumerate("aab")]
    outputs = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])  # song a: clips vote 1:1, b: class 1
    decisions = song_ensembles(outputs, np.array([0, 0, 1]), items)
    assert decisions["max_logit"][0].argmax(1).tolist() == [0, 1]
    assert decisions["mean_logit"][0].argmax(1).tolist() == [0, 1]  # mean of a: (1.0, 0.5)
    assert decisions["vote"][0].argmax(1).tolist() == [0, 1]        # tie broken by the mean logit
    assert decisions["vote"][1].tolist() == [0, 1]


def test_layer_choices():
    assert layer_choices(13, None) == list(range(13)) + ["weighted"]
    assert layer_choices(1, None) == [0]
    assert layer_choices(1, (3, "weighted")) == [0]  # MFCC statistics beside a model's layer grid
    assert layer_choices(13, (-1, "weighted")) == [12, "weighted"]
    with pytest.raises(ValueError, match="out of range"):
        layer_choices(5, (7,))
