"""The probe: an MLP on frozen, cached features, selected over layers and learning rates on
the validation split (MARBLE v1 constrained track, docs/evaluation.md §1.2–1.5).

One run = one (layer, learning rate, seed): Linear(D, 512) -> ReLU -> Dropout(0.2) ->
Linear(512, C), Adam, batch 64, ReduceLROnPlateau on the validation monitor (factor 0.5),
early stopping, and the best-validation weights scored on valid and test. Windows are separate
training examples carrying their item's label; at evaluation the window logits of an item are
averaged (MARBLE averages logits, §1.5). GiantSteps additionally decides per song with the
ensemble strategy that was best on validation (§2.2). Beats: a per-frame 2-class MLP, frames
within ±`beat_widen` frames of a beat are positive in training only (§2.9); activations are
decoded to beat times with the DBN for the reported scores.

Layer "weighted" is a softmax-weighted sum of layers 1..L (layer 0 excluded), weights drawn
from N(0, 1) and learnt with the probe (MARBLE's `layer: all`). `layer_weight_init="zeros"`
starts every seed from the plain mean of the layers instead (SUPERB's choice): on small
datasets the weights hardly move from their start, and N(0, 1) then gives each seed a different
random mixture of layers.

The protocol is shared by the two trainers that probe.py chooses between: probe_grid.py (all
runs of the grid at once, one batched model) and probe.train_run (one run alone, the reference
the grid is tested against).

Deviation, on purpose: features are standardised with the training split's mean and std per
dimension (per layer). It is affine, so an MLP could learn it, but it lets one learning-rate
grid serve sources whose scales differ by orders of magnitude (MFCC statistics vs. layer-normed
Transformer states).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from musicssl.evaluate import metrics
from musicssl.evaluate.features import CachedFeatures
from musicssl.evaluate.tasks.base import Item, Task

LEARNING_RATES = (5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2)  # MARBLE paper, Appendix A
WEIGHTED = "weighted"
ENSEMBLES = ("vote", "max_logit", "mean_logit", "mean_softmax")  # GiantSteps song decisions (§2.2)
# Start of the "weighted" layer logits: N(0, 1) as MARBLE's normalized_weight_sum, or zeros (the
# plain mean of the layers, as SUPERB's weighted sum in s3prl: the same for every seed).
LAYER_WEIGHT_INITS = {"normal": torch.randn, "zeros": torch.zeros}


@dataclass(frozen=True)
class ProbeConfig:
    hidden_size: int = 512             # MARBLE: hidden_layer_sizes [512]
    dropout: float = 0.2               # MARBLE: dropout_p 0.2
    batch_size: int = 64               # MARBLE: batch 64 (beats: 64 crops of 10 s worth of frames)
    learning_rates: tuple[float, ...] = LEARNING_RATES
    layers: tuple[int | str, ...] | None = None  # None: every layer, plus "weighted" if the source has > 1
    seeds: tuple[int, ...] = (1234,)   # MARBLE: pl.seed_everything(1234), one run per config
    max_epochs: int | None = None      # None: the task protocol's (100; NSynth 50)
    early_stop_patience: int | None = None  # None: the protocol's
    plateau_patience: int | None = None     # None: the protocol's
    plateau_factor: float = 0.5        # MARBLE ReduceLROnPlateau factor
    beat_widen: int = 1                # frames either side of a beat also positive in training
    beat_crop_seconds: float = 10.0    # MARBLE trains beats on 10-s crops: sets frames per batch
    beat_decoder: str = "dbn"          # "dbn" (madmom's DBN, MARBLE) or "peaks"
    layer_weight_init: str = "normal"  # "weighted" layer logits: "normal" N(0, 1) (MARBLE) or "zeros"
    device: str | None = None          # None: cuda if present, else cpu (as extraction)
    # True: every (layer, lr, seed) run of the grid trained at once (probe_grid.py), the same
    # protocol per run; False: one run after another (the reference the batched path is tested on)
    batched: bool = True
    # batched grid on the CPU: forked worker processes sharing its groups (None: one per torch
    # thread under Linux, else 1; on an accelerator always 1; probe_grid.grid_workers)
    workers: int | None = None

    def __post_init__(self):
        if self.layer_weight_init not in LAYER_WEIGHT_INITS:
            raise ValueError(f"layer_weight_init must be one of {', '.join(LAYER_WEIGHT_INITS)}, "
                             f"got {self.layer_weight_init!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1 (or None: automatic), got {self.workers}")

    def replace(self, **changes) -> "ProbeConfig":
        return dataclasses.replace(self, **changes)

    def torch_device(self) -> torch.device:
        return torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))


class MLPProbe(nn.Module):
    def __init__(self, dim: int, num_outputs: int, hidden: int, dropout: float, weighted_layers: int = 0,
                 layer_weight_init: str = "normal"):
        super().__init__()
        init = LAYER_WEIGHT_INITS[layer_weight_init]
        self.layer_weights = nn.Parameter(init(weighted_layers)) if weighted_layers else None
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_outputs))

    def forward(self, x: Tensor) -> Tensor:
        if self.layer_weights is not None:  # x: (B, K, D) -> (B, D)
            x = torch.einsum("k,bkd->bd", torch.softmax(self.layer_weights, 0), x)
        return self.mlp(x)  # (B, C)


@dataclass
class SplitData:
    """Rows of one split for one layer choice, standardised, with per-row targets."""

    x: Tensor                  # (R, D) or (R, K, D)
    y: Tensor                  # (R,) long | (R, C) float
    row_item: np.ndarray       # (R,) item position of each row
    items: list[Item]


@dataclass
class RunResult:
    layer: int | str
    learning_rate: float
    seed: int
    epochs: int
    best_epoch: int
    valid: dict[str, float]
    test: dict[str, float]
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------- data


def frame_targets(item: Item, num_frames: int, fps: float, widen: int) -> np.ndarray:
    """(T,) 0/1 beat labels on the centred frame grid: frame round(t * fps), ± widen frames."""
    labels = np.zeros(num_frames, dtype=np.int64)
    beats = np.round(np.asarray(item.target, dtype=np.float64) * fps).astype(np.int64)
    for shift in range(-widen, widen + 1):
        index = beats + shift
        labels[index[(index >= 0) & (index < num_frames)]] = 1
    return labels


def row_targets(task: Task, cached: CachedFeatures, fps: float, widen: int) -> tuple[Tensor, np.ndarray]:
    """(targets of every row: (R,) long | (R, C) float, (R,) item position of every row)."""
    row_item = cached.item_index()
    kind = task.protocol.kind
    if kind == "beats":
        y = np.concatenate([frame_targets(item, count, fps, widen)
                            for item, (_, count) in zip(cached.items, cached.spans)])
        return torch.from_numpy(y), row_item
    if kind == "multiclass":
        return torch.tensor([int(item.target) for item in cached.items], dtype=torch.long)[row_item], row_item
    targets = np.stack([np.asarray(item.target, dtype=np.float32) for item in cached.items])
    return torch.from_numpy(targets)[torch.from_numpy(row_item)], row_item


def split_data(task: Task, cached: CachedFeatures, fps: float, widen: int,
               mean: Tensor, std: Tensor) -> SplitData:
    y, row_item = row_targets(task, cached, fps, widen)
    x = (torch.from_numpy(np.asarray(cached.rows)).float() - mean) / std
    return SplitData(x=x, y=y, row_item=row_item, items=list(cached.items))


def rows_tensor(rows: np.ndarray) -> Tensor:
    """A CPU tensor of cached rows. Rows of a read-only memory map are copied first: torch warns
    of writes to read-only memory (none are made here, but the warning would reach the user)."""
    rows = np.ascontiguousarray(rows)
    return torch.from_numpy(rows if rows.flags.writeable else rows.copy())


def standardiser(train_rows: np.ndarray, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Per-dimension (and per-layer) mean and std (unbiased, as torch.std) of the training rows,
    float16 or float32, memory-mapped or not. Accumulated in float64 over chunks of rows: no
    float32 copy of the table is made, and the sums of ~10^5 rows lose nothing to rounding."""
    if len(train_rows) < 2:
        raise ValueError(f"the training split has {len(train_rows)} feature rows: a probe needs at least 2")
    def chunks():  # float64 tensors (torch's reductions use every thread; numpy's float16 -> float64 one)
        for start in range(0, len(train_rows), chunk):
            yield rows_tensor(train_rows[start:start + chunk]).double()

    total = torch.zeros(train_rows.shape[1:], dtype=torch.float64)
    for rows in chunks():
        total += rows.sum(0)
    mean = total / len(train_rows)
    squares = torch.zeros_like(mean)
    for rows in chunks():
        squares += rows.sub_(mean).square_().sum(0)
    std = (squares / (len(train_rows) - 1)).sqrt_()
    return mean.float(), std.float().clamp_min(1e-6)


