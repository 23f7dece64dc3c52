"""Checkpoint I/O for the pre-training loop, and the state the loop carries between updates.

A checkpoint is a directory that transformers loads (the backbone) plus `training_state/`
(heads, EMA teacher, optimizer, scheduler, RNG, data position, resolved run config). It is
written through `musicssl.atomic.atomic_path`, so a killed run never leaves half a checkpoint;
a run directory that holds checkpoints resumes from the newest intact one (`find_resumable`:
a file truncated by a full disk or a copy is found before any weight is loaded, and an older
checkpoint is used instead, saying so). `RUN/initial/` holds the backbone before the first
update, in the same format: the run's own random-init control.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from musicssl.atomic import atomic_path
from musicssl.interop.huggingface import export_pretrained, from_hf_state_dict, read_hf_weights
from musicssl.interop.musicfm import export_muq, muq_encoder_weights
from musicssl.models.backbone import Backbone
from musicssl.models.musicfm import MelConformer

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
        if not isinstance(values, dict):
            raise ValueError(f"{source}: expected a JSON object of trainer state, got {type(values).__name__}")
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


def save_initial(run_dir: Path, backbone: Backbone | MelConformer, export=None) -> Path:
    """Export the backbone as initialised, before any update, to `run_dir/initial` (written
    once). Probing it next to the trained checkpoints isolates what pre-training added: the two
    differ only by the updates, not by the random draw. `export`: the task's format (`exporter`)."""
    final = run_dir / INITIAL
    if not final.is_dir():
        with atomic_path(final) as partial:
            (export or export_backbone)(backbone, partial)
    return final


def export_backbone(backbone: Backbone | MelConformer, directory: Path) -> None:
    """Our backbones as transformers directories; MusicFM's encoder in MuQ's layout (the format
    published for that encoder that keeps a config; interop/musicfm.py)."""
    (export_muq if isinstance(backbone, MelConformer) else export_pretrained)(backbone, directory)


def exporter(task: PretrainTask) -> Callable[[Backbone | MelConformer, Path], object]:
    """How a task's backbone is written: its own format where it has one (MERT's: `MERTTask.export`,
    a MERT-v1 directory), else `export_backbone`. The checkpoint's weight names are transformers'
    either way, so `load_checkpoint` reads both."""
    return getattr(task, "export", export_backbone)


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
    exporter(task)(task.backbone(), partial)
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
    """Restore everything `save_checkpoint` wrote; never unpickles (weights_only=True). A file that
    does not fit this model (another architecture's checkpoint) is an error naming it."""
    state = read_state(path)  # first: an unreadable state fails before any weight is touched
    backbone = task.backbone()
    with _naming(path / "model.safetensors"):
        if isinstance(backbone, MelConformer):
            weights = muq_encoder_weights(path)
        else:
            weights, _ = from_hf_state_dict(read_hf_weights(path), backbone.config.variant, str(path))
        backbone.load_state_dict(weights)
    with _naming(path / STATE / "heads.safetensors"):
        task.load_head_state(load_file(str(path / STATE / "heads.safetensors")))
    with _naming(path / STATE / "optimizer.pt"):
        saved = torch.load(path / STATE / "optimizer.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if scaler is not None and saved["scaler"]:
            scaler.load_state_dict(saved["scaler"])
    torch.set_rng_state(saved["torch_rng"])
    if torch.cuda.is_available() and saved["cuda_rng"]:
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    return state


@contextlib.contextmanager
def _naming(file: Path):
    """torch's key and shape mismatches are RuntimeErrors that name no file: name it, in one line."""
    try:
        yield
    except (RuntimeError, KeyError) as error:
        raise ValueError(f"{file} does not fit the model being resumed: {str(error).splitlines()[0]}") from None


# ---------------------------------------------------------------------------------------------
# finding a checkpoint to resume from

CHECKPOINT_FILES = ("config.json", "model.safetensors", f"{STATE}/{TRAINER_JSON}", f"{STATE}/heads.safetensors",
                    f"{STATE}/optimizer.pt")
OPTIMIZER_KEYS = {"optimizer", "scheduler", "scaler", "torch_rng", "cuda_rng"}
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def is_checkpoint(path: Path) -> bool:
    return (path / STATE / TRAINER_JSON).is_file()


def damage(path: Path) -> str | None:
    """What is wrong with checkpoint `path` ("model.safetensors: truncated"), or None if every
    file is there and opens: safetensors headers against the file sizes, JSON that parses,
    optimizer.pt through torch.load(weights_only=True, mmap=True) (no tensor is read)."""
    for name in CHECKPOINT_FILES:
        file = path / name
        if not file.is_file():
            return f"{name}: missing"
        try:
            problem = _file_damage(file)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as error:
            problem = str(error).splitlines()[0] or type(error).__name__
        if problem:
            return f"{name}: {problem}"
    return None


def _file_damage(file: Path) -> str | None:
    if file.suffix == ".safetensors":
        return _safetensors_damage(file)
    if file.suffix == ".json":
        text = file.read_text(encoding="utf-8")
        try:
            TrainState.from_json(text, file.name) if file.name == TRAINER_JSON else json.loads(text)
        except ValueError as error:
            return str(error).removeprefix(f"{file.name}: ")
        return None
    try:
        saved = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        return "truncated or not a torch file"
    missing = OPTIMIZER_KEYS - set(saved) if isinstance(saved, dict) else OPTIMIZER_KEYS
    return f"no {sorted(missing)}" if missing else None


def _safetensors_damage(file: Path) -> str | None:
    """The header (8-byte length, JSON) must describe exactly the bytes the file holds."""
    size = file.stat().st_size
    with file.open("rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else size
        if 8 + length > size:
            return "truncated"
        header = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    end = 0
    for name, entry in header.items():
        start, stop = entry["data_offsets"]
        expected = math.prod(entry["shape"]) * _DTYPE_BYTES.get(entry["dtype"], 0)
        if stop - start != expected and entry["dtype"] in _DTYPE_BYTES:
            return f"tensor {name}: shape {entry['shape']} does not match its {stop - start} bytes"
        end = max(end, stop)
    if 8 + length + end > size:
        return "truncated"
    return None


def find_resumable(run_dir: Path, say) -> Path | None:
    """The newest intact checkpoint of `run_dir` (None if it has none); each newer damaged one is
    reported through `say` in one line. Damaged ones only: a ValueError naming their files."""
    checkpoints = checkpoint_dirs(run_dir)
    damaged: list[tuple[Path, str]] = []
    for path in reversed(checkpoints):
        problem = damage(path)
        if problem is None:
            for bad, what in damaged:
                say(f"{bad} is damaged ({what}); resuming from {path.name}")
            return path
        damaged.append((path, problem))
    if damaged:
        listed = "; ".join(f"{path.name}/{what}" for path, what in damaged)
        raise ValueError(f"{run_dir / CHECKPOINTS}: no intact checkpoint to resume from ({listed}); "
                         "move them away to start the run over")
    return None


def check_resumable(path: Path) -> Path:
    """`--resume PATH`: a checkpoint folder, intact (the user chose it: no fallback)."""
    if not is_checkpoint(path):
        raise ValueError(f"--resume {path}: not a checkpoint folder; a checkpoint (RUN/checkpoints/step_N) "
                         f"holds {', '.join(CHECKPOINT_FILES)}")
    problem = damage(path)
    if problem:
        raise ValueError(f"--resume {path}: damaged ({problem})")
    return path
