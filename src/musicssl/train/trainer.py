"""The pre-training loop shared by MusicHuBERT and Music2Vec.

Launch (the same command at every scale; the global batch is fixed by `data.batch_seconds`,
whatever the world size, through gradient accumulation):

    # one process (CPU or one GPU)
    musicssl pretrain musichubert --preset base --data MANIFEST --labels LABELS --out RUN
    # one node, 8 GPUs
    torchrun --standalone --nproc_per_node 8 -m musicssl.cli pretrain musichubert ...
    # 4 nodes x 8 GPUs (run on every node)
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
        -m musicssl.cli pretrain musichubert ...

DDP is detected from torchrun's environment (gloo on CPU, nccl on GPU). Rank 0 alone logs and
writes checkpoints. Losses come back from the model as sums with a sample size (masked
frames); gradients are divided by the global sample size after all micro-batches and ranks
(fairseq's multiply_grads), so one process and N processes take the same step.

Checkpoints (what they hold, how they are written and read back) live in train/checkpoint.py;
the loop carries a `TrainState` and saves it with each one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn

from musicssl.config import to_dict
from musicssl.data.pretrain import Batch, UpdateLoader
from musicssl.models.backbone import Backbone
from musicssl.train.checkpoint import (CHECKPOINTS, TrainState, exporter, load_checkpoint, save_checkpoint,
                                      save_initial)
from musicssl.train.collapse import CollapseConfig, CollapseMonitor
from musicssl.train.interrupt import Interrupted
from musicssl.train.schedules import ScheduleConfig, learning_rate, make_scheduler
from musicssl.train.slurm import torchrun_environment


@dataclass(frozen=True)
class TrainerConfig:
    max_steps: int = 250_000  # the paper's MusicHuBERT length (HuBERT recipe: 400k)
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(
        kind="polynomial", peak_lr=5e-4, warmup_steps=32_000, total_steps=250_000))
    betas: tuple[float, float] = (0.9, 0.98)  # fairseq adam_betas, both recipes
    eps: float = 1e-6
    weight_decay: float = 0.01
    clip_norm: float = 10.0  # HuBERT 10; data2vec none (0 = off)
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16 (with GradScaler)
    checkpoint_every: int = 25_000  # both recipes
    keep_checkpoints: int = 3  # older ones are deleted (0 = keep all)
    log_every: int = 10
    max_nonfinite_in_row: int = 10
    seed: int = 1337  # HuBERT recipe
    # Ours: the CNN feature extractor's learning rate as a fraction of the schedule's (1.0 = the
    # recipes). Under Adam, feature_grad_mult does not slow the CNN (its update ignores the
    # gradient's scale); a smaller lr does.
    cnn_lr_scale: float = 1.0
    # GPU switches. compile: "" (off) or a torch.compile backend ("inductor" on a GPU; "eager"
    # traces without changing a number, which the tests check) for the model and its DDP wrapper;
    # fused_adamw: one fused AdamW kernel on CUDA (foreach AdamW elsewhere; the two differ by
    # float32 rounding only, tests/train/test_gpu_switches.py).
    compile: str = ""
    fused_adamw: bool = True
    # Ours: the collapse alarm (train/collapse.py): one layer's effective rank on a fixed batch.
    collapse: CollapseConfig = field(default_factory=CollapseConfig)


class PretrainTask(Protocol):
    """What a pre-training method gives the loop (MusicHuBERT, Music2Vec)."""

    model: nn.Module  # trained parameters: backbone + heads
    sample_rate: int

    def backbone(self) -> Backbone: ...
    def stand_in_batch(self) -> Batch: ...  # forwarded with loss x 0 when a rank read nothing
    def step(self, model: nn.Module, batch: Batch, update: int) -> dict[str, Tensor]: ...  # sums + sample_size
    def after_update(self, update: int, totals: dict[str, float]) -> dict[str, float]: ...  # EMA step, guards
    def head_state(self) -> dict[str, Tensor]: ...
    def load_head_state(self, state: dict[str, Tensor]) -> None: ...
    def metrics(self, totals: dict[str, float]) -> dict[str, float]: ...  # sums -> logged values


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> tuple[Distributed, torch.device]:
    """From torchrun's environment, or srun's without torchrun (train/slurm.py); a plain `python`
    run is world size 1."""
    os.environ.update(torchrun_environment(os.environ))
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Distributed(), torch.device("cuda" if torch.cuda.is_available() else "cpu")
    env = Distributed(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if torch.cuda.is_available():
        # srun --gpus-per-task=1 shows each task only its own GPU: local rank 3 is then device 0
        index = env.local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        dist.init_process_group("nccl")
        return env, torch.device("cuda", index)
    dist.init_process_group("gloo")
    return env, torch.device("cpu")


def autocast_context(precision: str, device: torch.device):
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# the loop


class Logger:
    """Rank 0: a JSONL file, TensorBoard if installed, and a tqdm progress line."""

    def __init__(self, run_dir: Path, enabled: bool, total: int, start: int, progress: bool = True):
        from tqdm import tqdm

        self.enabled = enabled
        self.jsonl = (run_dir / "log.jsonl").open("a") if enabled else None
        # progress=False silences only the bar: log.jsonl and TensorBoard are still written
        self.bar = tqdm(total=total, initial=start, desc="pretrain", unit="step", disable=not (enabled and progress))
        self.tensorboard = None
        if enabled:
            with contextlib.suppress(ImportError):
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self.jsonl.flush()
        if self.tensorboard is not None:
            for key, value in values.items():
                self.tensorboard.add_scalar(key, value, step)
        shown = {k: v for k, v in values.items() if k in ("loss", "accuracy/masked", "lr", "audio_s_per_s")}
        self.bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in shown.items()})

    def advance(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
        if self.jsonl:
            self.jsonl.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


class NonFiniteLoss(ValueError):
    """Training diverged; a ValueError so the CLI reports it as a message, not a traceback."""


class NoAudio(ValueError):
    """Updates in a row found no readable item: the data is gone, not a few files corrupt."""


def _all_reduce(values: Tensor, env: Distributed) -> Tensor:
    if env.world_size > 1:
        dist.all_reduce(values)
    return values


def _accumulate(totals: dict[str, Tensor], result: dict[str, Tensor], weight: float = 1.0) -> None:
    for key, value in result.items():
        if value.dim() == 0:
            name = "loss_value" if key == "loss" else key
            totals[name] = totals[name] + weight * value.detach().float()
    totals["micro_batches"] = totals["micro_batches"] + weight


def _parameter_groups(task: PretrainTask, config: TrainerConfig) -> list[dict]:
    """The trained parameters (not an EMA teacher, not a frozen CNN): one group, or the CNN's
    apart with its lr scaled by `cnn_lr_scale`."""
    trained = [p for p in task.model.parameters() if p.requires_grad]
    if config.cnn_lr_scale == 1.0:
        return [{"params": trained}]
    if config.cnn_lr_scale <= 0:
        raise ValueError(f"trainer.cnn_lr_scale must be > 0, got {config.cnn_lr_scale} "
                         "(freeze the CNN with model.backbone.feature_grad_mult=0)")
    cnn = {id(p) for p in task.backbone().feature_extractor.parameters() if p.requires_grad}
    groups = [{"params": [p for p in trained if id(p) not in cnn]}]
    if cnn:
        groups.append({"params": [p for p in trained if id(p) in cnn], "lr_scale": config.cnn_lr_scale,
                       "lr": config.schedule.peak_lr * config.cnn_lr_scale})
    return groups


def make_optimizer(task: PretrainTask, config: TrainerConfig, device: torch.device) -> torch.optim.AdamW:
    fused = {"fused": True} if config.fused_adamw and device.type == "cuda" else {}
    return torch.optim.AdamW(_parameter_groups(task, config), lr=config.schedule.peak_lr, betas=config.betas,
                             eps=config.eps, weight_decay=config.weight_decay, **fused)


def train(task: PretrainTask, loader: UpdateLoader, config: TrainerConfig, run_dir: Path, run_config: Any,
          env: Distributed, device: torch.device, resume_from: Path | None = None, progress: bool = True,
          stop_requested: Callable[[], bool] = lambda: False) -> TrainState:
    """Run until `config.max_steps`; returns the final trainer state. When `stop_requested()` turns
    true on any rank (a signal, train/interrupt.py), every rank finishes the same update, a
    checkpoint is saved there and `Interrupted` is raised."""
    model = task.model.to(device)
    ddp = model if env.world_size == 1 else nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=task.backbone().config.layerdrop > 0)  # LayerDrop leaves blocks unused
    optimizer = make_optimizer(task, config, device)
    if config.compile:
        ddp = torch.compile(ddp, backend=config.compile)
    scheduler = make_scheduler(optimizer, config.schedule)
    scaler = torch.amp.GradScaler(device.type) if config.precision == "fp16" else None
    state = TrainState(run_config=to_dict(run_config))
    if resume_from is not None:
        state = load_checkpoint(resume_from, task, optimizer, scheduler, scaler)
        if env.is_main:
            print(f"resumed from {resume_from} at step {state.step}", file=sys.stderr)
    elif env.is_main:
        save_initial(run_dir, task.backbone(), exporter(task))
    logger = Logger(run_dir, env.is_main, config.max_steps, state.step, progress)
    monitor = CollapseMonitor(config.collapse, run_dir, env.is_main, resumed=resume_from is not None)
    nonfinite_in_row, empty_in_row, window, started = 0, 0, defaultdict(float), time.perf_counter()
    stopping, saved = False, (state.step, state.updates_consumed)
    try:
        for update, micro_batches in loader.iterate(state.updates_consumed):
            if state.step >= config.max_steps or stopping:
                break
            if monitor.remember(micro_batches) and state.step == 0:  # the random init: the reference
                monitor.measure_init(task.backbone(), device)
            totals, finite = _run_update(task, ddp, micro_batches, config, device, scaler, update)
            state.updates_consumed = update + 1
            # The stop flag rides the totals' all-reduce: every rank stops after the same update.
            totals["stop"] = torch.tensor(float(bool(stop_requested())), device=device)
            totals = dict(zip(totals, _all_reduce(torch.stack(list(totals.values())), env).tolist()))
            stopping = totals.pop("stop") > 0
            state.skipped_items += int(totals.pop("skipped", 0))
            state.whole_file_reads += int(totals.pop("whole_file_reads", 0))
            if totals["audio_seconds"] == 0:  # every item of the update was unreadable: not a step
                empty_in_row += 1
                if empty_in_row >= config.max_nonfinite_in_row:
                    raise NoAudio(f"stopping: {empty_in_row} updates in a row had no readable audio "
                                  f"({state.skipped_items} items skipped so far, see the messages above); "
                                  f"has the manifest's root folder moved?")
                continue
            empty_in_row = 0
            stepped = finite and _apply_update(model, optimizer, scaler, config, env, totals)
            grad_norm = totals.pop("grad_norm", float("nan"))
            if not stepped:
                state.nonfinite_steps += 1
                nonfinite_in_row += 1
                if nonfinite_in_row >= config.max_nonfinite_in_row:
                    raise NonFiniteLoss(f"stopping: {nonfinite_in_row} updates in a row had a non-finite loss "
                                        f"or gradient (step {state.step}); lower the learning rate or use "
                                        f"fp32/bf16 (trainer.precision)")
                continue
            nonfinite_in_row = 0
            scheduler.step()
            state.step += 1
            extra = task.after_update(state.step, totals)
            logger.advance()
            for key, value in totals.items():
                window[key] += value
            if state.step % config.log_every == 0 or state.step == config.max_steps:
                elapsed = time.perf_counter() - started
                values = task.metrics(dict(window)) | extra | {
                    "lr": learning_rate(config.schedule, state.step - 1), "grad_norm": grad_norm,
                    "audio_s_per_s": window["audio_seconds"] / max(elapsed, 1e-9),
                    "skipped_items": state.skipped_items, "nonfinite_steps": state.nonfinite_steps,
                    "whole_file_reads": state.whole_file_reads}
                if monitor.due(state.step):
                    values |= monitor.measure(task.backbone(), device)
                logger.log(state.step, values | monitor.take_init())
                window, started = defaultdict(float), time.perf_counter()
            if state.step % config.checkpoint_every == 0 or state.step == config.max_steps or stopping:
                saved = _save(run_dir, task, optimizer, scheduler, scaler, state, config, env)
            if env.world_size > 1:
                dist.barrier()  # nobody runs ahead of a checkpoint being written
            if stopping:
                break
        if stopping and state.step < config.max_steps:
            _stop(run_dir, task, optimizer, scheduler, scaler, state, config, env, saved, stop_requested)
    finally:
        logger.close()
    return state


def _save(run_dir, task, optimizer, scheduler, scaler, state: TrainState, config: TrainerConfig,
          env: Distributed) -> tuple[int, int]:
    if env.is_main:
        save_checkpoint(run_dir, task, optimizer, scheduler, scaler, state, config.keep_checkpoints)
    return state.step, state.updates_consumed


def _stop(run_dir, task, optimizer, scheduler, scaler, state: TrainState, config: TrainerConfig, env: Distributed,
          saved: tuple[int, int], stop_requested) -> None:
    """Save where the loop stopped (unless that checkpoint is the last one written) and raise."""
    if saved != (state.step, state.updates_consumed):  # stopped after an update that took no step
        _save(run_dir, task, optimizer, scheduler, scaler, state, config, env)
        if env.world_size > 1:
            dist.barrier()
    signum = getattr(stop_requested, "signum", None) or signal.SIGTERM  # another rank's signal
    checkpoint = run_dir / CHECKPOINTS / f"step_{state.step:08d}"
    message = (f"{signal.Signals(signum).name}: stopped after step {state.step} of {config.max_steps} and saved "
               f"{checkpoint}; the same command resumes from there")
    if env.is_main:
        print(message, file=sys.stderr)
    raise Interrupted(message, signum)


def _run_update(task, ddp, micro_batches, config, device, scaler, update) -> tuple[dict[str, Tensor], bool]:
    """Forward/backward every micro-batch of one update; gradients hold sums afterwards."""
    ddp.train()
    for parameter in ddp.parameters():
        parameter.grad = None
    totals: dict[str, Tensor] = defaultdict(lambda: torch.zeros((), device=device))
    finite = torch.ones((), dtype=torch.bool, device=device)  # read once per update, not per micro-batch
    usable = [b for b in micro_batches if b is not None]
    totals["skipped"] = torch.tensor(float(sum(b.skipped if b is not None else 0 for b in micro_batches)
                                           + sum(b is None for b in micro_batches)), device=device)
    totals["whole_file_reads"] = torch.tensor(float(sum(b.whole_file_reads for b in usable)), device=device)
    # Nothing readable: forward a stand-in with weight 0, so the backward still meets the other
    # ranks in DDP's gradient all-reduce and the totals have the same keys, in the same order.
    weight = 1.0 if usable else 0.0
    for index, batch in enumerate(usable or [task.stand_in_batch()]):
        last = index == len(usable) - 1 or not usable
        sync = contextlib.nullcontext() if last or not hasattr(ddp, "no_sync") else ddp.no_sync()
        with sync:
            with autocast_context(config.precision, device):
                result = task.step(ddp, to_device(batch, device), update)
            loss = result["loss"].float() * weight
            finite = finite & torch.isfinite(loss.detach())
            (scaler.scale(loss) if scaler is not None else loss).backward()
        _accumulate(totals, result, weight)
        totals["audio_seconds"] = totals["audio_seconds"] + weight * batch.lengths.sum().float() / task.sample_rate
    return dict(totals), bool(finite)  # the update's one wait for the device (the all-reduce's .tolist() is another)


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Non-blocking from pinned memory on CUDA (the copy overlaps the host's work). The row
    indices stay on the host: the mask generator reads one, which would wait for the device."""
    non_blocking = device.type == "cuda" and batch.wav.is_pinned()
    moved = {name: value.to(device, non_blocking=non_blocking) if isinstance(value, Tensor) and name != "indices"
             else value for name, value in vars(batch).items()}
    return type(batch)(**moved)


def _apply_update(model, optimizer, scaler, config: TrainerConfig, env: Distributed, totals: dict) -> bool:
    """Divide the summed gradients by the global sample size, clip, step. False if not finite."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    # DDP averaged over ranks: times world size gives the sum, over the sample size the mean.
    factor = env.world_size / max(totals["sample_size"], 1.0)
    parameters = [p for p in model.parameters() if p.grad is not None]
    for parameter in parameters:
        parameter.grad.mul_(factor)
    norm = torch.nn.utils.clip_grad_norm_(parameters, config.clip_norm if config.clip_norm > 0 else math.inf)
    totals["grad_norm"] = float(norm)
    if not math.isfinite(float(norm)):
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.update()
        return False
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return True
