"""The probe of one task: every run of the grid (layers x learning rates x seeds) trained, then
the configuration chosen on validation. The protocol (config, model, targets, scores, schedule,
selection) is in probe_protocol.py; here we only choose who trains the runs: probe_grid.train_grid
(all at once, one batched model: the default) or train_run (one run alone, the reference the
grid is tested against).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from musicssl.evaluate.probe_grid import grid_data, train_grid
from musicssl.evaluate.probe_protocol import (WEIGHTED, MLPProbe, ProbeConfig, RunResult, SplitData, TaskResult,
                                              layer_choices, loss_function, mean_scores, plateau_scheduler,
                                              schedule, score_split, select, split_data, standardiser)
from musicssl.evaluate.tasks.base import Task


def probe_task(task: Task, splits, cache, config: ProbeConfig, progress: bool = True) -> TaskResult:
    """Extract what is missing, then run the grid of layers x learning rates x seeds."""
    everything = splits.train + splits.valid + splits.test
    cache.extract(everything, progress=progress)
    notes = list(splits.notes)
    errors = cache.errors()
    if errors:
        notes.append(f"{len(errors)} items could not be read and were left out, e.g. "
                     + "; ".join(f"{key}: {error}" for key, error in list(errors.items())[:3]))
    source = cache.source
    fps = source.frame_rate_hz
    layers = layer_choices(source.num_layers, config.layers)
    if config.batched:
        runs = train_grid(task, *grid_data(task, splits, cache, fps, config.beat_widen), layers=layers,
                          config=config, fps=fps, progress=progress)
    else:
        runs = _sequential_runs(task, splits, cache, layers, config, fps, progress)
    monitor = task.protocol.metrics[0]
    layer, lr, chosen = select(runs, monitor)
    valid, _ = mean_scores(chosen, "valid")
    test, test_std = mean_scores(chosen, "test")
    return TaskResult(task=task.protocol.name, model=source.name, monitor=monitor, runs=runs, layer=layer,
                      learning_rate=lr, valid=valid, test=test, test_std=test_std,
                      sizes={name: len(splits[name]) for name in ("train", "valid", "test")}, notes=notes)


def _sequential_runs(task: Task, splits, cache, layers: Sequence[int | str], config: ProbeConfig, fps: float,
                     progress: bool) -> list[RunResult]:
    from tqdm import tqdm

    bar = tqdm(total=len(layers) * len(config.learning_rates) * len(config.seeds), desc=f"probe {task.protocol.name}",
               unit="run", disable=not progress)
    runs: list[RunResult] = []
    for layer in layers:
        data = _layer_data(task, splits, cache, layer, fps, config.beat_widen)
        for lr in config.learning_rates:
            for seed in config.seeds:
                runs.append(train_run(task, *data, layer=layer, learning_rate=lr, seed=seed, config=config, fps=fps))
                bar.update()
    bar.close()
    return runs


def _layer_data(task: Task, splits, cache, layer: int | str, fps: float, widen: int) -> list[SplitData]:
    index = None if layer == WEIGHTED else layer
    loaded = {name: cache.load(splits[name], layer=index) for name in ("train", "valid", "test")}
    if layer == WEIGHTED:  # layers 1..L only, as MARBLE's feature[1:]
        for cached in loaded.values():
            cached.rows = np.ascontiguousarray(cached.rows[:, 1:])
    for name, cached in loaded.items():
        if not cached.items:
            raise ValueError(f"task {task.protocol.name}: no usable {name} items (all failed to load?)")
    mean, std = standardiser(loaded["train"].rows)
    return [split_data(task, loaded[name], fps, widen, mean, std) for name in ("train", "valid", "test")]


def train_run(task: Task, train: SplitData, valid: SplitData, test: SplitData, layer: int | str,
              learning_rate: float, seed: int, config: ProbeConfig, fps: float,
              curve: list[float] | None = None) -> RunResult:
    """One run of the grid, alone (the reference for probe_grid.train_grid). `curve`, if given,
    receives the validation monitor of every epoch."""
    protocol = task.protocol
    device = config.torch_device()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    weighted = train.x.shape[1] if train.x.ndim == 3 else 0
    outputs = 2 if protocol.kind == "beats" else protocol.num_outputs
    model = MLPProbe(train.x.shape[-1], outputs, config.hidden_size, config.dropout, weighted,
                     config.layer_weight_init).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    scheduler = plateau_scheduler(optimizer, task, config)
    max_epochs, patience, batch = schedule(task, config, fps)
    # Beats are monitored with the decoder that scores them. Peak picking at 0.5 is no monitor:
    # with ~11 % beat frames a probe's P(beat) stays under 0.5, F is 0 at every epoch, and early
    # stopping kept the first epoch's weights.
    monitor_name = protocol.metrics[0]
    loss_fn = loss_function(protocol.kind)
    best, best_epoch, best_state, epoch = -math.inf, 0, copy.deepcopy(model.state_dict()), 0
    for epoch in range(1, max_epochs + 1):
        model.train()
        order = torch.randperm(len(train.y), generator=generator)
        for start in range(0, len(order), batch):
            rows = order[start:start + batch]
            loss = loss_fn(model(train.x[rows].to(device)), train.y[rows].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with warnings.catch_warnings():  # metric caveats (e.g. constant tags) are reported once, below
            warnings.simplefilter("ignore")
            monitor = score_split(task, model, valid, fps, config.beat_decoder)[0][monitor_name]
        if curve is not None:
            curve.append(monitor)
        scheduler.step(monitor)
        if monitor > best:
            best, best_epoch, best_state = monitor, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= patience:
            break
    model.load_state_dict(best_state)
    valid_scores, extra = score_split(task, model, valid, fps, config.beat_decoder)
    test_scores, _ = score_split(task, model, test, fps, config.beat_decoder, ensemble=extra.get("ensemble"))
    if model.layer_weights is not None:
        extra["layer_weights"] = torch.softmax(model.layer_weights.detach(), 0).tolist()
    return RunResult(layer=layer, learning_rate=learning_rate, seed=seed, epochs=epoch, best_epoch=best_epoch,
                     valid=valid_scores, test=test_scores, extra=extra)
