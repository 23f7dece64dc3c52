"""The study planner: which runs for which table, the commands, shards, resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from musicssl.cli import build_parser
from musicssl.study.execute import probe_config, run_steps
from musicssl.study.plan import SCALES, assign_shards, build_plan, is_done, shard_of, step_status

MUSICHUBERT = {"musichubert-k2000-mfcc39", "musichubert-k500-mfcc39", "musichubert-k500-mfcc60",
               "musichubert-k2000-iter2"}
MUSIC2VEC = {"music2vec-vanilla", "music2vec-span5", "music2vec-span15", "music2vec-prob50", "music2vec-prob80",
             "music2vec-target12", "music2vec-steps800k"}
SPEECH = {"hubert-speech", "data2vec-speech"}


def plan(scale="tiny", speech="SPEECH", only=("table1", "table2", "table3"), study="STUDY"):
    return build_plan(scale, "MUSIC", "BENCH", study, speech, only)


def runs(steps) -> set[str]:
    return {step.name.split("/", 1)[1] for step in steps if step.kind == "pretrain"}


def test_the_three_tables_plan_every_run_and_a_probe_of_each():
    steps = plan()
    assert runs(steps) == MUSICHUBERT | MUSIC2VEC | SPEECH   # crop5s = vanilla in our presets: not run twice
    probed = {step.name for step in steps if step.kind == "probe"}
    assert probed == {f"{kind}/{run}" for run in runs(steps) for kind in ("probe", "probe-beats")}
    assert {step.name for step in steps if step.kind.startswith("labels")} == {
        "labels/music-mfcc39-k2000", "labels/music-mfcc39-k500", "labels/music-mfcc60-k500",
        "labels/speech-mfcc39-k2000", "labels/music-iter2-k2000"}
    assert runs(plan(speech=None)) == MUSICHUBERT | MUSIC2VEC


@pytest.mark.parametrize("only, expected", [(("table1",), {"musichubert-k2000-mfcc39", "music2vec-vanilla"} | SPEECH),
                                            (("table2",), MUSICHUBERT | {"hubert-speech"}),
                                            (("table3",), MUSIC2VEC | {"data2vec-speech"})])
def test_only_keeps_a_tables_runs_and_their_inputs(only, expected):
    steps = plan(only=only)
    assert runs(steps) == expected
    names = {step.name for step in steps}
    assert all(need in names for step in steps for need in step.needs)


def test_dependencies_come_first_and_the_second_iteration_reads_the_k2000_run():
    steps = plan()
    position = {step.name: index for index, step in enumerate(steps)}
    assert all(position[need] < position[step.name] for step in steps for need in step.needs)
    iter2 = next(step for step in steps if step.name == "labels/music-iter2-k2000")
    assert iter2.kind == "labels_layer" and "runs/musichubert-k2000-mfcc39" in iter2.needs
    assert iter2.args["model"] == str(Path("STUDY/runs/musichubert-k2000-mfcc39/checkpoints/step_00002000"))
    assert iter2.args["layer"] == 2 and iter2.args["k"] == 2000


@pytest.mark.parametrize("scale, hubert, music2vec, top", [("tiny", 2000, 1000, 4), ("base", 250_000, 400_000, 12)])
def test_budgets_per_scale(scale, hubert, music2vec, top):
    steps = {step.name: step for step in plan(scale)}
    assert steps["runs/musichubert-k500-mfcc60"].args["steps"] == hubert
    assert steps["runs/music2vec-span5"].args["steps"] == music2vec
    assert steps["runs/music2vec-steps800k"].args["steps"] == 2 * music2vec    # 800k = twice 400k
    assert f"model.average_top_k_layers={top}" in steps["runs/music2vec-target12"].args["overrides"]
    assert steps["runs/music2vec-vanilla"].args["overrides"][-1] == f"trainer.max_steps={music2vec}"


def test_every_command_parses_to_the_arguments_the_step_runs_with():
    parser = build_parser()
    for step in plan():
        args = parser.parse_args(step.command.split()[1:])
        if step.kind == "pretrain":
            assert (args.method, args.preset, args.data, args.out, args.overrides) == (
                step.args["method"], step.args["preset"], step.args["data"], step.args["out"], step.args["overrides"])
            if step.args["method"] == "musichubert":
                assert args.labels == step.args["labels"]
            else:
                assert args.variant == step.args["variant"]
        elif step.kind.startswith("labels"):
            assert (args.data, args.out, args.k, args.fit_fraction) == (
                step.args["data"], step.args["out"], step.args["k"], step.args["fit_fraction"])
        elif step.kind == "probe":
            from musicssl.cli.arguments import _probe_config

            assert args.models == [step.args["model"]] and args.skip_missing
            assert probe_config(step.args["flags"]) == _probe_config(args)


@pytest.mark.parametrize("num_shards", [1, 2, 3, 5])
def test_shards_cover_every_step_once_and_keep_a_runs_inputs_together(num_shards):
    steps = plan()
    shards = [shard_of(steps, index, num_shards) for index in range(num_shards)]
    names = [step.name for shard in shards for step in shard]
    assert sorted(names) == sorted(step.name for step in steps)
    assignment = assign_shards(steps, num_shards)
    for step in steps:  # only the (cheap) manifests are made by another shard
        assert all(assignment[need] == assignment[step.name] for need in step.needs if not need.startswith("data/"))
    assert assign_shards(steps, num_shards) == assignment   # deterministic


def test_a_shard_out_of_range_is_refused():
    with pytest.raises(ValueError, match="0 <= shard < num-shards"):
        shard_of(plan(), 2, 2)
    with pytest.raises(ValueError, match="unknown table"):
        plan(only=("table4",))


def make_marker(step, study: Path) -> None:
    """What each kind of step leaves when it is complete."""
    out = step.out(study)
    if step.kind == "manifest":
        files = ["train.tsv", "valid.tsv"]
    elif step.kind.startswith("labels"):
        files = ["train.km", "valid.km"]
    elif step.kind == "pretrain":
        (out / "checkpoints" / f"step_{step.args['steps']:08d}").mkdir(parents=True)
        files = []
    else:
        files = ["results.json"]
    out.mkdir(parents=True, exist_ok=True)
    for name in files:
        (out / name).write_text("{}" if name.endswith(".json") else "")


def test_resume_skips_complete_runs_and_shards_wait_for_each_others_inputs(tmp_path):
    steps = plan(study=tmp_path)
    ran: list[str] = []

    def fake(step, device=None, progress=True):
        ran.append(step.name)
        make_marker(step, tmp_path)

    # an interrupted run (an earlier checkpoint only) is not done: it is run again and resumes
    partial = next(step for step in steps if step.name == "runs/music2vec-span5")
    (partial.out(tmp_path) / "checkpoints" / "step_00000500").mkdir(parents=True)
    assert step_status(partial, tmp_path, steps) == "waiting"
    maker = assign_shards(steps, 2)["data/music"]
    second = shard_of(steps, 1 - maker, 2)  # the shard that reads the music manifest the other makes
    outcome = run_steps(steps, second, tmp_path, wait_seconds=0, runner=fake)
    needs_manifest = [s for s in second if any(n.startswith("data/") and n not in {x.name for x in second}
                                               for n in s.needs)]
    assert needs_manifest and all(any(line.startswith(s.name + ":") for line in outcome.skipped)
                                  for s in needs_manifest)
    run_steps(steps, shard_of(steps, maker, 2), tmp_path, runner=fake)
    outcome = run_steps(steps, second, tmp_path, runner=fake)
    assert not outcome.skipped and not outcome.failed
    assert all(is_done(step, tmp_path) for step in steps)
    assert sorted(ran) == sorted(step.name for step in steps)   # each step ran exactly once
    again = run_steps(steps, steps, tmp_path, runner=fake)
    assert again.ran == [] and len(again.done) == len(steps)


def test_tiny_costs_fit_two_cores_in_two_and_a_half_hours():
    steps = plan()
    loads = [sum(s.cost for s in shard_of(steps, index, 2)) for index in range(2)]
    assert SCALES["tiny"].cost_unit == "CPU thread-seconds"
    assert max(loads) < 2.5 * 3600


def test_the_real_steps_run_at_smoke_size_and_resume(tmp_path):
    """manifest -> MFCC labels -> MusicHuBERT -> labels of its layer -> 2nd iteration, and a
    Music2Vec variant, through the library at 2 updates each; a bench root without the datasets
    skips the probes; a second pass runs nothing."""
    import dataclasses

    import numpy as np
    import soundfile as sf

    (tmp_path / "music").mkdir()
    (tmp_path / "bench").mkdir()
    t = np.arange(3 * 16_000) / 16_000
    for index in range(6):  # a gliding tone over noise bursts: MFCC frames of more than one kind
        noise = np.random.default_rng(index).normal(0, 0.1, t.size) * (np.sin(2 * np.pi * 2 * t) > 0)
        glide = 0.3 * np.sin(2 * np.pi * (220 + 40 * index) * t * (1 + 0.3 * t))
        sf.write(tmp_path / "music" / f"{index}.wav", (glide + noise).astype(np.float32), 16_000)
    smoke = ("data.batch_seconds=6", "data.micro_batch_seconds=6", "trainer.checkpoint_every=2", "data.num_workers=0")
    scale = dataclasses.replace(SCALES["tiny"], hubert_steps=2, music2vec_steps=2, k_small=4, k_large=8,
                                valid_percent=20.0, hubert_overrides=smoke,
                                music2vec_overrides=smoke + ("model.collapse_check_after=100",))
    steps = build_plan(scale, tmp_path / "music", tmp_path / "bench", tmp_path / "study", None, ("table2", "table3"))
    keep = {"data/music", "labels/music-mfcc39-k8", "runs/musichubert-k8-mfcc39", "labels/music-iter2-k8",
            "runs/musichubert-k8-iter2", "runs/music2vec-target12", "probe/music2vec-target12"}
    chosen = [step for step in steps if step.name in keep]
    outcome = run_steps(steps, chosen, tmp_path / "study", progress=False)
    assert outcome.ran == [step.name for step in chosen if step.kind != "probe"] and not outcome.failed
    assert outcome.skipped == [f"probe/music2vec-target12: no dataset folder of {','.join(scale.tasks)} under "
                               f"{tmp_path / 'bench'}".replace(",", ", ")]
    config = (tmp_path / "study/runs/music2vec-target12/config.json").read_text()
    assert '"average_top_k_layers": 4' in config
    again = run_steps(steps, chosen, tmp_path / "study", progress=False)
    assert again.ran == [] and len(again.done) == len(chosen) - 1