# ---------------------------------------------------------------------------- evaluation


def item_outputs(logits: Tensor, row_item: np.ndarray, num_items: int) -> np.ndarray:
    """Average the rows (windows) of each item: (R, C) -> (num_items, C), or (P, R, C) -> (P,
    num_items, C) for P probes at once."""
    index = torch.from_numpy(row_item)
    sums = torch.zeros(*logits.shape[:-2], num_items, logits.shape[-1]).index_add_(-2, index, logits)
    counts = torch.bincount(index, minlength=num_items).clamp_min(1)
    return (sums / counts[:, None]).numpy()


def item_targets(task: Task, items: Sequence[Item]) -> np.ndarray:
    if task.protocol.kind == "multiclass":
        return np.array([int(item.target) for item in items])
    return np.stack([np.asarray(item.target, dtype=np.float32) for item in items])


def song_ensembles(outputs: np.ndarray, targets: np.ndarray, items: Sequence[Item]) -> dict[str, tuple]:
    """GiantSteps: per song, four decisions over its clips' logits. Returns strategy ->
    (song scores (S, C) whose argmax is the decision, song targets (S,))."""
    groups: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(item.group_key, []).append(index)
    song_targets = np.array([targets[indices[0]] for indices in groups.values()])
    decisions = {name: [] for name in ENSEMBLES}
    for indices in groups.values():
        logits = outputs[indices]  # (n_clips, C)
        votes = np.bincount(logits.argmax(1), minlength=logits.shape[1]).astype(np.float64)
        # ties in the vote go to the class with the larger mean logit
        decisions["vote"].append(votes + 1e-6 * _softmax(logits.mean(0)))
        decisions["max_logit"].append(logits.max(0))
        decisions["mean_logit"].append(logits.mean(0))
        decisions["mean_softmax"].append(_softmax(logits).mean(0))
    return {name: (np.stack(rows), song_targets) for name, rows in decisions.items()}


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def decode_beats(sequences: Sequence[np.ndarray], fps: float, decoder: str) -> list[np.ndarray]:
    """Beat times of each item's (T_i,) activations. The DBN decodes equal-length clips in one
    batched Viterbi pass (the same beats, 2.5x faster over a probe's validation clips)."""
    from musicssl.evaluate import beats

    if decoder == "dbn":
        return beats.dbn_beats_batch(sequences, fps)
    if decoder == "peaks":
        return [beats.peak_pick_beats(activations, fps) for activations in sequences]
    raise ValueError(f"unknown beat decoder {decoder!r}: expected 'dbn' or 'peaks'")


