"""Every run of a task's probe grid trained at once: one batched model for all (layer, learning
rate, seed) runs, each mini-batch read once and fed to every probe (as DINOv2's linear
evaluation trains its grid of heads in one pass over the features).

Each run keeps probe.train_run's protocol: its own initialisation (the one its seed gives
MLPProbe), its own Adam state and learning rate, its own ReduceLROnPlateau on its own validation
monitor, its own early stopping and best-validation weights. What runs share is only the data:
- Batch order. train_run shuffles with `torch.Generator().manual_seed(seed)`, one permutation
  per epoch, so the runs of one seed see the same batches whatever their layer and learning
  rate. Runs are grouped by seed; each seed's generator draws the same permutations as
  train_run's, so a run here sees exactly the batches it sees alone.
- Matmuls. The probes of one seed that read the same layer take the same batch: their first
  layers are one weight (n*H, D) and one GEMM (B, D) @ (D, n*H); the second layers are one bmm
  over the n probes. Weighted-sum probes mix the layers each with its own weights, (n, B, D), and
  take a bmm. Adam runs fused over all probes that share a learning rate (a handful of calls per
  step, however many probes).
- Dropout masks are drawn for all probes at once from the global generator, so with dropout a
  run here is a different draw than alone (the same distribution; tests compare the selected
  configuration within the seed spread). With dropout 0 a run is the same computation as alone,
  up to float32 rounding in the order of the reductions.
A run that stops early leaves the batched model at the end of that epoch (its best weights are
kept aside), so the others do not pay for it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import scipy.stats
import torch
import torch.nn.functional as F
from torch.optim.adam import adam as functional_adam
from torch import Tensor

from musicssl.evaluate.probe import (
    WEIGHTED, item_outputs, item_targets, MLPProbe, ProbeConfig, RunResult, plateau_scheduler, row_targets, schedule,
    score_logits, standardiser,
)
from musicssl.evaluate.tasks.base import Item, Task

PARAMS = ("w1", "b1", "w2", "b2", "mix")  # first layer, second layer, layer-mixing logits (weighted only)


class GridSplit:
    """One split's rows of every layer, as cached (float16 or float32, memory-mapped or not),
    standardised batch by batch on the probe's device; targets per row."""

    def __init__(self, rows: np.ndarray, y: Tensor, row_item: np.ndarray, items: Sequence[Item]):
        if rows.ndim != 3:
            raise ValueError(f"grid rows must be (R, K, D), every layer of every row; found shape {rows.shape}")
        self.rows, self.y, self.row_item, self.items = rows, y, row_item, list(items)

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, index: np.ndarray | slice, mean: Tensor, std: Tensor) -> Tensor:
        """(B, K, D) float32 standardised rows on mean's device."""
        if isinstance(self.rows, Tensor):  # already on the device (see on_device)
            block = self.rows[index if isinstance(index, slice) else torch.as_tensor(index, device=self.rows.device)]
        else:
            block = torch.from_numpy(np.ascontiguousarray(self.rows[index])).to(mean.device, non_blocking=True)
        return (block.float() - mean) / std

    def on_device(self, device: torch.device) -> "GridSplit":
        """On an accelerator the whole table goes over once, as stored (float16: MTT's 56k windows
        x 13 x 768 are 1.1 GB): batches are then gathered there, not copied from the host each step.
        On the CPU the rows stay where they are (an np.memmap stays on disk)."""
        if device.type == "cpu":
            return self
        return GridSplit(torch.from_numpy(np.ascontiguousarray(self.rows)).to(device), self.y, self.row_item, self.items)


def grid_data(task: Task, splits, cache, fps: float, widen: int) -> list[GridSplit]:
    """Train, valid and test rows of every layer, read once for the whole grid."""
    result = []
    for name in ("train", "valid", "test"):
        cached = cache.load(splits[name], layer=None)
        if not cached.items:
            raise ValueError(f"task {task.protocol.name}: no usable {name} items (all failed to load?)")
        y, row_item = row_targets(task, cached, fps, widen)
        result.append(GridSplit(cached.rows, y, row_item, cached.items))
    return result


