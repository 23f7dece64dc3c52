"""A cheap collapse alarm for pre-training: is one Transformer layer losing its directions?

Tiny MusicHuBERT runs have been seen to sit for thousands of updates with layers 1-4 at an
effective rank of 2-5 (docs/learning_curve.md), and whether a run escapes that phase depended
on the seed and on the CPU's rounding. The pretext accuracy alone does not show it early. So
every `every` updates the trainer forwards one fixed batch through the backbone (eval mode, no
gradient, no random draw: the training stream is untouched and resume stays bit-exact) and
logs, for the frames of one layer:

- `collapse/effective_rank`: exp of the entropy of the normalised singular values of the
  centred frames (musicssl.evaluate.diagnostics), 1 = one direction holds everything;
- `collapse/top_share`: the variance share of the first principal direction.

The batch is the first micro-batch the run ever trained on, stored in `RUN/collapse_batch.npy`,
so a resumed run measures the same audio. Measurements ride on the regular log lines (at the
logged steps that are multiples of `every`), so every line of log.jsonl keeps the training
numbers. The random init is measured before the first update and logged once, on the first
line, as `collapse/init_effective_rank` / `collapse/init_top_share`: it is the reference (a
resumed run reads it back from log.jsonl). A layer whose effective rank stays below
`floor_fraction` of it for `patience` checks in a row gets one warning line, and one more line
when it recovers.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from musicssl.atomic import atomic_path
from musicssl.evaluate.diagnostics import effective_rank
from musicssl.models.backbone import Backbone

BATCH_FILE = "collapse_batch.npy"


@dataclass(frozen=True)
class CollapseConfig:
    every: int = 100  # updates between measurements; 0 = off
    layer: int = -1  # hidden state index (0 = the Transformer's input); -1 = the middle layer
    max_items: int = 4  # crops of the fixed batch (enough frames for a rank of up to min(frames, D))
    floor_fraction: float = 0.15  # collapsed: effective rank below this share of the reference
    patience: int = 3  # checks in a row before the warning

    def __post_init__(self) -> None:
        if self.every < 0 or self.max_items < 1 or self.patience < 1 or not 0 < self.floor_fraction < 1:
            raise ValueError(f"collapse config out of range: {self}")


def layer_statistics(frames: Tensor) -> dict[str, float]:
    """frames: (N, D), any float dtype -> effective rank and top-1 variance share, in float64."""
    x = frames.double().cpu().numpy()
    singular = np.linalg.svd(x - x.mean(0), compute_uv=False)
    variance = singular ** 2
    share = float(variance[0] / variance.sum()) if variance.sum() > 0 else 1.0
    return {"collapse/effective_rank": effective_rank(singular), "collapse/top_share": share}


class CollapseMonitor:
    def __init__(self, config: CollapseConfig, run_dir: Path, enabled: bool, resumed: bool = False):
        self.config = config
        self.path = run_dir / BATCH_FILE
        self.enabled = enabled and config.every > 0
        self.wav: Tensor | None = None  # (B, n) float32
        # a resumed run keeps the reference its random init gave (the step-0 line of log.jsonl)
        self.reference: float | None = _logged_reference(run_dir / "log.jsonl") if resumed else None
        self.low_in_row = 0
        self.warned = False
        self.init: dict[str, float] = {}  # logged once, on the next log line

    def remember(self, micro_batches: list) -> bool:
        """Keep the run's fixed batch: the stored one, else (new run) the crops of the first
        micro-batch that has any. True when the batch was taken just now."""
        if not self.enabled or self.wav is not None:
            return False
        if self.path.exists():
            self.wav = torch.from_numpy(np.load(self.path, allow_pickle=False))
            return True
        batch = next((b for b in micro_batches if b is not None), None)
        if batch is None:
            return False
        self.wav = batch.wav[: self.config.max_items].detach().float().cpu().contiguous()  # (B, n)
        with atomic_path(self.path) as partial, partial.open("wb") as handle:
            np.save(handle, self.wav.numpy(), allow_pickle=False)
        return True

    def measure_init(self, backbone: Backbone, device: torch.device) -> None:
        """The random init's statistics: the alarm's reference, logged with the first log line."""
        values = self.measure(backbone, device)
        self.init = {"collapse/init_effective_rank": values["collapse/effective_rank"],
                     "collapse/init_top_share": values["collapse/top_share"]}

    def take_init(self) -> dict[str, float]:
        init, self.init = self.init, {}
        return init

    def due(self, step: int) -> bool:
        return self.enabled and self.wav is not None and step % self.config.every == 0

    @torch.no_grad()
    def measure(self, backbone: Backbone, device: torch.device) -> dict[str, float]:
        """The statistics of the monitored layer on the fixed batch; warns on a lasting collapse."""
        was_training = backbone.training
        backbone.eval()
        try:  # the stored crops are model input already (the data pipeline standardised them if needed)
            output = backbone(self.wav.to(device))
        finally:
            backbone.train(was_training)
        layers = output.layers  # L+1 x (B, T, D)
        index = len(layers) // 2 if self.config.layer < 0 else self.config.layer
        values = layer_statistics(layers[index].reshape(-1, layers[index].shape[-1]))  # (B*T, D)
        self._alarm(values["collapse/effective_rank"], index)
        return values | {"collapse/layer": float(index)}

    def _alarm(self, rank: float, index: int) -> None:
        if self.reference is None:
            self.reference = rank
            return
        floor = self.config.floor_fraction * self.reference
        self.low_in_row = self.low_in_row + 1 if rank < floor else 0
        if self.low_in_row == self.config.patience and not self.warned:
            self.warned = True
            print(f"warning: layer {index} looks collapsed: effective rank {rank:.1f}, below "
                  f"{self.config.floor_fraction:g} x its first measured {self.reference:.1f} for "
                  f"{self.config.patience} checks in a row (log.jsonl collapse/*; docs/learning_curve.md)",
                  file=sys.stderr)
        elif self.warned and rank >= floor:
            self.warned = False
            print(f"layer {index} recovered: effective rank {rank:.1f}", file=sys.stderr)



def _logged_reference(log_path: Path) -> float | None:
    if not log_path.exists():
        return None
    for line in log_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line cut by a kill: the rest of the log still counts
            continue
        if "collapse/init_effective_rank" in record:
            return float(record["collapse/init_effective_rank"])
    return None