def score_split(task: Task, model: nn.Module, data: SplitData, fps: float, decoder: str,
                ensemble: str | None = None) -> tuple[dict[str, float], dict]:
    """Scores of one split; `ensemble` fixes the GiantSteps strategy (None: best on this split,
    which is how validation chooses it). Returns (scores, extra)."""
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = torch.cat([model(chunk.to(device)).cpu() for chunk in torch.split(data.x, 8192)])
    return score_logits(task, logits, data.row_item, data.items, fps, decoder, ensemble)


def score_logits(task: Task, logits: Tensor, row_item: np.ndarray, items: Sequence[Item], fps: float,
                 decoder: str, ensemble: str | None = None) -> tuple[dict[str, float], dict]:
    """Scores of one split from its rows' (R, C) logits (on the CPU); see score_split."""
    if task.protocol.kind == "beats":
        probability = torch.softmax(logits, -1)[:, 1].numpy()
        # an item's frames are contiguous rows: cut at the item boundaries
        per_item = np.split(probability, np.cumsum(np.bincount(row_item, minlength=len(items)))[:-1])
        estimates = decode_beats(per_item, fps, decoder)
        references = [np.asarray(item.target, dtype=np.float64) for item in items]
        return metrics.beat_f_measure(references, estimates), {}
    outputs = item_outputs(logits, row_item, len(items))
    targets = item_targets(task, items)
    if not task.protocol.song_ensemble:
        return task.score(targets, outputs), {}
    per_strategy = {name: task.score(song_targets, song_scores)
                    for name, (song_scores, song_targets) in song_ensembles(outputs, targets, items).items()}
    monitor = task.protocol.metrics[0]
    chosen = ensemble or max(ENSEMBLES, key=lambda name: per_strategy[name][monitor])
    scores = dict(per_strategy[chosen])
    scores.update({f"{monitor}_{name}": values[monitor] for name, values in per_strategy.items()})
    scores["clip_" + monitor] = task.score(targets, outputs)[monitor]
    return scores, {"ensemble": chosen}