class ProbeGroup:
    """Probes that read the same input: one seed's batches and one layer choice. Parameters are
    stacked on a first probe axis: w1 (n, H, D), b1 (n, H), w2 (n, C, H), b2 (n, C), mix (n, K-1)."""

    def __init__(self, layer: int | str, seed: int, members: list[int], params: dict[str, Tensor],
                 trainable: bool = True):
        """`params` are taken over (not copied); `trainable` False: for scoring only, no Adam state."""
        self.layer, self.seed, self.members = layer, seed, members
        self.params = {name: value.requires_grad_(trainable) for name, value in params.items()}
        if not trainable:
            return
        self.exp_avg = {name: torch.zeros_like(value) for name, value in params.items()}
        self.exp_avg_sq = {name: torch.zeros_like(value) for name, value in params.items()}
        # Adam's step count, per probe and tensor as torch.optim.Adam keeps it (float32, on the
        # parameters' device, as its fused kernels want)
        self.steps = {name: [torch.zeros((), device=value.device) for _ in members] for name, value in params.items()}

    def forward(self, x: Tensor, dropout: Dropout | None = None) -> Tensor:
        """x: (B, K, D) standardised rows of every layer -> (n, B, C) logits of every probe;
        `dropout` None in evaluation."""
        p = self.params
        n, hidden, dim = p["w1"].shape
        if self.layer == WEIGHTED:  # layers 1..L, as MLPProbe's weighted sum
            mixed = torch.einsum("nk,bkd->nbd", torch.softmax(p["mix"], -1), x[:, 1:])  # (n, B, D)
            h = torch.baddbmm(p["b1"].unsqueeze(1), mixed, p["w1"].transpose(1, 2))  # (n, B, H)
        else:  # one GEMM for the n probes of this layer
            h = F.linear(x[:, self.layer], p["w1"].reshape(n * hidden, dim), p["b1"].reshape(n * hidden))
            h = h.view(len(x), n, hidden).transpose(0, 1)  # (n, B, H)
        h = torch.relu(h) if dropout is None else dropout(torch.relu(h))
        return torch.baddbmm(p["b2"].unsqueeze(1), h, p["w2"].transpose(1, 2))  # (n, B, C)

    def keep(self, positions: list[int]) -> None:
        """Drop the probes not at `positions` (stopped ones), with their optimiser state."""
        index = torch.tensor(positions, device=self.params["w1"].device)
        self.members = [self.members[i] for i in positions]
        for name in self.params:
            self.params[name] = self.params[name].detach()[index].requires_grad_()
            self.exp_avg[name] = self.exp_avg[name][index]
            self.exp_avg_sq[name] = self.exp_avg_sq[name][index]
            self.steps[name] = [self.steps[name][i] for i in positions]


class Dropout:
    """Dropout on every probe's hidden units, each unit of each probe its own draw. On the CPU,
    torch's Bernoulli draws cost ~30 ns a unit (a third of a small grid's step); the masks come
    instead from numpy's PCG64 as 16-bit integers (~1 ns a unit): a unit is dropped with
    probability round(p * 2^16) / 2^16 (p = 0.2: 0.199997) and kept ones are scaled by the inverse
    of the keep probability, as nn.Dropout. On an accelerator, torch's own dropout (Philox)."""

    def __init__(self, p: float, seed: int):
        self.threshold = round(p * 2 ** 16)
        self.scale = 1.0 / (1.0 - self.threshold / 2 ** 16)
        self.p, self.rng = p, np.random.default_rng(seed)

    def __call__(self, h: Tensor) -> Tensor:
        if self.threshold == 0:
            return h
        if h.device.type != "cpu":
            return F.dropout(h, self.p, training=True)
        bits = np.frombuffer(self.rng.bytes(2 * h.numel()), dtype=np.uint16).reshape(h.shape)
        keep = torch.from_numpy(bits >= self.threshold)
        return h * (keep.to(h.dtype) * self.scale)


def group_loss(kind: str, logits: Tensor, y: Tensor) -> Tensor:
    """Sum over the n probes of each probe's mean loss (the loss train_run minimises), so each
    probe's gradient is its own. logits: (n, B, C); y: (B,) classes or (B, C) targets."""
    n, batch, classes = logits.shape
    if kind in ("multiclass", "beats"):
        return F.cross_entropy(logits.reshape(n * batch, classes), y.repeat(n), reduction="sum") / batch
    target = y.unsqueeze(0).expand(n, batch, classes)
    if kind == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / (batch * classes)
    return F.mse_loss(logits, target, reduction="sum") / (batch * classes)


