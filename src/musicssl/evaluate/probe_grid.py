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
  layers are one weight (n*H, D) and one GEMM W @ x^T forward, one for the weight gradients;
  the second layers are one bmm over the n probes. Weighted-sum probes mix the layers each with
  its own weights, (n, B, D), and take a bmm. Forward and backward are written out (ProbeGroup),
  and Adam is torch's fused kernel once per learning rate (GridAdam), however many probes.
- Dropout masks come from a numpy generator per group (Dropout), so with dropout a run here is
  a different draw than alone (the same distribution; tests compare the selected configuration
  within the seed spread), and the same draw whatever else trains beside it. With dropout 0 a run is the same computation as alone, up to float32
  rounding in the order of the reductions.
A run that stops early leaves the batched model at the end of that epoch (its best weights are
kept aside), so the others do not pay for it. On the CPU the groups are shared out over forked
worker processes of one thread each (train_grid, grid_workers.py): a group step is a dozen ops
of 20-300 us, which two threads of one process split poorly.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch.optim.adam import adam as functional_adam
from torch import Tensor

from musicssl.evaluate import metrics
from musicssl.evaluate.grid_workers import grid_workers, in_forked_workers
from musicssl.evaluate.probe_protocol import (WEIGHTED, MLPProbe, ProbeConfig, RunResult, item_outputs, item_targets,
                                              plateau_scheduler, row_targets, rows_tensor, schedule, score_logits,
                                              standardiser)
from musicssl.evaluate.tasks.base import Item, Task

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
            block = rows_tensor(self.rows[index]).to(mean.device, non_blocking=True)
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
    stacked on a first probe axis: w1 (n, H, D), b1 (n, H), w2 (n, C, H), b2 (n, C), mix (n, K-1).

    Forward and backward are written out (no autograd): the gradients go into buffers kept from
    step to step, and the first layer of the n probes of one layer is one GEMM forward, W (nH, D)
    @ x^T, and one backward. Hidden units are laid out (n, H, B): both GEMMs then read them as
    they lie (on an AMD EPYC this orientation ran at 142 GFLOP/s where x @ W^T ran at 118).
    The arithmetic is MLPProbe's (tests/evaluate/test_probe_grid.py compares every run with
    train_run's autograd)."""

    def __init__(self, layer: int | str, seed: int, members: list[int], params: dict[str, Tensor],
                 trainable: bool = True):
        """`params` are taken over (not copied); `trainable` False: for scoring only, no Adam state."""
        self.layer, self.seed, self.members = layer, seed, members
        self.params = params
        self.saved: tuple | None = None  # what backward needs from the last training forward
        self.dropout: Dropout | None = None  # its training draws (build_groups gives each group its own)
        if not trainable:
            return
        self.grads = {name: torch.zeros_like(value) for name, value in params.items()}
        self.exp_avg = {name: torch.zeros_like(value) for name, value in params.items()}
        self.exp_avg_sq = {name: torch.zeros_like(value) for name, value in params.items()}

    def forward(self, x: Tensor, dropout: Dropout | None = None, train: bool = False) -> Tensor:
        """x: (B, K, D) standardised rows of every layer -> (n, B, C) logits of every probe;
        `dropout` None in evaluation; `train` keeps what backward needs."""
        p = self.params
        n, hidden, dim = p["w1"].shape
        if self.layer == WEIGHTED:  # layers 1..L, as MLPProbe's weighted sum
            weights = torch.softmax(p["mix"], -1)  # (n, K-1)
            inputs = torch.einsum("nk,bkd->nbd", weights, x[:, 1:])  # (n, B, D)
            z = torch.baddbmm(p["b1"].unsqueeze(2), p["w1"], inputs.transpose(1, 2))  # (n, H, B)
        else:  # one GEMM for the n probes of this layer: W (nH, D) @ x^T
            weights, inputs = None, x[:, self.layer]  # (B, D)
            z = torch.addmm(p["b1"].view(n * hidden, 1), p["w1"].view(n * hidden, dim), inputs.t())
            z = z.view(n, hidden, len(x))  # (n, H, B)
        h = z.relu_()  # (n, H, B)
        scale = 1.0
        if dropout is not None:
            h, scale = dropout.apply_to(h)  # h * mask; the kept units' scale 1/(1-p) goes into W2 below
        w2 = p["w2"] if scale == 1.0 else p["w2"] * scale  # (n, C, H): smaller than h
        logits = torch.baddbmm(p["b2"].unsqueeze(2), w2, h)  # (n, C, B)
        self.saved = (x, inputs, weights, w2, scale, h) if train else None
        return logits.transpose(1, 2)  # (n, B, C)

    def backward(self, grad_logits: Tensor) -> None:
        """Gradients of sum over probes of each probe's loss into self.grads, from grad_logits
        (n, B, C) = d loss / d logits of the last training forward."""
        x, inputs, weights, w2, scale, h = self.saved
        p, g = self.params, self.grads
        n, hidden, dim = p["w1"].shape
        grad_t = grad_logits.transpose(1, 2)  # (n, C, B)
        torch.bmm(grad_t, h.transpose(1, 2), out=g["w2"])  # (n, C, H)
        if scale != 1.0:
            g["w2"].mul_(scale)
        torch.sum(grad_t, 2, out=g["b2"])
        # through ReLU and dropout at once: a unit passed on iff its output is > 0
        grad_z = torch.ops.aten.threshold_backward(torch.bmm(w2.transpose(1, 2), grad_t), h, 0)  # (n, H, B)
        torch.sum(grad_z, 2, out=g["b1"])
        if self.layer == WEIGHTED:
            torch.bmm(grad_z, inputs, out=g["w1"])  # (n, H, D)
            grad_inputs = torch.bmm(grad_z.transpose(1, 2), p["w1"])  # (n, B, D)
            grad_weights = torch.einsum("nbd,bkd->nk", grad_inputs, x[:, 1:])  # (n, K-1)
            # softmax's backward: s * (g - <s, g>)
            torch.mul(weights, grad_weights - (weights * grad_weights).sum(-1, keepdim=True), out=g["mix"])
        else:  # one GEMM for the n probes' first-layer weights
            torch.mm(grad_z.view(n * hidden, -1), inputs, out=g["w1"].view(n * hidden, dim))
        self.saved = None

    def keep(self, positions: list[int]) -> None:
        """Drop the probes not at `positions` (stopped ones), with their optimiser state."""
        index = torch.tensor(positions, device=self.params["w1"].device)
        self.members = [self.members[i] for i in positions]
        for state in (self.params, self.grads, self.exp_avg, self.exp_avg_sq):
            for name in state:
                state[name] = state[name][index]