# ---------------------------------------------------------------------------- training


def loss_function(kind: str) -> nn.Module:
    return {"multiclass": nn.CrossEntropyLoss(), "beats": nn.CrossEntropyLoss(),
            "multilabel": nn.BCEWithLogitsLoss(), "regression": nn.MSELoss()}[kind]


def plateau_scheduler(optimizer: torch.optim.Optimizer, task: Task, config: ProbeConfig):
    """ReduceLROnPlateau on the validation monitor, as MARBLE (factor 0.5, the protocol's patience)."""
    patience = config.plateau_patience if config.plateau_patience is not None else task.protocol.plateau_patience
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=config.plateau_factor,
                                                      patience=patience)


def schedule(task: Task, config: ProbeConfig, fps: float) -> tuple[int, int, int]:
    """(max epochs, early-stopping patience, rows per batch) of a run of this task."""
    protocol = task.protocol
    max_epochs = config.max_epochs or protocol.max_epochs
    patience = config.early_stop_patience if config.early_stop_patience is not None else protocol.early_stop_patience
    batch = config.batch_size
    if protocol.kind == "beats":  # batches of 64 crops of 10 s, as frames
        batch = int(config.batch_size * config.beat_crop_seconds * fps)
    return max_epochs, patience, batch


def layer_choices(num_layers: int, requested: Sequence[int | str] | None) -> list[int | str]:
    """The layers to probe. A one-layer source (MFCC statistics) has only layer 0, whatever was
    asked for the models it is compared with."""
    if requested is None or num_layers == 1:
        return list(range(num_layers)) + ([WEIGHTED] if num_layers > 2 else [])
    choices = []
    for layer in requested:
        if layer == WEIGHTED:
            if num_layers < 3:
                raise ValueError(f"'weighted' needs at least 2 Transformer layers; this source has {num_layers} states")
            choices.append(layer)
        elif isinstance(layer, int) and -num_layers <= layer < num_layers:
            choices.append(layer % num_layers)
        else:
            raise ValueError(f"layer {layer!r} out of range: this source has layers 0..{num_layers - 1} (or 'weighted')")
    return choices


# ---------------------------------------------------------------------------- selection


@dataclass
class TaskResult:
    """All runs of one (model, task), and the configuration chosen on validation."""

    task: str
    model: str
    monitor: str
    runs: list[RunResult]
    layer: int | str                   # chosen on mean validation monitor over seeds
    learning_rate: float
    valid: dict[str, float]            # mean over seeds of the chosen configuration
    test: dict[str, float]
    test_std: dict[str, float]
    sizes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def mean_scores(runs: Sequence[RunResult], split: str) -> tuple[dict[str, float], dict[str, float]]:
    keys = [key for key, value in getattr(runs[0], split).items() if isinstance(value, (int, float))]
    values = {key: [getattr(run, split)[key] for run in runs] for key in keys}
    return ({key: float(np.mean(v)) for key, v in values.items()},
            {key: float(np.std(v)) for key, v in values.items()})


def select(runs: Sequence[RunResult], monitor: str) -> tuple[int | str, float, list[RunResult]]:
    """The (layer, lr) with the best validation monitor averaged over seeds; ties go to the
    earlier configuration in grid order."""
    configs: dict[tuple, list[RunResult]] = {}
    for run in runs:
        configs.setdefault((run.layer, run.learning_rate), []).append(run)
    best = max(configs, key=lambda key: np.mean([run.valid[monitor] for run in configs[key]]))
    return best[0], best[1], configs[best]
