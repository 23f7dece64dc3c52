"""MusicHuBERT pre-training through the real CLI: learning, exact resume, DDP, transformers export."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from musicssl.train.schedules import ScheduleConfig, learning_rate
from tests.numerics import adamw_divergence_bound

MUSICSSL = str(Path(sys.executable).parent / "musicssl")
TORCHRUN = str(Path(sys.executable).parent / "torchrun")
# A model small enough for CPU tests, and no randomness besides the data and masks.
MICRO = ["model.backbone.conv_layers=[[32,10,5],[32,3,2],[32,3,2],[32,3,2],[32,3,2],[32,2,2],[32,2,2]]",
         "model.backbone.dim=64", "model.backbone.ffn_dim=128", "model.backbone.num_layers=2",
         "model.backbone.num_heads=4", "model.backbone.pos_conv_kernel=16", "model.backbone.pos_conv_groups=4",
         "model.final_dim=32", "data.crop_seconds=2.0", "data.min_seconds=1.0"]
DETERMINISTIC = ["model.backbone.dropout=0.0", "model.backbone.attention_dropout=0.0",
                 "model.backbone.input_dropout=0.0", "model.backbone.layerdrop=0.0"]


def run(*args: str, command=(MUSICSSL,)) -> subprocess.CompletedProcess:
    result = subprocess.run([*command, *args], capture_output=True, text=True, env={
        **__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def pitched_corpus(root: Path, files: int = 16, seconds: float = 4.0) -> Path:
    """Notes of several pitches and timbres: MFCC clusters that a model can learn to predict."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    t = np.arange(int(seconds * 16000)) / 16000
    for index in range(files):
        notes = 110 * 2 ** (rng.integers(0, 24, size=8) / 12)
        freq = np.repeat(notes, t.size // 8 + 1)[: t.size]
        phase = 2 * np.pi * np.cumsum(freq) / 16000
        harmonics = sum(np.sin(k * phase) / k ** rng.uniform(0.5, 2) for k in range(1, 6))
        wav = 0.2 * harmonics + 0.02 * rng.standard_normal(t.size)
        sf.write(str(root / f"{index:02d}.wav"), (wav / np.abs(wav).max() * 0.7).astype(np.float32), 16000)
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    corpus = pitched_corpus(root / "corpus")
    run("manifest", str(corpus), "-o", str(root / "manifest"))
    run("labels", "mfcc", "--data", str(root / "manifest"), "--out", str(root / "labels"), "--k", "8",
        "--fit-fraction", "1.0", "--splits", "train")
    return root


def pretrain(prepared: Path, out: Path, *overrides: str, command=(MUSICSSL,)) -> subprocess.CompletedProcess:
    return run("pretrain", "musichubert", "--preset", "tiny", "--data", str(prepared / "manifest"),
               "--labels", str(prepared / "labels"), "--out", str(out), *sum([["--set", o] for o in overrides], []),
               command=command)


def log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
    return {**load_file(str(checkpoint / "model.safetensors")),
            **load_file(str(checkpoint / "training_state" / "heads.safetensors"))}


def test_tiny_run_learns_to_predict_masked_labels(prepared, tmp_path):
    out = tmp_path / "run"
    pretrain(prepared, out, *MICRO, "trainer.max_steps=60", "trainer.log_every=10", "data.batch_seconds=16",
             "data.micro_batch_seconds=16", "trainer.schedule.peak_lr=0.003", "trainer.schedule.warmup_steps=10")
    history = log(out)
    first, last = history[0], history[-1]
    assert last["step"] == 60
    assert last["loss/masked_ce"] < 0.7 * first["loss/masked_ce"]
    assert last["accuracy/masked"] > 3 * last["chance/masked"]  # chance = 1/8
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["num_classes"] == 8 and config["model"]["label_rate_hz"] == 100.0


def test_a_pitch_codebook_trains_beside_mfcc_labels_and_resume_checks_the_label_sets(prepared, tmp_path):
    run("labels", "pitch", "--data", str(prepared / "manifest"), "--out", str(tmp_path / "pitch"), "--k", "6",
        "--fit-fraction", "1.0", "--splits", "train")
    assert json.loads((tmp_path / "pitch" / "labels.json").read_text())["feature"]["kind"] == "pitch"
    out, both = tmp_path / "run", [str(prepared / "labels"), str(tmp_path / "pitch")]
    run("pretrain", "musichubert", "--preset", "tiny", "--data", str(prepared / "manifest"), "--labels", *both,
        "--out", str(out), *sum([["--set", o] for o in [*MICRO, "trainer.max_steps=60", "trainer.log_every=10",
        "data.batch_seconds=16", "data.micro_batch_seconds=16", "trainer.schedule.peak_lr=0.003",
        "trainer.schedule.warmup_steps=10", "trainer.checkpoint_every=30"]], []))
    first, last = log(out)[0], log(out)[-1]
    assert json.loads((out / "config.json").read_text())["model"]["extra_codebooks"] == [6]
    # The notes change pitch every 0.5 s: the pitch codebook is learnable, and learnt.
    assert last["loss/masked_ce_1"] < 0.8 * first["loss/masked_ce_1"]
    assert last["accuracy/masked_1"] > 2 * last["chance/masked_1"]
    assert last["loss"] > last["loss/masked_ce"] + last["loss/masked_ce_1"]  # + the feature penalty
    heads = final_state(out)
    assert heads["final_proj.weight"].shape[0] == 2 * 32 and heads["label_embeddings"].shape[0] == 8 + 6
    refused = subprocess.run([MUSICSSL, "pretrain", "musichubert", "--preset", "tiny", "--data",
                              str(prepared / "manifest"), "--labels", str(prepared / "labels"), "--out", str(out)],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "codebooks of k = (8, 6), --labels gives k = (8,)" in refused.stderr


def test_resumed_run_equals_uninterrupted_run_exactly(prepared, tmp_path):
    common = [*MICRO, "data.batch_seconds=8", "data.micro_batch_seconds=4", "trainer.checkpoint_every=3",
              "trainer.schedule.warmup_steps=2", "trainer.schedule.total_steps=6"]
    pretrain(prepared, tmp_path / "straight", *common, "trainer.max_steps=6")
    first = pretrain(prepared, tmp_path / "split", *common, "trainer.max_steps=3")
    # Resume from trainer.json as the string-keyed version wrote it before whole_file_reads existed.
    state_file = tmp_path / "split" / "checkpoints" / "step_00000003" / "training_state" / "trainer.json"
    legacy = json.loads(state_file.read_text())
    del legacy["whole_file_reads"]
    state_file.write_text(json.dumps(legacy, indent=2) + "\n")
    result = run("pretrain", "musichubert", "--preset", "tiny", "--data", str(prepared / "manifest"),
                 "--labels", str(prepared / "labels"), "--out", str(tmp_path / "split"),
                 "--set", "trainer.max_steps=6", "--quiet")  # resumes: the architecture comes from the checkpoint
    assert "resumed from" in result.stderr
    # --quiet drops the progress bar only; the log goes on
    assert "pretrain:" in first.stderr and "pretrain:" not in result.stderr
    assert [row["step"] for row in log(tmp_path / "split")][-1] == 6
    straight, split = final_state(tmp_path / "straight"), final_state(tmp_path / "split")
    assert straight.keys() == split.keys()
    for name in straight:
        assert torch.equal(straight[name], split[name]), name
    # Restating the original settings on resume is allowed (the run is already complete: no step);
    # changing one is refused with a message.
    assert "resumed from" in pretrain(prepared, tmp_path / "split", *common, "trainer.max_steps=6").stderr
    refused = subprocess.run([MUSICSSL, "pretrain", "musichubert", "--preset", "tiny", "--data",
                              str(prepared / "manifest"), "--labels", str(prepared / "labels"), "--out",
                              str(tmp_path / "split"), "--set", "data.batch_seconds=16"], capture_output=True, text=True)
    assert refused.returncode == 2 and "cannot change ['data.batch_seconds=16'] when resuming" in refused.stderr


def test_two_process_ddp_equals_one_process_with_the_same_global_batch(prepared, tmp_path):
    common = [*MICRO, *DETERMINISTIC, "trainer.max_steps=3", "data.batch_seconds=8", "data.micro_batch_seconds=4"]
    pretrain(prepared, tmp_path / "single", *common)
    pretrain(prepared, tmp_path / "ddp", *common,
             command=(TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "musicssl.cli"))
    single, ddp = final_state(tmp_path / "single"), final_state(tmp_path / "ddp")
    for name in single:
        assert torch.equal(ddp[name], single[name]), (name, (ddp[name] - single[name]).abs().max())


def test_ddp_rank_that_reads_nothing_in_an_update_still_syncs_and_equals_one_process(prepared, tmp_path):
    """Rank 1's only crop of updates 0 and 1 is unreadable: it forwards a stand-in with weight 0,
    so rank 0 is not left waiting in the gradient all-reduce, and the steps equal one process's."""
    from musicssl.data.manifest import read_manifest, write_manifest
    from musicssl.data.pretrain import DataConfig, UpdatePlan

    manifest = read_manifest(prepared / "manifest" / "train.tsv")
    corpus = tmp_path / "corpus"
    shutil.copytree(prepared / "corpus", corpus)
    (tmp_path / "manifest").mkdir()
    write_manifest(tmp_path / "manifest" / "train.tsv", corpus, manifest.items)
    plan = UpdatePlan(len(manifest), DataConfig(crop_seconds=2.0, batch_seconds=4.0, micro_batch_seconds=2.0), 2, 1)
    unreadable = [row for update in (0, 1) for (_, row), in plan.micro_batches(0, update)]
    for row in unreadable:
        (corpus / manifest.items[row][0]).write_bytes(b"not audio any more")
    common = ["pretrain", "musichubert", "--preset", "tiny", "--data", str(tmp_path / "manifest"), "--labels",
              str(prepared / "labels"), *sum([["--set", o] for o in [*MICRO, *DETERMINISTIC, "trainer.max_steps=3",
              "trainer.log_every=1", "data.batch_seconds=4", "data.micro_batch_seconds=2",
              # the log lines are counted: workers would prefetch into epoch 1 and log there too
              "data.num_workers=0"]], [])]
    run(*common, "--out", str(tmp_path / "single"))
    ddp = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "musicssl.cli", *common,
                          "--out", str(tmp_path / "ddp")], capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stderr.count("(undecodable)") == 2 and log(tmp_path / "ddp")[-1]["skipped_items"] == 2
    single, ddp_state = final_state(tmp_path / "single"), final_state(tmp_path / "ddp")
    # Not the same computation: rank 1 forwards a weight-0 stand-in that one process never runs, so
    # the gradients may differ by rounding; bound the drift that 3 AdamW updates allow (tests/numerics.py).
    config = json.loads((tmp_path / "single" / "config.json").read_text())["trainer"]
    schedule = ScheduleConfig(**config["schedule"])
    tolerance = adamw_divergence_bound([learning_rate(schedule, step) for step in range(3)], tuple(config["betas"]))
    for name in single:
        assert (ddp_state[name] - single[name]).abs().max() <= tolerance, name


def test_checkpoint_backbone_loads_in_transformers(prepared, tmp_path):
    transformers = pytest.importorskip("transformers")
    import musicssl

    pretrain(prepared, tmp_path / "run", *MICRO, "trainer.max_steps=2", "data.batch_seconds=8",
             "data.micro_batch_seconds=8")
    checkpoint = sorted((tmp_path / "run" / "checkpoints").glob("step_*"))[-1]
    reference = transformers.HubertModel.from_pretrained(checkpoint).eval()
    ours = musicssl.load_model(checkpoint, device="cpu")
    wav = torch.randn(1, 16000)
    with torch.no_grad():
        hidden = reference(wav, output_hidden_states=True).hidden_states
    features = ours.extract(wav[0].numpy(), 16000)
    for layer, want in enumerate(hidden):
        assert (features[layer] - want[0]).abs().max() < 1e-4


def test_non_finite_steps_are_skipped_then_training_stops_with_a_message(prepared, tmp_path):
    result = subprocess.run(
        [MUSICSSL, "pretrain", "musichubert", "--preset", "tiny", "--data", str(prepared / "manifest"),
         "--labels", str(prepared / "labels"), "--out", str(tmp_path / "run"),
         *sum([["--set", o] for o in [*MICRO, "data.batch_seconds=4", "data.micro_batch_seconds=4",
                                      "trainer.max_steps=40", "trainer.schedule.peak_lr=1e30",
                                      "trainer.schedule.warmup_steps=1", "trainer.clip_norm=0",
                                      "trainer.max_nonfinite_in_row=3"]], [])],
        capture_output=True, text=True)
    assert result.returncode == 2
    assert "3 updates in a row had a non-finite loss" in result.stderr


# Dropout on (the tiny preset's 0.1 residual, attention and input dropout): the runs below may
# differ only if the dropout masks do, and those come from the global torch generator.
WITH_DROPOUT = [*MICRO, "data.batch_seconds=8", "data.micro_batch_seconds=4", "trainer.checkpoint_every=1",
                "trainer.schedule.warmup_steps=2", "trainer.schedule.total_steps=6", "trainer.max_steps=6"]


def assert_same_parameters(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), (name, (a[name] - b[name]).abs().max())


def test_dropout_run_is_the_same_with_0_1_and_4_workers(prepared, tmp_path):
    """A DataLoader iterator used to draw its workers' base seed from the global torch generator,
    the one dropout draws from: with workers, every mask after it shifted."""
    states = {}
    for workers in (0, 1, 4):
        pretrain(prepared, tmp_path / f"w{workers}", *WITH_DROPOUT, f"data.num_workers={workers}")
        states[workers] = final_state(tmp_path / f"w{workers}")
    assert_same_parameters(states[0], states[1])
    assert_same_parameters(states[0], states[4])


@pytest.mark.parametrize("kill_after", [1, 4])
def test_sigkill_and_resume_with_workers_equals_an_uninterrupted_run(prepared, tmp_path, kill_after):
    """SIGKILL to the whole process group (trainer and its DataLoader workers, as a scheduler
    kills a job) once checkpoint `kill_after` exists, wherever the trainer is then (next update,
    next checkpoint being written); the same command again resumes from the newest complete
    checkpoint and ends where a run that was never stopped ends."""
    import os
    import signal
    import time

    pretrain(prepared, tmp_path / "straight", *WITH_DROPOUT, "data.num_workers=0")
    out = tmp_path / "killed"
    args = ["pretrain", "musichubert", "--preset", "tiny", "--data", str(prepared / "manifest"), "--labels",
            str(prepared / "labels"), "--out", str(out), "--quiet",
            *sum([["--set", o] for o in [*WITH_DROPOUT, "data.num_workers=2"]], [])]
    process = subprocess.Popen([MUSICSSL, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    marker = out / "checkpoints" / f"step_{kill_after:08d}"
    while not marker.is_dir() and process.poll() is None:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    steps = [int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*")]
    assert kill_after <= max(steps) < 6
    assert "resumed from" in run(*args).stderr
    assert_same_parameters(final_state(tmp_path / "straight"), final_state(out))


def test_a_prepared_corpus_trains_as_the_files_resumes_exactly_and_ddp_equals_one_process(prepared, tmp_path):
    """`musicssl prepare` shards of the mono 16-bit 16 kHz corpus hold its samples exactly, so a run
    on them equals the run on the files, bit for bit (dropout on); labels made for the source
    manifest line up with the prepared one."""
    shards = tmp_path / "prepared"
    run("prepare", "--data", str(prepared / "manifest"), "-o", str(shards), "--num-shards", "3")

    def on_shards(out: Path, *overrides: str, command=(MUSICSSL,)):
        return run("pretrain", "musichubert", "--preset", "tiny", "--data", str(shards), "--labels",
                   str(prepared / "labels"), "--out", str(out), *sum([["--set", o] for o in overrides], []),
                   command=command)

    pretrain(prepared, tmp_path / "files", *WITH_DROPOUT)
    on_shards(tmp_path / "shards", *WITH_DROPOUT)
    assert_same_parameters(final_state(tmp_path / "files"), final_state(tmp_path / "shards"))
    on_shards(tmp_path / "split", *WITH_DROPOUT[:-1], "trainer.max_steps=3")
    assert "resumed from" in on_shards(tmp_path / "split", *WITH_DROPOUT).stderr
    assert_same_parameters(final_state(tmp_path / "shards"), final_state(tmp_path / "split"))
    common = [*MICRO, *DETERMINISTIC, "trainer.max_steps=3", "data.batch_seconds=8", "data.micro_batch_seconds=4"]
    on_shards(tmp_path / "single", *common)
    on_shards(tmp_path / "ddp", *common, command=(TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "musicssl.cli"))
    single, ddp = final_state(tmp_path / "single"), final_state(tmp_path / "ddp")
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-4, atol=1e-5, msg=name)


def refused(*args: str) -> str:
    """stderr of a `musicssl` command that must exit 2 (a user error, one line)."""
    result = subprocess.run([MUSICSSL, *args], capture_output=True, text=True,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2, result.stderr[-3000:]
    return result.stderr


def test_resume_refuses_another_label_set_of_the_same_k(prepared, tmp_path):
    out = tmp_path / "run"
    pretrain(prepared, out, *MICRO, "trainer.max_steps=1", "trainer.checkpoint_every=1", "data.batch_seconds=8",
             "data.micro_batch_seconds=8")
    recorded = json.loads((out / "config.json").read_text())["label_sets"]
    assert [r["directory"] for r in recorded] == [str((prepared / "labels").resolve())]
    # pitch labels with the k of the run's MFCC labels: the codebook sizes alone cannot tell them apart
    run("labels", "pitch", "--data", str(prepared / "manifest"), "--out", str(tmp_path / "pitch"), "--k", "8",
        "--fit-fraction", "1.0", "--splits", "train")
    error = refused("pretrain", "musichubert", "--preset", "tiny", "--data", str(prepared / "manifest"),
                    "--labels", str(tmp_path / "pitch"), "--out", str(out), "--set", "trainer.max_steps=2")
    assert f"the run trains on label sets {(prepared / 'labels').resolve()} ({recorded[0]['fingerprint']})" in error
    assert len(error.splitlines()) == 1 and len(log(out)) == 1  # nothing trained on the pitch labels


def test_labels_of_a_manifest_remade_with_another_seed_are_refused(prepared, tmp_path):
    """Equal-length clips: a manifest re-made with another --seed has the same row count and lengths,
    so only the rows' fingerprint tells that its labels no longer line up."""
    manifest, labels, shards = tmp_path / "manifest", tmp_path / "labels", tmp_path / "prepared"
    run("manifest", str(prepared / "corpus"), "-o", str(manifest), "--valid-percent", "25", "--seed", "0")
    run("labels", "mfcc", "--data", str(manifest), "--out", str(labels), "--k", "4", "--fit-fraction", "0.5",
        "--splits", "train")
    before = (manifest / "train.tsv").read_text()
    run("manifest", str(prepared / "corpus"), "-o", str(manifest), "--valid-percent", "25", "--seed", "1")
    assert (manifest / "train.tsv").read_text() != before
    run("prepare", "--data", str(manifest), "-o", str(shards))
    recorded = json.loads((labels / "labels.json").read_text())["manifest_fingerprints"]["train"]
    now = json.loads((manifest / "manifest.json").read_text())["splits"]["train"]["fingerprint"]
    assert json.loads((shards / "prepared.json").read_text())["splits"]["train"]["fingerprint"] == now != recorded
    for data in (manifest, shards):
        error = refused("pretrain", "musichubert", "--preset", "tiny", "--data", str(data), "--labels", str(labels),
                        "--out", str(tmp_path / f"run-{data.name}"), *sum([["--set", o] for o in MICRO], []))
        assert (f"train labels were made from a manifest with other rows (fingerprint {recorded}, this manifest "
                f"{now}): re-run musicssl labels mfcc --data {data} --out {labels} --overwrite") in error
        assert not (tmp_path / f"run-{data.name}" / "checkpoints").exists()
