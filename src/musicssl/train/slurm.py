"""SLURM `srun` without torchrun: torchrun's variables from SLURM's.

`srun --ntasks-per-node 8 musicssl pretrain ...` starts every process itself; each sees
``SLURM_PROCID`` (global rank), ``SLURM_LOCALID`` (rank on its node), the step's task count and
node list, but none of torchrun's ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR``. Without this, every
process took itself for rank 0 of 1. The first node of the list is the rendezvous host; the
port is ``MASTER_PORT`` if set, else 20000 + job id mod 20000 (two jobs sharing a node do not
collide, every task of one job agrees without talking).

Only an srun step is taken for a distributed launch: it sets ``SLURM_STEP_NUM_TASKS`` (the batch
script itself, which also sees ``SLURM_PROCID=0`` and the job's ``SLURM_NTASKS``, does not), and
torchrun's own variables, when present, win.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_GROUP = re.compile(r"\[([^\]]*)\]")


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compact host list, in order: ``node[01-03,07],gpu-a[1-2]-ib`` -> node01, node02,
    node03, node07, gpu-a1-ib, gpu-a2-ib (zero padding kept; several bracket groups in one
    name expand as a product, as ``scontrol show hostnames`` does)."""
    hosts = []
    for name in _split_top_level(nodelist.strip()):
        hosts += _expand_name(name)
    if not hosts:
        raise ValueError(f"empty SLURM node list {nodelist!r}")
    return hosts


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth < 0 or depth > 1:
            raise ValueError(f"unbalanced brackets in SLURM node list {text!r}")
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if depth:
        raise ValueError(f"unbalanced brackets in SLURM node list {text!r}")
    return [part for part in parts + [current] if part]


def _expand_name(name: str) -> list[str]:
    match = _GROUP.search(name)
    if match is None:
        return [name]
    head, tail = name[:match.start()], name[match.end():]
    return [head + value + rest for value in _expand_range(match.group(1), name) for rest in _expand_name(tail)]


def _expand_range(spec: str, name: str) -> list[str]:
    values = []
    for item in spec.split(","):
        low, _, high = item.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ValueError(f"cannot read {item!r} in SLURM node list name {name!r}")
        if not high:
            values.append(low)
            continue
        width = len(low) if low.startswith("0") else 0  # node[01-10]: keep the padding
        values += [str(number).zfill(width) for number in range(int(low), int(high) + 1)]
    return values


def torchrun_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """torchrun's variables for a process started by srun without torchrun; {} otherwise."""
    if "RANK" in environ or "SLURM_PROCID" not in environ or "SLURM_STEP_NUM_TASKS" not in environ:
        return {}
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    if not nodelist:
        raise ValueError("srun set SLURM_PROCID but no SLURM_STEP_NODELIST / SLURM_JOB_NODELIST to find rank 0's host")
    port = environ.get("MASTER_PORT") or str(20000 + int(environ.get("SLURM_JOB_ID", "0")) % 20000)
    return {"RANK": environ["SLURM_PROCID"], "WORLD_SIZE": environ["SLURM_STEP_NUM_TASKS"],
            "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
            "MASTER_ADDR": environ.get("MASTER_ADDR") or expand_nodelist(nodelist)[0], "MASTER_PORT": port}