def adam_step(groups: Sequence[ProbeGroup], learning_rates: dict[int, float]) -> None:
    """torch.optim.Adam's update (defaults: betas 0.9/0.999, eps 1e-8) on every probe, one fused
    (CPU, CUDA) call per distinct learning rate. All live probes have taken the same number of
    steps, so only the learning rate tells them apart."""
    buckets: dict[float, tuple[list, list, list, list, list]] = {}
    for group in groups:
        for name, param in group.params.items():
            values, grads = param.detach().unbind(0), param.grad.unbind(0)
            avgs, squares = group.exp_avg[name].unbind(0), group.exp_avg_sq[name].unbind(0)
            for position, member in enumerate(group.members):
                bucket = buckets.setdefault(learning_rates[member], ([], [], [], [], []))
                for column, tensor in zip(bucket, (values[position], grads[position], avgs[position],
                                                   squares[position], group.steps[name][position])):
                    column.append(tensor)
    fused = groups[0].params["w1"].device.type in ("cpu", "cuda")
    with torch.no_grad():
        for lr, (params, grads, avgs, squares, steps) in buckets.items():
            functional_adam(params, grads, avgs, squares, [], steps, fused=fused, foreach=False if fused else None,
                            amsgrad=False, beta1=0.9, beta2=0.999, lr=lr, weight_decay=0.0, eps=1e-8,
                            maximize=False)


def initial_params(layer: int | str, dim: int, outputs: int, layers: int, config: ProbeConfig,
                   seed: int) -> dict[str, Tensor]:
    """One run's initial weights: the ones `torch.manual_seed(seed); MLPProbe(...)` gives train_run
    (the same for every learning rate and every single layer of a seed)."""
    torch.manual_seed(seed)
    weighted = layers - 1 if layer == WEIGHTED else 0
    model = MLPProbe(dim, outputs, config.hidden_size, config.dropout, weighted, config.layer_weight_init)
    one = {"w1": model.mlp[0].weight, "b1": model.mlp[0].bias, "w2": model.mlp[3].weight, "b2": model.mlp[3].bias}
    if weighted:
        one["mix"] = model.layer_weights
    return {name: value.detach() for name, value in one.items()}


def grid_logits(groups: Sequence[ProbeGroup], split: GridSplit, mean: Tensor, std: Tensor,
                chunk: int = 4096) -> dict[int, Tensor]:
    """Every probe's (R, C) logits of a split, on the CPU, each chunk of rows read once."""
    pieces: dict[int, list[Tensor]] = {member: [] for group in groups for member in group.members}
    with torch.no_grad():
        for start in range(0, len(split), chunk):
            x = split.batch(slice(start, start + chunk), mean, std)
            for group in groups:
                for member, logits in zip(group.members, group.forward(x).cpu()):
                    pieces[member].append(logits)
    return {member: torch.cat(parts) for member, parts in pieces.items()}


class RunState:
    """What train_run keeps per run besides its weights: scheduler, best score and weights, epochs."""

    def __init__(self, layer: int | str, learning_rate: float, seed: int, task: Task, config: ProbeConfig,
                 params: dict[str, Tensor]):
        self.layer, self.learning_rate, self.seed = layer, learning_rate, seed
        # torch's own ReduceLROnPlateau, on a one-parameter optimiser that only holds this run's lr
        holder = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=learning_rate)
        self.scheduler = plateau_scheduler(holder, task, config)
        self.best, self.best_epoch, self.epochs = -math.inf, 0, 0
        self.best_params = params
        self.curve: list[float] = []

    @property
    def lr(self) -> float:
        return self.scheduler.optimizer.param_groups[0]["lr"]

    def end_epoch(self, epoch: int, monitor: float, params: dict[str, Tensor], patience: int) -> bool:
        """train_run's end of epoch; returns whether the run goes on."""
        self.epochs = epoch
        self.curve.append(monitor)
        self.scheduler.step(monitor)
        if monitor > self.best:
            self.best, self.best_epoch = monitor, epoch
            self.best_params = {name: value.detach().clone() for name, value in params.items()}
            return True
        return epoch - self.best_epoch < patience


