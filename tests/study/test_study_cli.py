"""`musicssl study paper` and `musicssl synth speech` from the command line: the dry run, and bad
input as one line and exit 2 (the policy of tests/test_cli_errors.py)."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import soundfile as sf

from musicssl.cli import main


def run_cli(argv):
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture()
def folders(tmp_path):
    for name, rate in (("music", 16_000), ("speech", 16_000), ("phone", 8_000)):
        (tmp_path / name).mkdir()
        sf.write(tmp_path / name / "a.wav", np.zeros(rate, np.float32), rate)
    (tmp_path / "bench").mkdir()
    return tmp_path


def study_args(root, *extra, speech="speech"):
    return ["study", "paper", "--data", str(root / "music"), "--speech", str(root / speech), "--bench-root",
            str(root / "bench"), "--out", str(root / "study"), *extra]


def test_the_dry_run_lists_every_step_with_its_status_cost_and_command(folders):
    code, out, _ = run_cli(study_args(folders, "--dry-run", "--num-shards", "2", "--shard", "1"))
    assert code == 0
    assert "whole plan: 46 steps" in out and "CPU thread-seconds" in out
    assert "musicssl pretrain" in out and not (folders / "study").exists()


@pytest.mark.parametrize("change, words", [
    (lambda a, r: a[:3] + [str(r / "nowhere")] + a[4:], "--data"),
    (lambda a, r: a + ["--only", "table1,table9"], "table9"),
    (lambda a, r: a + ["--shard", "2", "--num-shards", "2"], "--shard 2"),
    (lambda a, r: study_args(r, speech="phone"), "8000 Hz"),
])
def test_bad_input_is_one_line_and_exit_2(folders, change, words):
    code, _, err = run_cli(change(study_args(folders), folders))
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not (folders / "study").exists()  # refused before anything ran


def test_a_dry_run_plans_for_folders_that_exist_only_where_it_will_run(tmp_path):
    # e.g. planning a cluster's `--scale base` study on a laptop
    code, out, err = run_cli(["study", "paper", "--scale", "base", "--data", str(tmp_path / "music"),
                              "--bench-root", str(tmp_path / "bench"), "--out", str(tmp_path / "study"), "--dry-run"])
    assert code == 0 and "whole plan:" in out
    assert "--data" in err and "no such folder" in err and "dry run plans anyway" in err


def test_synth_speech_needs_its_output_and_hours(tmp_path):
    code, _, err = run_cli(["synth", "speech", "--hours", "0.01"])
    assert code == 2 and "-o OUT" in err and len(err.strip().splitlines()) == 1


def test_a_finished_study_runs_nothing_and_writes_its_report(folders):
    from musicssl.study.plan import build_plan
    from tests.study.test_plan import make_marker

    args = study_args(folders, "--only", "table2")
    for step in build_plan("tiny", folders / "music", folders / "bench", folders / "study", folders / "speech",
                           ("table2",)):
        make_marker(step, folders / "study")
    code, out, _ = run_cli(args)
    assert code == 0 and "0 run, 22 already done, 0 skipped, 0 failed" in out
    report = (folders / "study" / "study.md").read_text()
    assert "## Table 2" in report and "**not measurable** (table2) MusicHuBERT with k=2000" in report
