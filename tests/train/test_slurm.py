"""srun without torchrun: ranks from SLURM's variables, rendezvous on the first node of the list."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch

from musicssl.train.slurm import expand_nodelist, torchrun_environment
from tests.train.test_pretrain_musichubert import (DETERMINISTIC, MICRO, MUSICSSL, final_state, pretrain,
                                                   prepared)  # noqa: F401 (the fixture)


@pytest.mark.parametrize("nodelist, hosts", [
    ("node07", ["node07"]),
    ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
    ("node[8-11]", ["node8", "node9", "node10", "node11"]),
    ("node[098-101]", ["node098", "node099", "node100", "node101"]),
    ("gpu[1-2],login3,cn-[05-06]-ib", ["gpu1", "gpu2", "login3", "cn-05-ib", "cn-06-ib"]),
    ("rack[1-2]-n[1,3]", ["rack1-n1", "rack1-n3", "rack2-n1", "rack2-n3"]),
])
def test_compact_node_lists_expand_as_scontrol_show_hostnames(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("bad", ["node[01-03", "node]1[", "node[a-b]", ""])
def test_a_node_list_that_cannot_be_read_is_an_error_naming_it(bad):
    with pytest.raises(ValueError, match="SLURM node list"):
        expand_nodelist(bad)


def test_srun_variables_become_torchruns_and_torchrun_or_a_batch_script_are_left_alone():
    srun = {"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_STEP_NUM_TASKS": "16", "SLURM_LOCALID": "1",
            "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "123456"}
    assert torchrun_environment(srun) == {"RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1",
                                          "MASTER_ADDR": "gpu07", "MASTER_PORT": str(20000 + 123456 % 20000)}
    assert torchrun_environment(srun | {"MASTER_PORT": "29511"})["MASTER_PORT"] == "29511"
    assert torchrun_environment(srun | {"RANK": "9", "WORLD_SIZE": "16"}) == {}  # torchrun inside srun
    batch_script = {k: v for k, v in srun.items() if not k.startswith("SLURM_STEP")} | {"SLURM_PROCID": "0"}
    assert torchrun_environment(batch_script) == {}  # sbatch's own shell: not a distributed launch
    assert torchrun_environment({}) == {}


def test_two_srun_tasks_without_torchrun_train_as_one_process(prepared, tmp_path):
    """Two processes started as srun would start them (no torchrun variables at all): they find
    each other through the node list and equal one process, as the torchrun test does."""
    common = [*MICRO, *DETERMINISTIC, "trainer.max_steps=3", "data.batch_seconds=8", "data.micro_batch_seconds=4",
              "data.num_workers=0"]
    pretrain(prepared, tmp_path / "single", *common)
    args = [MUSICSSL, "pretrain", "musichubert", "--preset", "tiny", "--data", str(prepared / "manifest"),
            "--labels", str(prepared / "labels"), "--out", str(tmp_path / "srun"), "--quiet",
            *sum([["--set", o] for o in common], [])]
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    tasks = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={
        **base, "OMP_NUM_THREADS": "1", "SLURM_PROCID": str(rank), "SLURM_NTASKS": "2",
        "SLURM_STEP_NUM_TASKS": "2", "SLURM_LOCALID": str(rank), "SLURM_STEP_NODELIST": "localhost",
        "SLURM_JOB_ID": str(os.getpid())}) for rank in (0, 1)]
    outputs = [task.communicate(timeout=300) for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], [err[-2000:] for _, err in outputs]
    assert "world size 2" in outputs[0][1]
    single, srun = final_state(tmp_path / "single"), final_state(tmp_path / "srun")
    for name in single:
        torch.testing.assert_close(srun[name], single[name], rtol=1e-4, atol=1e-5, msg=name)
