"""Checkpoint I/O: the trainer state's JSON (old string-keyed files included), atomic writes,
pruning, and a save/load round trip that restores weights, optimizer and RNG exactly."""

from __future__ import annotations

import json
import os

import pytest
import torch

from musicssl.train.checkpoint import (TrainState, checkpoint_dirs, load_checkpoint, read_run_config,
                                       save_checkpoint, save_initial)
from musicssl.train.schedules import make_scheduler
from musicssl.train.tasks import MusicHubertTask, musichubert_run
from musicssl.train.trainer import make_optimizer


def test_state_round_trips_through_json():
    state = TrainState(step=7, updates_consumed=9, skipped_items=2, nonfinite_steps=1, whole_file_reads=3,
                       run_config={"trainer": {"max_steps": 10}})
    assert TrainState.from_json(state.to_json(), "x") == state


def test_state_reads_the_dict_earlier_versions_wrote(tmp_path):
    # trainer.json as the dict version wrote it before whole_file_reads was counted
    legacy = {"step": 3, "updates_consumed": 4, "skipped_items": 0, "nonfinite_steps": 1,
              "run_config": {"method": "musichubert"}}
    state = TrainState.from_json(json.dumps(legacy, indent=2) + "\n", "old/trainer.json")
    assert state == TrainState(step=3, updates_consumed=4, nonfinite_steps=1, whole_file_reads=0,
                               run_config={"method": "musichubert"})


def test_unknown_state_key_is_a_one_line_error_naming_the_file(tmp_path):
    checkpoint = tmp_path / "step_00000003"
    (checkpoint / "training_state").mkdir(parents=True)
    (checkpoint / "training_state" / "trainer.json").write_text(json.dumps({"step": 3, "epoch": 1}))
    with pytest.raises(ValueError) as error:
        read_run_config(checkpoint)
    message = str(error.value)
    assert "\n" not in message
    assert str(checkpoint / "training_state" / "trainer.json") in message and "['epoch']" in message


@pytest.fixture
def tiny_task():
    run = musichubert_run("tiny", 8, 50.0)
    torch.manual_seed(0)
    task = MusicHubertTask(run.model, 16000, seed=0)
    optimizer = make_optimizer(task, run.trainer, torch.device("cpu"))
    return task, optimizer, make_scheduler(optimizer, run.trainer.schedule)


def test_checkpoint_round_trip_restores_weights_optimizer_and_rng(tmp_path, tiny_task):
    task, optimizer, scheduler = tiny_task
    loss = sum(p.float().square().sum() for p in task.model.parameters() if p.requires_grad)
    loss.backward()
    optimizer.step()
    scheduler.step()
    state = TrainState(step=1, updates_consumed=1, run_config={"k": [8]})
    path = save_checkpoint(tmp_path, task, optimizer, scheduler, None, state, keep=0)
    expected_draw = torch.rand(4)  # the RNG state saved is the one before this draw
    saved = {k: v.clone() for k, v in task.model.state_dict().items()}

    for parameter in task.model.parameters():
        parameter.data.add_(1.0)
    fresh = make_optimizer(task, musichubert_run("tiny", 8, 50.0).trainer, torch.device("cpu"))
    fresh_scheduler = make_scheduler(fresh, musichubert_run("tiny", 8, 50.0).trainer.schedule)
    assert load_checkpoint(path, task, fresh, fresh_scheduler, None) == state
    assert torch.equal(torch.rand(4), expected_draw)
    for name, value in task.model.state_dict().items():
        assert torch.equal(value, saved[name]), name
    assert fresh_scheduler.state_dict() == scheduler.state_dict()
    for group_state, fresh_state in zip(optimizer.state.values(), fresh.state.values()):
        assert torch.equal(group_state["exp_avg"], fresh_state["exp_avg"])


def test_checkpoints_are_pruned_and_leave_no_temporary(tmp_path, tiny_task):
    task, optimizer, scheduler = tiny_task
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, task, optimizer, scheduler, None, TrainState(step=step), keep=2)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_00000002", "step_00000003"]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step_00000002", "step_00000003"]
    # rewriting a step (a restated resume) replaces the directory whole
    save_checkpoint(tmp_path, task, optimizer, scheduler, None, TrainState(step=3, skipped_items=5), keep=2)
    assert json.loads((tmp_path / "checkpoints" / "step_00000003" / "training_state" / "trainer.json")
                      .read_text())["skipped_items"] == 5
    initial = save_initial(tmp_path, task.backbone())
    assert sorted(os.listdir(initial)) == ["config.json", "model.safetensors", "preprocessor_config.json"]