def build_groups(layers: Sequence[int | str], config: ProbeConfig, task: Task, dim: int, num_layers: int,
                 device: torch.device) -> tuple[list[ProbeGroup], list[RunState]]:
    """One group per (seed, layer choice); runs numbered in probe_task's order (layer, lr, seed)."""
    outputs = 2 if task.protocol.kind == "beats" else task.protocol.num_outputs
    grid = [(layer, lr, seed) for layer in layers for lr in config.learning_rates for seed in config.seeds]
    members: dict[tuple, list[int]] = {}
    for index, (layer, _, seed) in enumerate(grid):
        members.setdefault((seed, layer), []).append(index)
    groups, runs = [], [None] * len(grid)
    for (seed, layer), indices in members.items():
        initial = {name: value.to(device) for name, value in
                   initial_params(layer, dim, outputs, num_layers, config, seed).items()}
        stacked = {name: value.unsqueeze(0).repeat(len(indices), *([1] * value.ndim)) for name, value in initial.items()}
        groups.append(ProbeGroup(layer, seed, indices, stacked))
        for index in indices:  # a run's best weights start as its initial ones (shared, never written)
            runs[index] = RunState(*grid[index], task, config, initial)
    return groups, runs


def train_grid(task: Task, train: GridSplit, valid: GridSplit, test: GridSplit, layers: Sequence[int | str],
               config: ProbeConfig, fps: float, progress: bool = False,
               curves: dict[tuple, list[float]] | None = None) -> list[RunResult]:
    """The runs of probe_task's grid (layers x learning rates x seeds, in that order), trained at
    once. `curves`, if given, receives each run's validation monitor per epoch, keyed (layer, lr, seed)."""
    from tqdm import tqdm

    device = config.torch_device()
    mean, std = (value.to(device) for value in standardiser(train.rows))
    train, valid, test = (split.on_device(device) for split in (train, valid, test))
    groups, runs = build_groups(layers, config, task, train.rows.shape[-1], train.rows.shape[1], device)
    max_epochs, patience, batch = schedule(task, config, fps)
    monitor_name = task.protocol.metrics[0]
    generators = {seed: torch.Generator().manual_seed(seed) for seed in config.seeds}
    targets = train.y.to(device)
    dropout = Dropout(config.dropout, seed=config.seeds[0])
    bar = tqdm(total=max_epochs, desc=f"probe {task.protocol.name} ({len(runs)} runs at once)", unit="epoch",
               disable=not progress)
    for epoch in range(1, max_epochs + 1):
        if not groups:
            break
        orders = {seed: torch.randperm(len(train), generator=generators[seed])
                  for seed in sorted({group.seed for group in groups})}
        learning_rates = {index: run.lr for index, run in enumerate(runs)}
        for start in range(0, len(train), batch):
            loss = 0.0
            for seed, order in orders.items():
                rows = order[start:start + batch]
                x, y = train.batch(rows.numpy(), mean, std), targets[rows.to(device)]
                for group in groups:
                    if group.seed == seed:
                        loss = loss + group_loss(task.protocol.kind, group.forward(x, dropout), y)
            for group in groups:
                for param in group.params.values():
                    param.grad = None
            loss.backward()
            adam_step(groups, learning_rates)
        groups = _end_epoch(task, groups, runs, valid, mean, std, epoch, patience, fps, config, monitor_name)
        bar.update()
    bar.close()
    results = _final_scores(task, runs, valid, test, mean, std, fps, config, device)
    if curves is not None:
        curves.update({(run.layer, run.learning_rate, run.seed): run.curve for run in runs})
    return results


