"""The batched probe grid against the same runs trained one by one (probe.train_run), on
generated features of every task kind."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from musicssl.evaluate.features import CachedFeatures
from musicssl.evaluate.grid_workers import grid_workers, in_forked_workers
from musicssl.evaluate.probe import train_run
from musicssl.evaluate.probe_protocol import ProbeConfig, layer_choices, row_targets, select, split_data, standardiser
from musicssl.evaluate.probe_grid import GridSplit, train_grid
from musicssl.evaluate.tasks.base import Item, Protocol
from tests.evaluate.test_probe import ToyTask, beat_clips, blobs

LAYERS = 3  # layers 0..2: choices 0, 1, 2 and "weighted" (1..2)
# Small enough to train the grid twice in seconds; patience short enough that runs stop early
# at different epochs and their learning rates are halved on plateaus.
GRID = ProbeConfig(hidden_size=32, dropout=0.0, learning_rates=(1e-3, 1e-2), seeds=(1, 2), max_epochs=8,
                   early_stop_patience=2, plateau_patience=1, batch_size=16, device="cpu")

# Tolerance, from float32 rounding. The two paths do the same arithmetic in a different order
# (one GEMM for n probes instead of n, per-probe sums of losses, the fused Adam kernel), so each
# gradient differs by ~eps32 * sqrt(B) relative (B = 16 rows summed): 1.2e-7 * 4 = 4.8e-7. Adam's
# update is at most lr per weight, so its difference is <= lr * 4.8e-7 = 4.8e-9 at lr 1e-2; over
# the T = 8 epochs * 13 batches = 104 steps at most 5e-7 per weight. A logit sums H * D = 32 * 16
# such weights times unit-variance inputs: as a random walk sqrt(512) * 5e-7 = 1.1e-5, and a score
# (R^2, AUC, accuracy, beat F) moves by at most that much unless a decision sits closer than that
# to a tie. Measured: <= 1e-7.
TOLERANCE = 2e-5


def layered(cached: CachedFeatures, seed: int, informative: int = 2, dtype=np.float16) -> CachedFeatures:
    """Every layer of every row: noise on layers 0 and 1, the task's features on `informative`,
    stored as the cache stores them (float16)."""
    rng = np.random.default_rng(seed + 100)
    rows = rng.standard_normal((len(cached.rows), LAYERS, cached.rows.shape[-1])).astype(np.float32)
    rows[:, informative] = cached.rows
    rows[:, 1] += 0.5 * cached.rows
    return CachedFeatures(rows=rows.astype(dtype), spans=cached.spans, items=cached.items)


def one_by_one(task, data: list[CachedFeatures], config: ProbeConfig, fps: float = 50.0):
    """probe_task's sequential path: per layer choice, the rows of that choice standardised, then
    every (lr, seed) run alone. Returns [(RunResult, validation curve)] in grid order."""
    runs = []
    for layer in layer_choices(LAYERS, config.layers):
        chosen = [CachedFeatures(rows=np.ascontiguousarray(c.rows[:, 1:] if layer == "weighted" else c.rows[:, layer]),
                                 spans=c.spans, items=c.items) for c in data]
        mean, std = standardiser(chosen[0].rows)
        splits = [split_data(task, c, fps, config.beat_widen, mean, std) for c in chosen]
        for lr in config.learning_rates:
            for seed in config.seeds:
                curve: list[float] = []
                runs.append((train_run(task, *splits, layer=layer, learning_rate=lr, seed=seed, config=config,
                                       fps=fps, curve=curve), curve))
    return runs


def batched(task, data: list[CachedFeatures], config: ProbeConfig, fps: float = 50.0):
    grid = [GridSplit(c.rows, *row_targets(task, c, fps, config.beat_widen), c.items) for c in data]
    curves: dict[tuple, list[float]] = {}
    runs = train_grid(task, *grid, layers=layer_choices(LAYERS, config.layers), config=config, fps=fps,
                      curves=curves)
    return [(run, curves[(run.layer, run.learning_rate, run.seed)]) for run in runs]


def assert_same_runs(expected, found, must_stop_early: bool = True) -> None:
    assert len(found) == len(expected)
    stopped_early = 0
    for (alone, alone_curve), (grid, grid_curve) in zip(expected, found):
        assert (grid.layer, grid.learning_rate, grid.seed) == (alone.layer, alone.learning_rate, alone.seed)
        assert (grid.epochs, grid.best_epoch) == (alone.epochs, alone.best_epoch), (alone.layer, alone.learning_rate)
        np.testing.assert_allclose(grid_curve, alone_curve, atol=TOLERANCE, rtol=0)
        for split in ("valid", "test"):
            assert getattr(grid, split).keys() == getattr(alone, split).keys()
            for key, value in getattr(alone, split).items():
                assert math.isclose(getattr(grid, split)[key], value, abs_tol=TOLERANCE), (split, key)
        assert grid.extra.get("ensemble") == alone.extra.get("ensemble")
        if "layer_weights" in alone.extra:
            np.testing.assert_allclose(grid.extra["layer_weights"], alone.extra["layer_weights"], atol=1e-6)
        stopped_early += alone.epochs < max(run.epochs for run, _ in expected)
    assert stopped_early > 0 or not must_stop_early  # runs that stop while others go on


def three_splits(make, *sizes):
    return [make(n, seed) for seed, n in enumerate(sizes)]


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_multiclass_grid_with_windows_equals_runs_one_by_one(dtype):
    task = ToyTask()  # 4 classes, 2 windows per item: clip logits are the mean of window logits
    data = [layered(blobs(n, seed=seed, windows=2), seed, dtype=dtype) for seed, n in enumerate((100, 40, 40))]
    assert_same_runs(one_by_one(task, data, GRID), batched(task, data, GRID))


def tagged(n: int, seed: int) -> CachedFeatures:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8)).astype(np.float32)
    y = np.stack([x[:, 0] > 0, x[:, 1] + x[:, 2] > 0, x[:, 3] > 0.5], 1).astype(np.float32)
    flips = rng.random(y.shape) < 0.1  # noisy tags: AUC < 1, so the curves have something to show
    y[flips] = 1 - y[flips]
    items = [Item(key=str(i), path=Path("a"), target=y[i]) for i in range(n)]
    return layered(CachedFeatures(rows=x, spans=[(i, 1) for i in range(n)], items=items), seed)


def regressed(n: int, seed: int) -> CachedFeatures:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8)).astype(np.float32)
    y = np.stack([x[:, 0] + 0.5 * x[:, 1], x[:, 2] - x[:, 3]], 1) + 0.5 * rng.standard_normal((n, 2))
    items = [Item(key=str(i), path=Path("a"), target=y[i].astype(np.float32)) for i in range(n)]
    return layered(CachedFeatures(rows=x, spans=[(i, 1) for i in range(n)], items=items), seed)


def test_multilabel_grid_equals_runs_one_by_one():
    task = ToyTask("multilabel", ("t0", "t1", "t2"))
    data = three_splits(tagged, 200, 60, 60)
    assert_same_runs(one_by_one(task, data, GRID), batched(task, data, GRID))


def test_regression_grid_equals_runs_one_by_one():
    task = ToyTask("regression", ("arousal", "valence"))
    data = three_splits(regressed, 200, 60, 60)
    assert_same_runs(one_by_one(task, data, GRID), batched(task, data, GRID))


def songs(n: int, seed: int) -> CachedFeatures:
    """GiantSteps-like: 3 clips per song share its key; each clip is an item of the song's group."""
    cached = blobs(n, seed=seed)
    labels = np.repeat(np.random.default_rng(seed).integers(0, 4, n // 3 + 1), 3)[:n]
    rows = np.random.default_rng(seed + 1).standard_normal(cached.rows.shape).astype(np.float32)
    rows[np.arange(n), labels] += 1.0  # weak per clip: the song decision has work to do
    items = [Item(key=f"c{i}", path=Path("x"), target=int(labels[i]), group=f"song{i // 3}") for i in range(n)]
    return layered(CachedFeatures(rows=rows, spans=cached.spans, items=items), seed)


def test_song_ensemble_grid_equals_runs_one_by_one():
    task = ToyTask()
    task.protocol = task.protocol.replace(song_ensemble=True)
    data = three_splits(songs, 150, 60, 60)
    runs = batched(task, data, GRID)
    assert {run.extra["ensemble"] for run, _ in runs} <= {"vote", "max_logit", "mean_logit", "mean_softmax"}
    assert_same_runs(one_by_one(task, data, GRID), runs)


def test_beat_grid_with_the_dbn_equals_runs_one_by_one():
    task = ToyTask()
    task.protocol = Protocol(name="toy_beats", title="Beats", kind="beats", outputs=("other", "beat"),
                             metrics=("beat_f",), window_seconds=None)
    data = [layered(beat_clips(n, seed, seconds=4.0), seed) for seed, n in enumerate((8, 4, 4))]
    # a batch is batch_size crops of beat_crop_seconds: 1 * 0.8 s * 50 fps = 40 frames (a clip: 200)
    config = GRID.replace(batch_size=1, beat_crop_seconds=0.8, layers=(2, "weighted"), max_epochs=5,
                          beat_decoder="dbn")
    assert_same_runs(one_by_one(task, data, config), batched(task, data, config), must_stop_early=False)


def weak_blobs(n: int, seed: int) -> CachedFeatures:
    """4 classes 1.5 standard deviations apart on one dimension each: accuracy well under 1, so
    dropout's draws show in the scores."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    rows = rng.standard_normal((n, 16)).astype(np.float32)
    rows[np.arange(n), labels] += 1.5
    items = [Item(key=f"x{i}", path=Path("x"), target=int(labels[i])) for i in range(n)]
    return layered(CachedFeatures(rows=rows, spans=[(i, 1) for i in range(n)], items=items), seed)


def test_with_dropout_the_grid_selects_the_same_configuration_within_the_seed_spread():
    # With dropout the batched grid draws other masks than the runs alone (a stream per group of
    # probes): the same distribution, not the same numbers. The configuration chosen on
    # validation must be the same, and the chosen test score the same within the spread that
    # the probe seeds themselves give.
    task = ToyTask()
    data = three_splits(weak_blobs, 300, 150, 300)
    config = GRID.replace(dropout=0.2, layers=(0, 2), learning_rates=(1e-4, 3e-3), seeds=(1, 2, 3), max_epochs=6,
                          early_stop_patience=3)
    results = {}
    for name, runs in (("alone", one_by_one(task, data, config)), ("grid", batched(task, data, config))):
        layer, lr, chosen = select([run for run, _ in runs], "accuracy")
        results[name] = (layer, lr, np.array([run.test["accuracy"] for run in chosen]))
    (layer, lr, alone), (grid_layer, grid_lr, grid) = results["alone"], results["grid"]
    assert (grid_layer, grid_lr) == (layer, lr) == (2, 3e-3)
    spread = np.sqrt((alone.var(ddof=1) + grid.var(ddof=1)) / 2)  # std of one seed's score
    # two means of 3 seeds differ by N(0, spread^2 * 2/3): 3 sigma, or one test item at least
    assert abs(grid.mean() - alone.mean()) <= max(3 * spread * np.sqrt(2 / 3), 1 / 300)
    print(f"selected layer {layer}, lr {lr}: test {alone.mean():.4f} alone, {grid.mean():.4f} batched, "
          f"seed spread {spread:.4f}")


def test_forked_workers_give_the_runs_of_one_process():
    """The CPU grid's groups shared out over forked workers of one thread: each group has its own
    batches, dropout stream, Adam and early stopping, so with one torch thread on both sides (the
    same kernels) every run is bit-identical to one process's, dropout included, and in grid order."""
    task = ToyTask()
    data = three_splits(weak_blobs, 120, 60, 60)
    config = GRID.replace(dropout=0.2, max_epochs=4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = batched(task, data, config.replace(workers=1))
        forked = batched(task, data, config.replace(workers=3))
    finally:
        torch.set_num_threads(threads)
    assert len(alone) == len(forked) == len(layer_choices(LAYERS, None)) * 2 * 2
    for (one, one_curve), (other, other_curve) in zip(alone, forked):
        assert (one.layer, one.learning_rate, one.seed, one.epochs, one.best_epoch) == (
            other.layer, other.learning_rate, other.seed, other.epochs, other.best_epoch)
        assert one_curve == other_curve and one.valid == other.valid and one.test == other.test
        assert one.extra == other.extra
    # more workers than groups (one layer choice, one seed): as many workers as groups
    single = config.replace(workers=4, layers=(2,), seeds=(1,), learning_rates=(1e-3,))
    assert [run.layer for run, _ in batched(task, data, single)] == [2]


def test_a_worker_failure_is_raised_in_the_caller_with_its_type():
    assert in_forked_workers(3, lambda index: {"square": index * index}) == [{"square": i * i} for i in range(3)]

    def work(index: int) -> int:
        if index == 1:
            raise ValueError("rows of split 'valid' are NaN")
        return index

    with pytest.raises(ValueError, match="NaN") as raised:
        in_forked_workers(2, work)
    assert any("worker 1" in note for note in raised.value.__notes__)

    class LoaderError(KeyError):  # not a builtin: arrives as its nearest builtin class, named
        pass

    def fails(index: int) -> int:
        raise LoaderError("split 'test' missing")

    with pytest.raises(KeyError, match="LoaderError"):
        in_forked_workers(1, fails)
    with pytest.raises(pickle.UnpicklingError, match="not a result"):  # only results come back
        in_forked_workers(1, lambda index: Path("x"))
    with pytest.raises(ValueError, match="workers must be >= 1"):
        ProbeConfig(workers=0)
    assert grid_workers(ProbeConfig(workers=3), torch.device("cuda")) == 1  # no fork beside a CUDA context
    assert grid_workers(ProbeConfig(workers=3), torch.device("cpu")) == 3


def test_standardiser_accumulates_float16_rows_in_float64():
    rows = (np.random.default_rng(0).standard_normal((10_001, 3, 4)) * 50 + 1000).astype(np.float16)
    mean, std = standardiser(rows, chunk=999)
    reference = rows.astype(np.float64)
    # float64 sums are exact to ~1e-12 here; the result is rounded once to float32 (rel 6e-8)
    np.testing.assert_allclose(mean.numpy(), reference.mean(0), rtol=1e-7)
    np.testing.assert_allclose(std.numpy(), reference.std(0, ddof=1), rtol=1e-7)
    assert mean.dtype == std.dtype == torch.float32 and mean.shape == (3, 4)


def test_rows_gathered_on_the_device_equal_rows_gathered_on_the_host():
    # on an accelerator GridSplit.on_device moves the float16 table once and gathers batches
    # there: the same rows, standardised the same way (exact: the same float32 operations)
    cached = layered(blobs(50, seed=0, windows=2), 0)
    host = GridSplit(cached.rows, torch.zeros(100), np.zeros(100, dtype=np.int64), cached.items)
    device = GridSplit(torch.from_numpy(cached.rows), host.y, host.row_item, host.items)
    mean, std = standardiser(cached.rows)
    index = np.array([7, 3, 99, 3])
    torch.testing.assert_close(device.batch(index, mean, std), host.batch(index, mean, std), rtol=0, atol=0)
    torch.testing.assert_close(device.batch(slice(10, 20), mean, std), host.batch(slice(10, 20), mean, std),
                               rtol=0, atol=0)
    assert host.on_device(torch.device("cpu")) is host  # on the CPU a memory map stays on disk
    assert ProbeConfig(device=None).torch_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_grid_on_cuda_equals_runs_one_by_one_on_the_cpu():
    # TF32 is off for float32 matmuls by default (torch.backends.cuda.matmul.allow_tf32), so the
    # float32 rounding argument of TOLERANCE holds on the GPU too
    task = ToyTask("regression", ("arousal", "valence"))
    data = three_splits(regressed, 200, 60, 60)
    assert_same_runs(one_by_one(task, data, GRID), batched(task, data, GRID.replace(device="cuda")))


@pytest.mark.parametrize("fused", [True, False])
def test_grid_adam_equals_torch_adam_per_probe(fused):
    """Two probes at two learning rates, three steps: each probe's weights as torch.optim.Adam
    leaves them alone. The fused kernel (CPU, CUDA) and the foreach fallback (other devices)."""
    from musicssl.evaluate.probe_grid import GridAdam, ProbeGroup

    rng = torch.Generator().manual_seed(0)
    params = {"w1": torch.randn(2, 4, 3, generator=rng), "b1": torch.randn(2, 4, generator=rng),
              "w2": torch.randn(2, 2, 4, generator=rng), "b2": torch.randn(2, 2, generator=rng)}
    alone = [{name: value[i].clone().requires_grad_() for name, value in params.items()} for i in range(2)]
    group = ProbeGroup(0, 1, [0, 1], {name: value.clone() for name, value in params.items()})
    rates = {0: 1e-3, 1: 1e-2}
    optimisers = [torch.optim.Adam(alone[i].values(), lr=rates[i]) for i in range(2)]
    adam = GridAdam(torch.device("cpu"))
    adam.fused = fused
    for _ in range(3):
        grads = {name: torch.randn(value.shape, generator=rng) for name, value in params.items()}
        for name in params:
            group.grads[name].copy_(grads[name])
            for i in range(2):
                alone[i][name].grad = grads[name][i].clone()
        adam.step([group], rates)
        for optimiser in optimisers:
            optimiser.step()
    # the kernels round differently: per step one rounding of the weight (6e-8 relative) after an
    # update of <= lr that differs by a few ulps of lr; over 3 steps < 1e-6 relative (+1e-7 near 0)
    for i in range(2):
        for name in params:
            torch.testing.assert_close(group.params[name][i], alone[i][name].detach(), rtol=1e-6, atol=1e-7)
