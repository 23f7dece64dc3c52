"""Checkpoint I/O for the pre-training loop, and the state the loop carries between updates.

A checkpoint is a directory that transformers loads (the backbone) plus `training_state/`
(heads, EMA teacher, optimizer, scheduler, RNG, data position, resolved run config). It is
written through `musicssl.atomic.atomic_path`, so a killed run never leaves half a checkpoint;
a run directory that holds checkpoints resumes from the newest one. `RUN/initial/` holds the
backbone before the first update, in the same format: the run's own random-init control.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from musicssl.atomic import atomic_path
from musicssl.interop.huggingface import export_pretrained, from_hf_state_dict, read_hf_weights
from musicssl.models.backbone import Backbone

if TYPE_CHECKING:  # the trainer imports this module; the protocol is only a type here
    from musicssl.train.trainer import PretrainTask

CHECKPOINTS = "checkpoints"
INITIAL = "initial"  # the backbone before the first update: a run's own random-init control
STATE = "training_state"
TRAINER_JSON = "trainer.json"


@dataclass
class TrainState:
    """The loop's counters, saved as `training_state/trainer.json`. Mutable: the loop advances
    it in place once per update, and a checkpoint writes a snapshot."""

    step: int = 0  # optimizer steps taken (an update with a non-finite loss is not one)
    updates_consumed: int = 0  # the loader's position: updates read, stepped or not
    skipped_items: int = 0  # unreadable audio items, summed over ranks
    nonfinite_steps: int = 0
    # Absent from checkpoints written before it was counted: they resume from 0.
    whole_file_reads: int = 0
    run_config: dict[str, Any] = field(default_factory=dict)  # to_dict(run): resume's architecture

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str | Path) -> TrainState:
        """Read `to_json`'s output, or the string-keyed dict earlier versions wrote (same keys,
        some missing); a key this version does not know is an error naming `source`."""
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{source}: not valid JSON ({error})") from None
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"{source}: unknown trainer state keys {unknown}; "
                             "was it written by a newer musicssl?")
        return cls(**values)


def read_state(path: Path) -> TrainState:
    """The trainer state stored in checkpoint `path`."""
    state_file = path / STATE / TRAINER_JSON
    return TrainState.from_json(state_file.read_text(), state_file)


def read_run_config(path: Path) -> dict:
    """The resolved run config stored in a checkpoint (resume takes the architecture from here)."""
    return read_state(path).run_config


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """The run's checkpoints, oldest first (a temporary `.step_...` sibling is not one)."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_")),
                  key=lambda p: int(p.name.split("_")[1]))


def save_initial(run_dir: Path, backbone: Backbone) -> Path:
    """Export the backbone as initialised, before any update, to `run_dir/initial` (written
    once). Probing it next to the trained checkpoints isolates what pre-training added: the two
    differ only by the updates, not by the random draw."""
    final = run_dir / INITIAL
    if not final.is_dir():
        with atomic_path(final) as partial:
            export_pretrained(backbone, partial)
    return final


def save_checkpoint(run_dir: Path, task: PretrainTask, optimizer, scheduler, scaler, state: TrainState,
                    keep: int) -> Path:
    """Write `checkpoints/step_N` whole, then delete all but the newest `keep` (0 = keep all)."""
    final = run_dir / CHECKPOINTS / f"step_{state.step:08d}"
    with atomic_path(final) as partial:
        _fill_checkpoint(partial, task, optimizer, scheduler, scaler, state)
    for old in checkpoint_dirs(run_dir)[:-keep] if keep else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fill_checkpoint(partial: Path, task: PretrainTask, optimizer, scheduler, scaler, state: TrainState) -> None:
    export_pretrained(task.backbone(), partial)
    (partial / STATE).mkdir()
    save_file({k: v.detach().contiguous() for k, v in task.head_state().items()},
              str(partial / STATE / "heads.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {},
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
               partial / STATE / "optimizer.pt")
    (partial / STATE / TRAINER_JSON).write_text(state.to_json())


def load_checkpoint(path: Path, task: PretrainTask, optimizer, scheduler, scaler) -> TrainState:
    """Restore everything `save_checkpoint` wrote; never unpickles (weights_only=True)."""
    state = read_state(path)  # first: an unreadable state fails before any weight is touched
    backbone = task.backbone()
    weights, _ = from_hf_state_dict(read_hf_weights(path), backbone.config.variant, str(path))
    backbone.load_state_dict(weights)
    task.load_head_state(load_file(str(path / STATE / "heads.safetensors")))
    saved = torch.load(path / STATE / "optimizer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    if scaler is not None and saved["scaler"]:
        scaler.load_state_dict(saved["scaler"])
    torch.set_rng_state(saved["torch_rng"])
    if torch.cuda.is_available() and saved["cuda_rng"]:
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    return state