def _end_epoch(task: Task, groups: list[ProbeGroup], runs: list[RunState], valid: GridSplit, mean: Tensor,
               std: Tensor, epoch: int, patience: int, fps: float, config: ProbeConfig,
               monitor_name: str) -> list[ProbeGroup]:
    """Validate every live run, step its scheduler, keep its best weights; drop stopped runs."""
    logits = grid_logits(groups, valid, mean, std)
    targets = None if task.protocol.kind == "beats" else item_targets(task, valid.items)  # beats: times per item
    kept = []
    for group in groups:
        going_on = []
        for position, member in enumerate(group.members):
            with warnings.catch_warnings():  # metric caveats are reported once, at the final scores
                warnings.simplefilter("ignore")
                monitor = epoch_monitor(task, logits[member], valid, targets, fps, config.beat_decoder)
            params = {name: value[position] for name, value in group.params.items()}
            if runs[member].end_epoch(epoch, monitor, params, patience):
                going_on.append(position)
        if len(going_on) < len(group.members) and going_on:
            group.keep(going_on)
        if going_on:
            kept.append(group)
    return kept


def epoch_monitor(task: Task, logits: Tensor, split: GridSplit, targets: np.ndarray | None, fps: float,
                  decoder: str) -> float:
    """The validation monitor of one run, the number score_logits gives for metrics[0]: for the
    plain clip tasks without the metrics the monitor does not need (a grid validates every run
    every epoch: sklearn's accuracy_score alone took 8 ms a call, the small grid's largest cost)."""
    protocol = task.protocol
    plain = type(task).score is Task.score and not protocol.song_ensemble
    if plain and protocol.kind == "multiclass":  # = sklearn accuracy_score: count / N in float64
        outputs = item_outputs(logits, split.row_item, len(split.items))
        return float(np.mean(outputs.argmax(1) == targets))
    if plain and protocol.kind == "multilabel":  # the monitor, ROC-AUC, without average precision
        return roc_auc_by_ranks(targets, item_outputs(logits, split.row_item, len(split.items)))
    return score_logits(task, logits, split.row_item, split.items, fps, decoder)[0][protocol.metrics[0]]


def roc_auc_by_ranks(targets: np.ndarray, scores: np.ndarray) -> float:
    """metrics.roc_auc_macro's number (mean over tags with both classes of sklearn's ROC-AUC) from
    the Mann-Whitney statistic, all tags at once: ties take their mean rank, as the ROC curve's
    diagonal steps give them half credit. sklearn validates and sorts tag by tag: 0.1 s a run on
    MTT's 50 tags, every epoch of every run. Final scores still come from metrics.roc_auc_macro."""
    positives = targets.sum(0)
    defined = (positives > 0) & (positives < len(targets))
    if not defined.any():
        raise ValueError("roc_auc: no tag has both classes on this split")
    ranks = scipy.stats.rankdata(scores[:, defined], axis=0)  # (N, T) 1-based, ties averaged
    n_pos = positives[defined]
    u = (ranks * targets[:, defined]).sum(0) - n_pos * (n_pos + 1) / 2
    return float(np.mean(u / (n_pos * (len(targets) - n_pos))))


def _final_scores(task: Task, runs: list[RunState], valid: GridSplit, test: GridSplit, mean: Tensor, std: Tensor,
                  fps: float, config: ProbeConfig, device: torch.device) -> list[RunResult]:
    """Each run's best-validation weights scored on valid and test, as train_run does."""
    members: dict[tuple, list[int]] = {}
    for index, run in enumerate(runs):
        members.setdefault((run.seed, run.layer), []).append(index)
    groups = [ProbeGroup(layer, seed, indices, {name: torch.stack([runs[i].best_params[name] for i in indices])
                                                 for name in runs[indices[0]].best_params}, trainable=False)
              for (seed, layer), indices in members.items()]
    valid_logits, test_logits = grid_logits(groups, valid, mean, std), grid_logits(groups, test, mean, std)
    results = []
    for index, run in enumerate(runs):
        valid_scores, extra = score_logits(task, valid_logits[index], valid.row_item, valid.items, fps,
                                           config.beat_decoder)
        test_scores, _ = score_logits(task, test_logits[index], test.row_item, test.items, fps, config.beat_decoder,
                                      ensemble=extra.get("ensemble"))
        if "mix" in run.best_params:
            extra["layer_weights"] = torch.softmax(run.best_params["mix"].float().cpu(), 0).tolist()
        results.append(RunResult(layer=run.layer, learning_rate=run.learning_rate, seed=run.seed, epochs=run.epochs,
                                 best_epoch=run.best_epoch, valid=valid_scores, test=test_scores, extra=extra))
    return results
