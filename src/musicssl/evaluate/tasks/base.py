"""What a task declares: its protocol (label kind, windowing, metrics, probe schedule), how to
list its labelled items per split from the dataset as it ships, and how to score predictions.

Every dataset file in this folder defines one `Task` subclass (or several, for datasets with
several tasks) and registers it in `tasks/__init__.py`. Adding a dataset is adding one file.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

Kind = Literal["multiclass", "multilabel", "regression", "beats"]
SPLITS = ("train", "valid", "test")


class DatasetError(ValueError):
    """The dataset on disk does not match what the task expects; the message says where the
    missing piece comes from."""


@dataclass(frozen=True)
class Item:
    """One labelled example, as the protocol defines it.

    target: multiclass -> class index (int); multilabel -> (C,) float32 of 0/1;
    regression -> (C,) float32; beats -> (n,) float64 beat times in seconds from `offset`.
    """

    key: str                      # unique within the task and stable: cache rows and results are keyed by it
    path: Path                    # the audio file
    target: int | np.ndarray
    group: str = ""               # aggregation unit above the item (GiantSteps: the song); "" = the item itself
    offset: float = 0.0           # seconds into the file where the item starts
    duration: float | None = None  # seconds to read from `offset`; None = to the end of the file

    @property
    def group_key(self) -> str:
        return self.group or self.key


@dataclass(frozen=True)
class Protocol:
    """How a task is probed. Defaults follow MARBLE v1's task configs (docs/evaluation.md §1, §2)."""

    name: str                          # registry name, e.g. "gtzan"
    title: str                         # column title in result tables, e.g. "GTZAN"
    kind: Kind
    outputs: tuple[str, ...]           # class / tag / regression-output names, in target order
    metrics: tuple[str, ...]           # names `Task.score` returns; metrics[0] is the validation monitor
    window_seconds: float | None = None  # non-overlapping windows, one forward pass each; None = whole item
    min_window_seconds: float = 1.0    # a last window shorter than this is dropped (kept if it is the only one)
    crop_seconds: float | None = None  # use only the first N seconds of each item
    plateau_patience: int = 3          # ReduceLROnPlateau(factor 0.5) patience, epochs
    early_stop_patience: int = 10      # epochs without a better validation monitor
    max_epochs: int = 100
    song_ensemble: bool = False        # GiantSteps: song decision by an ensemble chosen on validation
    # Tasks that read the same audio items (same keys, same files) under one name share one feature
    # cache, so the audio goes through the model once (NSynth instrument and pitch). None: the task's.
    feature_set: str | None = None

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def replace(self, **changes) -> "Protocol":
        return dataclasses.replace(self, **changes)


@dataclass
class Splits:
    """Items per split, plus what the loader noticed and left out (reported, never silent)."""

    train: list[Item]
    valid: list[Item]
    test: list[Item]
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, split: str) -> list[Item]:
        if split not in SPLITS:
            raise KeyError(f"unknown split {split!r}: expected one of {SPLITS}")
        return getattr(self, split)

    def sizes(self) -> dict[str, int]:
        return {split: len(self[split]) for split in SPLITS}


class Task(ABC):
    """A dataset-specific task. Subclasses set `protocol`, `default_dir` and `source`."""

    protocol: Protocol
    default_dir: str   # folder name under a benchmark --data-root, e.g. "GTZAN"
    source: str        # where the dataset comes from: printed in errors about missing files

    @abstractmethod
    def load(self, root: Path, **options: str) -> Splits:
        """List the items of every split from the dataset at `root`, laid out as it ships.
        `options` are task-specific (e.g. splits_dir=...); unknown ones raise DatasetError."""

    def score(self, targets: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
        """Clip-level scores. targets: (N,) class ids or (N, C); outputs: (N, C) logits or
        regression values, one row per item (windows already averaged)."""
        from musicssl.evaluate import metrics

        kind = self.protocol.kind
        if kind == "multiclass":
            return {"accuracy": metrics.accuracy(targets, outputs)}
        if kind == "multilabel":
            return {"roc_auc": metrics.roc_auc_macro(targets, outputs), "ap": metrics.average_precision_macro(targets, outputs)}
        if kind == "regression":
            if len(targets) < 2:  # sklearn returns a bare NaN, not one score per output
                raise ValueError(f"task {self.protocol.name}: R2 needs at least 2 items, got {len(targets)}")
            scores = metrics.r2_per_output(targets, outputs)
            result = {"r2": float(np.mean(scores))}
            result.update({f"r2_{name}": float(value) for name, value in zip(self.protocol.outputs, scores)})
            return result
        # kind == "beats": scored from decoded beat times (probe.score_split -> metrics.beat_f_measure),
        # never from clip-level outputs, so reaching here is a caller error.
        raise ValueError(f"{type(self).__name__}: kind {kind!r} has no clip-level score; beat tasks are "
                         "scored from decoded beat times (probe.score_split)")


def split_problem(task: Task, splits: Splits, unreadable: Collection[str] = ()) -> str | None:
    """Why these splits cannot be probed and scored, or None: a split without an item left once
    the `unreadable` keys are taken out, or, for regression, with fewer than 2 (R2 is undefined).
    Checked before probing, so a tiny or damaged dataset is reported, never a crash mid-grid."""
    needed = 2 if task.protocol.kind == "regression" else 1
    for split in SPLITS:
        usable = sum(item.key not in unreadable for item in splits[split])
        if usable < needed:
            lost = len(splits[split]) - usable
            reason = " (R2 needs at least 2)" if needed == 2 else ""
            return (f"{split} split has {usable} usable item(s){reason}"
                    + (f", {lost} of {len(splits[split])} unreadable" if lost else ""))
    return None


def check_options(task: Task, options: dict[str, str], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise DatasetError(f"task {task.protocol.name}: unknown option(s) {unknown}; allowed: {list(allowed)}")


def require_file(path: Path, what: str, source: str) -> Path:
    """A clear error for a missing dataset file: what it is and where it comes from."""
    if not path.is_file():
        raise DatasetError(f"{path}: {what} not found. It comes from {source}")
    return path


def left_out_note(what: str, names: Sequence[str], limit: int = 5) -> str:
    """A note for files a loader left out: how many, and the first few names."""
    shown = ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
    return f"{len(names)} {what}, left out: {shown}"


def check_split_sizes(task: Task, splits: Splits, expected: dict[str, int], strict: bool = False) -> None:
    """Compare split sizes with the protocol's published counts. A full dataset that differs is
    a note (the user sees it in the report); strict=True makes it an error."""
    found = splits.sizes()
    if found == expected:
        return
    message = (f"{task.protocol.name}: split sizes {found} differ from the protocol's {expected} "
               f"(missing or extra files?)")
    if strict:
        raise DatasetError(message)
    splits.notes.append(message)


@dataclass(frozen=True)
class LayoutExample:
    """One example to write in a dataset's shipped layout (`write_layout` of each task module):
    used by the synthetic benchmark generator (`data/synth.py`) and by the tests' fake datasets.

    label: multiclass -> class name (str); multilabel -> tuple of tag names; regression -> dict
    output name -> value; beats -> (n,) beat times in seconds. `split` is where the example
    should land under the task's protocol; writers choose names, artists and list files so the
    real loader puts it there (where the protocol's split is random, as close as it allows).
    `extra` carries dataset-specific fields (e.g. "artist", "singer", "downbeats").
    """

    name: str
    audio: np.ndarray             # (N,) float32 mono
    sample_rate: int
    split: str
    label: object
    extra: dict = field(default_factory=dict)