class Dropout:
    """Dropout on every probe's hidden units, each unit of each probe its own draw. On the CPU,
    torch's Bernoulli draws cost ~30 ns a unit (a third of a small grid's step); the masks come
    instead from numpy's PCG64 as 16-bit integers (~1 ns a unit): a unit is dropped with
    probability round(p * 2^16) / 2^16 (p = 0.2: 0.199997) and kept ones are scaled by the inverse
    of the keep probability, as nn.Dropout. On an accelerator, torch's own Bernoulli draws (Philox)."""

    def __init__(self, p: float, seed: int):
        self.threshold = round(p * 2 ** 16)
        self.scale = 1.0 / (1.0 - self.threshold / 2 ** 16)
        self.p, self.rng = p, np.random.default_rng(seed)

    def apply_to(self, h: Tensor) -> tuple[Tensor, float]:
        """(h with this step's dropped units zeroed in place, the scale 1/(1-p) of kept ones)."""
        if self.threshold == 0:
            return h, 1.0
        if h.device.type != "cpu":
            return h.mul_(torch.empty_like(h).bernoulli_(1 - self.p)), 1 / (1 - self.p)
        # the generator's raw 64-bit words as four 16-bit draws each: the stream rng.bytes gives, ~7x faster
        bits = self.rng.bit_generator.random_raw(-(-h.numel() // 4)).view(np.uint16)[:h.numel()].reshape(h.shape)
        values = h.numpy()  # numpy's float * bool loop: ~2x faster here than torch's mul_ with a bool mask
        np.multiply(values, bits >= self.threshold, out=values)
        return h, self.scale


def loss_gradient(kind: str, logits: Tensor, y: Tensor) -> Tensor:
    """d/d logits of each probe's mean loss (the loss train_run minimises: cross-entropy, binary
    cross-entropy with logits, mean squared error, each averaged over its B rows (x C outputs)).
    logits: (n, B, C); y: (B, C) one-hot classes (see gradient_targets) or targets. Overwrites nothing."""
    n, batch, classes = logits.shape
    if kind in ("multiclass", "beats"):
        return torch.softmax(logits, -1).sub_(y).div_(batch)
    if kind == "multilabel":
        return torch.sigmoid(logits).sub_(y).div_(batch * classes)
    return (logits - y).mul_(2 / (batch * classes))


def gradient_targets(kind: str, y: Tensor, outputs: int) -> Tensor:
    """The training targets as loss_gradient takes them: classes one-hot (float32), once for the
    split, so that a step subtracts a row instead of scattering into each probe's softmax."""
    if kind in ("multiclass", "beats"):
        return torch.nn.functional.one_hot(y, outputs).float()
    return y


class GridAdam:
    """torch.optim.Adam's update (defaults: betas 0.9/0.999, eps 1e-8) on every probe, one fused
    (CPU, CUDA) kernel call per distinct learning rate. All live probes have taken the same
    number of steps (a stopped probe leaves the grid), so one step count serves them all, and
    only the learning rate tells them apart: torch.optim.Adam keeps a step tensor per parameter
    and increments each (a third of a small grid's optimiser time went there). The per-probe
    views are bucketed once, and again only when a learning rate changes or probes stop."""

    def __init__(self, device: torch.device):
        self.step_count = torch.zeros((), device=device)  # float32 on the device, as the fused kernels want
        self.fused = device.type in ("cpu", "cuda")  # torch's fused Adam kernels exist for these
        self.key: tuple | None = None
        self.buckets: dict[float, tuple[list, list, list, list]] = {}

    def step(self, groups: Sequence[ProbeGroup], learning_rates: dict[int, float]) -> None:
        key = tuple((id(group), tuple(group.members)) for group in groups) + tuple(sorted(learning_rates.items()))
        if key != self.key:
            self.key, self.buckets = key, self._bucket(groups, learning_rates)
        self.step_count += 1
        with torch.no_grad():
            for lr, (params, grads, avgs, squares) in self.buckets.items():
                if self.fused:  # the kernel functional_adam(fused=True) calls, after it increments the steps
                    torch._fused_adam_(params, grads, avgs, squares, [], [self.step_count] * len(params), lr=lr,
                                       beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, amsgrad=False,
                                       maximize=False)
                else:  # functional_adam increments each step tensor: give it its own copies
                    steps = [self.step_count.clone() - 1 for _ in params]
                    functional_adam(params, grads, avgs, squares, [], steps, foreach=True, amsgrad=False, beta1=0.9,
                                    beta2=0.999, lr=lr, weight_decay=0.0, eps=1e-8, maximize=False)

    @staticmethod
    def _bucket(groups: Sequence[ProbeGroup], learning_rates: dict[int, float]) -> dict:
        buckets: dict[float, tuple[list, list, list, list]] = {}
        for group in groups:
            for name in group.params:
                views = [group.params[name].unbind(0), group.grads[name].unbind(0), group.exp_avg[name].unbind(0),
                         group.exp_avg_sq[name].unbind(0)]
                for position, member in enumerate(group.members):
                    bucket = buckets.setdefault(learning_rates[member], ([], [], [], []))
                    for column, tensors in zip(bucket, views):
                        column.append(tensors[position])
        return buckets


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
                chunk: int = 4096) -> list[Tensor]:
    """Every group's (n, R, C) logits of a split, on the CPU, each chunk of rows read once."""
    pieces: list[list[Tensor]] = [[] for _ in groups]
    with torch.no_grad():
        for start in range(0, len(split), chunk):
            x = split.batch(slice(start, start + chunk), mean, std)
            for parts, group in zip(pieces, groups):
                parts.append(group.forward(x).cpu())
    return [torch.cat(parts, 1) for parts in pieces]


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
        # each group its own dropout stream, from its seed and layer choice: the same draws
        # whatever else trains beside it, and in whichever worker
        groups[-1].dropout = Dropout(config.dropout, seed=[seed, layers.index(layer)])
        for index in indices:  # a run's best weights start as its initial ones (shared, never written)
            runs[index] = RunState(*grid[index], task, config, initial)
    return groups, runs


def train_grid(task: Task, train: GridSplit, valid: GridSplit, test: GridSplit, layers: Sequence[int | str],
               config: ProbeConfig, fps: float, progress: bool = False,
               curves: dict[tuple, list[float]] | None = None) -> list[RunResult]:
    """The runs of probe_task's grid (layers x learning rates x seeds, in that order), trained at
    once. `curves`, if given, receives each run's validation monitor per epoch, keyed (layer, lr, seed).

    On the CPU the groups are shared out over `grid_workers` forked processes of one thread
    each (every group is independent of the others: its own batches, dropout draws, Adam and
    early stopping), so a run's result does not depend on the number of workers."""
    workers = min(grid_workers(config, config.torch_device()), len(layers) * len(config.seeds))  # groups

    def shard(index: int) -> tuple[dict[int, RunResult], dict[tuple, list[float]]]:
        return _train_shard(task, train, valid, test, layers, config, fps, progress and index == 0, (index, workers))

    if workers > 1 and progress:  # worker 0's bar: tqdm's lock (a multiprocessing semaphore) made
        from tqdm import tqdm        # here, not in a child that leaves by os._exit without unregistering it
        tqdm.get_lock()
    parts = [shard(0)] if workers == 1 else in_forked_workers(workers, shard)
    results = {index: result for part, _ in parts for index, result in part.items()}
    if curves is not None:
        for _, part_curves in parts:
            curves.update(part_curves)
    return [results[index] for index in range(len(results))]


def _train_shard(task: Task, train: GridSplit, valid: GridSplit, test: GridSplit, layers: Sequence[int | str],
                 config: ProbeConfig, fps: float, progress: bool,
                 shard: tuple[int, int]) -> tuple[dict[int, RunResult], dict[tuple, list[float]]]:
    """Train the groups of share shard[0] of shard[1]; returns their runs' results and curves by
    run index."""
    from tqdm import tqdm

    device = config.torch_device()
    mean, std = (value.to(device) for value in standardiser(train.rows))
    train, valid, test = (split.on_device(device) for split in (train, valid, test))
    groups, runs = build_groups(layers, config, task, train.rows.shape[-1], train.rows.shape[1], device)
    groups = share(groups, *shard)
    mine = {member: runs[member] for group in groups for member in group.members}
    max_epochs, patience, batch = schedule(task, config, fps)
    monitor_name = task.protocol.metrics[0]
    generators = {seed: torch.Generator().manual_seed(seed) for seed in config.seeds}
    targets = gradient_targets(task.protocol.kind, train.y.to(device), groups[0].params["b2"].shape[1])
    adam = GridAdam(device)
    # no tqdm at all without a bar: even a disabled one makes a multiprocessing lock, which a
    # forked worker would leave registered
    bar = tqdm(total=max_epochs, desc=f"probe {task.protocol.name} ({len(runs)} runs at once)",
               unit="epoch") if progress else None
    for epoch in range(1, max_epochs + 1):
        if not groups:
            break
        orders = {seed: torch.randperm(len(train), generator=generators[seed])
                  for seed in sorted({group.seed for group in groups})}
        learning_rates = {index: run.lr for index, run in mine.items()}
        for start in range(0, len(train), batch):
            for seed, order in orders.items():
                rows = order[start:start + batch]
                x, y = train.batch(rows.numpy(), mean, std), targets[rows.to(device)]
                for group in groups:
                    if group.seed == seed:
                        logits = group.forward(x, group.dropout, train=True)
                        group.backward(loss_gradient(task.protocol.kind, logits, y))
            adam.step(groups, learning_rates)
        groups = _end_epoch(task, groups, runs, valid, mean, std, epoch, patience, fps, config, monitor_name)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    results = _final_scores(task, mine, valid, test, mean, std, fps, config)
    return results, {(run.layer, run.learning_rate, run.seed): run.curve for run in mine.values()}


def share(groups: list[ProbeGroup], index: int, count: int) -> list[ProbeGroup]:
    """Share `index` of `count` of the groups, balanced by cost: weighted-sum groups (their
    layer mix and its backward) first, then round-robin, in build_groups' order otherwise."""
    if count == 1:
        return groups
    ordered = sorted(groups, key=lambda group: group.layer != WEIGHTED)  # stable: weighted first
    return [group for position, group in enumerate(ordered) if position % count == index]


def _end_epoch(task: Task, groups: list[ProbeGroup], runs: list[RunState], valid: GridSplit, mean: Tensor,
               std: Tensor, epoch: int, patience: int, fps: float, config: ProbeConfig,
               monitor_name: str) -> list[ProbeGroup]:
    """Validate every live run, step its scheduler, keep its best weights; drop stopped runs."""
    targets = None if task.protocol.kind == "beats" else item_targets(task, valid.items)  # beats: times per item
    kept = []
    for group, logits in zip(groups, grid_logits(groups, valid, mean, std)):
        with warnings.catch_warnings():  # metric caveats are reported once, at the final scores
            warnings.simplefilter("ignore")
            monitors = epoch_monitors(task, logits, valid, targets, fps, config.beat_decoder)
        going_on = []
        for position, (member, monitor) in enumerate(zip(group.members, monitors)):
            params = {name: value[position] for name, value in group.params.items()}
            if runs[member].end_epoch(epoch, monitor, params, patience):
                going_on.append(position)
        if len(going_on) < len(group.members) and going_on:
            group.keep(going_on)
        if going_on:
            kept.append(group)
    return kept


def epoch_monitors(task: Task, logits: Tensor, split: GridSplit, targets: np.ndarray | None, fps: float,
                   decoder: str) -> list[float]:
    """The validation monitor of each of a group's runs from their (n, R, C) logits: the number
    score_logits gives for metrics[0]. For the plain clip tasks, all n runs at once, from the
    targets computed once per epoch and without the metrics the monitor does not need (MTT's
    average precision): a grid validates every run every epoch."""
    protocol = task.protocol
    plain = type(task).score is Task.score and not protocol.song_ensemble
    if plain and protocol.kind in ("multiclass", "multilabel"):
        outputs = item_outputs(logits, split.row_item, len(split.items))  # (n, items, C)
        monitor = metrics.accuracy_each if protocol.kind == "multiclass" else metrics.roc_auc_macro_each
        return monitor(targets, outputs).tolist()
    return [score_logits(task, one, split.row_item, split.items, fps, decoder)[0][protocol.metrics[0]]
            for one in logits]


def _final_scores(task: Task, runs: dict[int, RunState], valid: GridSplit, test: GridSplit, mean: Tensor,
                  std: Tensor, fps: float, config: ProbeConfig) -> dict[int, RunResult]:
    """Each run's best-validation weights scored on valid and test, as train_run does; by run index."""
    members: dict[tuple, list[int]] = {}
    for index, run in runs.items():
        members.setdefault((run.seed, run.layer), []).append(index)
    groups = [ProbeGroup(layer, seed, indices, {name: torch.stack([runs[i].best_params[name] for i in indices])
                                                 for name in runs[indices[0]].best_params}, trainable=False)
              for (seed, layer), indices in members.items()]
    valid_logits, test_logits = ({member: logits for group, stacked in zip(groups, grid_logits(groups, split, mean, std))
                                  for member, logits in zip(group.members, stacked)} for split in (valid, test))
    results = {}
    for index, run in runs.items():
        valid_scores, extra = score_logits(task, valid_logits[index], valid.row_item, valid.items, fps,
                                           config.beat_decoder)
        test_scores, _ = score_logits(task, test_logits[index], test.row_item, test.items, fps, config.beat_decoder,
                                      ensemble=extra.get("ensemble"))
        if "mix" in run.best_params:
            extra["layer_weights"] = torch.softmax(run.best_params["mix"].float().cpu(), 0).tolist()
        results[index] = RunResult(layer=run.layer, learning_rate=run.learning_rate, seed=run.seed, epochs=run.epochs,
                                   best_epoch=run.best_epoch, valid=valid_scores, test=test_scores, extra=extra)
    return results
