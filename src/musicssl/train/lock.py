"""One `pretrain` per run directory: `RUN/.lock`.

Two processes training into one `--out` used to both run: their checkpoints replaced each
other's, one died on a vanished temporary, and log.jsonl interleaved duplicate steps. The lock
is a file created with O_CREAT|O_EXCL (atomic on local filesystems and on NFSv3+, which is as
far as a lock file can go) holding the owner's pid, host and start time, so the refusal can say
who holds it. A lock left by a process that is gone (a SIGKILL, a node reboot) is taken over
when its pid is dead on this host; on another host we cannot tell, so the user is told which
file to delete. Under torchrun only rank 0 takes it; the other ranks follow rank 0's answer.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from musicssl.config import ConfigError

LOCK = ".lock"


class RunInUse(ConfigError):
    """Another live process trains into this run directory."""


def _owner() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())}


def _read_owner(path: Path) -> dict:
    """The lock's owner; a lock whose owner died between create and write reads as unknown."""
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}


def _is_dead_here(owner: dict) -> bool:
    """True only when the owner ran on this host and its pid no longer exists."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def acquire(run_dir: Path) -> Path:
    """Create `run_dir/.lock` for this process, taking over a dead one's; RunInUse otherwise."""
    path = run_dir / LOCK
    for _ in range(2):  # the second try follows a stale lock's removal
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read_owner(path)
            if not _is_dead_here(owner):
                raise RunInUse(f"{run_dir} is in use by pid {owner.get('pid', '?')} on host "
                               f"{owner.get('host', '?')} since {owner.get('started', '?')}; "
                               f"if that process is gone, delete {path}") from None
            print(f"warning: {path} was left by pid {owner['pid']}, which is no longer running; "
                  "taking it over", file=sys.stderr)
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(_owner()) + "\n")
        return path
    raise RunInUse(f"{run_dir}: another process took {path} while a stale one was removed; retry")


def release(path: Path) -> None:
    """Remove the lock if it is still ours (a user may have deleted and re-created it)."""
    owner = _read_owner(path)
    if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def run_lock(run_dir: Path, is_main: bool = True, world_size: int = 1) -> Iterator[None]:
    """Hold `run_dir/.lock` for the block (released on exceptions too). With several processes,
    rank 0 alone takes it and tells the others, which raise the same refusal when it fails."""
    created = not run_dir.exists()
    path, error = None, ""
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            path = acquire(run_dir)
        except RunInUse as refused:
            error = str(refused)
    if world_size > 1:
        answer = [error]
        dist.broadcast_object_list(answer, src=0, device=torch.device("cpu") if dist.get_backend() == "gloo"
                                   else torch.device("cuda", torch.cuda.current_device()))
        error = answer[0]
    if error:
        _remove_if_empty(run_dir, created and is_main)
        raise RunInUse(error)
    try:
        yield
    finally:
        if path is not None:
            release(path)
            _remove_if_empty(run_dir, created)


def _remove_if_empty(run_dir: Path, created: bool) -> None:
    """A run refused before its first output leaves no empty folder behind (a typo'd preset)."""
    if created:
        with contextlib.suppress(OSError):
            run_dir.rmdir()
