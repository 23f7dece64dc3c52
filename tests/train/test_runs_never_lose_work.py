"""Runs that never lose work or run twice, through the real CLI: the run directory lock, resuming
past a damaged newest checkpoint, SIGINT/SIGTERM saving at an update boundary (and resuming bit
for bit), and the one-line errors of a resume that cannot work."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from musicssl.cli import main
from musicssl.train.interrupt import StopRequest
from tests.train.test_pretrain_musichubert import (MUSICSSL, WITH_DROPOUT, assert_same_parameters, final_state, log,
                                                   prepared, run)  # noqa: F401 (prepared: a fixture)


def arguments(prepared: Path, out: Path, *overrides: str, method: str = "musichubert") -> list[str]:
    labels = ["--labels", str(prepared / "labels")] if method == "musichubert" else []
    return ["pretrain", method, "--preset", "tiny", "--data", str(prepared / "manifest"), *labels,
            "--out", str(out), "--quiet", *sum([["--set", o] for o in overrides], [])]


def cli(capsys, *args: str) -> tuple[int, str]:
    """main() in this process: the exit code and stderr."""
    code = main(list(args))
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def straight(prepared, tmp_path_factory) -> Path:
    """Six updates never stopped, a checkpoint after each (WITH_DROPOUT: dropout on)."""
    out = tmp_path_factory.mktemp("straight") / "run"
    run(*arguments(prepared, out, *WITH_DROPOUT, "data.num_workers=0"))
    return out


@pytest.fixture(scope="module")
def three_steps(prepared, tmp_path_factory) -> Path:
    """The same run stopped after 3 updates: checkpoints step_1..3."""
    out = tmp_path_factory.mktemp("three") / "run"
    run(*arguments(prepared, out, *WITH_DROPOUT[:-1], "trainer.max_steps=3"))
    return out


def copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


# -- 6: one process per run directory


def test_a_second_pretrain_into_a_running_run_is_refused_and_the_first_runs_alone(prepared, tmp_path):
    out = tmp_path / "run"
    # The first run cannot end on its own while the second starts (however fast this machine):
    # it has far more updates than the test waits for, and stops on SIGTERM at an update boundary.
    args = arguments(prepared, out, *WITH_DROPOUT[:-1], "trainer.max_steps=1000000", "trainer.log_every=1",
                     "trainer.checkpoint_every=1000000")
    first = subprocess.Popen([MUSICSSL, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    while not (out / "log.jsonl").is_file() and first.poll() is None:
        time.sleep(0.02)
    second = subprocess.run([MUSICSSL, *args], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert first.poll() is None, first.communicate()[1][-3000:]
    first.send_signal(signal.SIGTERM)
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 143, first_err[-3000:]
    assert second.returncode == 2
    assert second.stderr.strip().count("\n") == 0, second.stderr
    assert (f"{out} is in use by pid {first.pid} on host {socket.gethostname()} since " in second.stderr
            and f"if that process is gone, delete {out / '.lock'}" in second.stderr), second.stderr
    assert not (out / ".lock").exists()  # released at the end
    steps = [row["step"] for row in log(out) if "loss" in row]
    assert steps and steps == list(range(1, len(steps) + 1))  # one writer: no duplicate or missing steps


def test_a_lock_held_by_a_live_process_refuses_and_a_dead_ones_is_taken_over(prepared, three_steps, tmp_path,
                                                                              capsys):
    out = copy_run(three_steps, tmp_path / "run")
    lock = out / ".lock"
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "then"}))
    before = (out / "log.jsonl").read_text()
    code, err = cli(capsys, *arguments(prepared, out, *WITH_DROPOUT[:-1], "trainer.max_steps=4"))
    assert code == 2 and err.count("\n") == 1
    assert f"{out} is in use by pid {os.getpid()} on host {socket.gethostname()} since then" in err
    assert lock.is_file() and (out / "log.jsonl").read_text() == before  # nothing touched
    pid = dead_pid()
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "then"}))
    code, err = cli(capsys, *arguments(prepared, out, *WITH_DROPOUT[:-1], "trainer.max_steps=4"))
    assert code == 0, err
    assert f"warning: {lock} was left by pid {pid}, which is no longer running; taking it over" in err
    assert not lock.exists() and log(out)[-1]["step"] == 4
    # On another host the pid means nothing here: refused, never taken over.
    lock.write_text(json.dumps({"pid": pid, "host": "elsewhere", "started": "then"}))
    code, err = cli(capsys, *arguments(prepared, out, *WITH_DROPOUT[:-1], "trainer.max_steps=5"))
    assert code == 2 and f"in use by pid {pid} on host elsewhere" in err


def test_a_refused_new_run_leaves_no_folder_and_an_error_releases_the_lock(prepared, tmp_path, capsys):
    out = tmp_path / "new"
    code, err = cli(capsys, *arguments(prepared, out, "trainer.no_such_key=1"))
    assert code == 2 and "no_such_key" in err
    assert not out.exists()  # the lock was taken, then the folder it made removed with it


# -- 7: a damaged newest checkpoint


def test_a_truncated_newest_checkpoint_is_skipped_and_the_run_still_ends_bit_exact(prepared, straight, three_steps,
                                                                                  tmp_path):
    out = copy_run(three_steps, tmp_path / "run")
    weights = out / "checkpoints" / "step_00000003" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    result = run(*arguments(prepared, out, *WITH_DROPOUT))
    assert (f"{out / 'checkpoints' / 'step_00000003'} is damaged (model.safetensors: truncated); "
            "resuming from step_00000002\n") in result.stderr
    assert "resumed from" in result.stderr and "step_00000002 at step 2" in result.stderr
    assert_same_parameters(final_state(straight), final_state(out))


@pytest.mark.parametrize("damage", ["optimizer", "trainer_json"])
def test_damaged_checkpoints_only_is_one_line_naming_the_files(prepared, three_steps, tmp_path, capsys, damage):
    out = copy_run(three_steps, tmp_path / "run")
    for checkpoint in sorted((out / "checkpoints").glob("step_*")):
        state = checkpoint / "training_state"
        if damage == "optimizer":
            (state / "optimizer.pt").write_bytes((state / "optimizer.pt").read_bytes()[:1000])
        else:
            (state / "trainer.json").write_text('{"step": 3,')
    code, err = cli(capsys, *arguments(prepared, out, *WITH_DROPOUT))
    what = ("training_state/optimizer.pt: truncated or not a torch file" if damage == "optimizer"
            else "training_state/trainer.json: not valid JSON")
    assert code == 2 and err.count("\n") == 1, err
    assert f"{out / 'checkpoints'}: no intact checkpoint to resume from (step_00000003/{what}" in err
    assert f"step_00000001/{what}" in err
    # --resume names one: no fallback, the file named
    code, err = cli(capsys, *arguments(prepared, out, *WITH_DROPOUT), "--resume",
                    str(out / "checkpoints" / "step_00000002"))
    assert code == 2 and f"damaged ({what}" in err and err.count("\n") == 1


def test_resume_given_a_folder_that_is_not_a_checkpoint_says_what_one_holds(prepared, three_steps, tmp_path, capsys):
    code, err = cli(capsys, *arguments(prepared, tmp_path / "run", *WITH_DROPOUT), "--resume", str(three_steps))
    assert code == 2 and err.count("\n") == 1
    assert f"--resume {three_steps}: not a checkpoint folder" in err
    assert "model.safetensors" in err and "training_state/optimizer.pt" in err


# -- 10: signals end a run at an update boundary, with a checkpoint


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_at_the_update_boundary_and_resume_is_bit_exact(prepared, straight, tmp_path, signum):
    """SIGINT to the process group (a terminal's Ctrl-C reaches the DataLoader workers too) or
    SIGTERM to the trainer (SLURM before a preemption): the update finishes, a checkpoint that
    periodic saving would not have written appears, one line, exit 128 + signal; the same command
    resumes and ends where the run that was never stopped ends."""
    out = tmp_path / "run"
    # No periodic checkpoint before the end: the one resumed from is the signal's.
    args = arguments(prepared, out, *WITH_DROPOUT, "trainer.checkpoint_every=100", "trainer.log_every=1",
                     "data.num_workers=2")
    process = subprocess.Popen([MUSICSSL, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    while not (out / "log.jsonl").is_file() or not (out / "log.jsonl").read_text():
        assert process.poll() is None, process.stderr.read()[-3000:]
        time.sleep(0.02)
    if signum == signal.SIGINT:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 128 + signum, err[-3000:]
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "stopped after step" in line]
    saved = sorted((out / "checkpoints").glob("step_*"))
    assert len(saved) == 1 and 1 <= int(saved[0].name.split("_")[1]) < 6
    step = int(saved[0].name.split("_")[1])
    assert lines == [f"{signal.Signals(signum).name}: stopped after step {step} of 6 and saved {saved[0]}; "
                     "the same command resumes from there"]
    assert [row["step"] for row in log(out)] == list(range(1, step + 1))
    assert not (out / ".lock").exists()
    assert f"resumed from {saved[0]} at step {step}" in run(*args).stderr
    assert_same_parameters(final_state(straight), final_state(out))


def test_a_second_ctrl_c_aborts_at_once_and_sigterm_after_ctrl_c_does_not():
    request = StopRequest()
    assert not request()
    request.handle(signal.SIGINT, None)
    assert request() and request.name == "SIGINT"
    request.handle(signal.SIGTERM, None)  # torchrun's follow-up to a worker whose terminal got Ctrl-C
    with pytest.raises(KeyboardInterrupt):
        request.handle(signal.SIGINT, None)
    first_sigterm = StopRequest()
    first_sigterm.handle(signal.SIGTERM, None)
    first_sigterm.handle(signal.SIGTERM, None)  # SLURM may repeat it: still a clean stop
    assert first_sigterm.name == "SIGTERM"


# -- 10: resumes that cannot work are one line, exit 2


def test_bad_json_in_the_run_config_is_one_line_naming_the_file(prepared, three_steps, tmp_path, capsys):
    out = copy_run(three_steps, tmp_path / "run")
    (out / "config.json").write_text('{"method": "musichubert",')
    code, err = cli(capsys, *arguments(prepared, out, *WITH_DROPOUT))
    assert code == 2 and err.count("\n") == 1
    assert f"{out / 'config.json'}: not valid JSON" in err


def test_resuming_one_methods_run_as_the_other_names_both(prepared, three_steps, tmp_path, capsys):
    code, err = cli(capsys, *arguments(prepared, three_steps, method="music2vec"))
    assert code == 2 and f"{three_steps} was trained with musichubert; you asked for music2vec" in err
    checkpoint = three_steps / "checkpoints" / "step_00000003"
    code, err = cli(capsys, *arguments(prepared, tmp_path / "other", method="music2vec"), "--resume", str(checkpoint))
    assert code == 2 and f"{checkpoint} was trained with musichubert; you asked for music2vec" in err
    assert "unknown config keys" not in err


def test_an_empty_manifest_is_named(prepared, tmp_path, capsys):
    manifest = tmp_path / "manifest"
    manifest.mkdir()
    (manifest / "train.tsv").write_text(f"{prepared / 'corpus'}\n")
    code, err = cli(capsys, "pretrain", "music2vec", "--preset", "tiny", "--data", str(manifest),
                    "--out", str(tmp_path / "run"))
    assert code == 2 and err.count("\n") == 1
    assert f"manifest {manifest / 'train.tsv'} has no rows" in err
    assert not (tmp_path / "run").exists()
