"""MERT through the real CLI: `rvq fit --preset mert75` -> `labels rvq` (the Mel-RVQ's codes as 8 label
directories on the 75 Hz grid) -> `pretrain mert`; the recipes' values; labels at another rate or with
another number of codebooks refused in one line naming the file."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from musicssl import audio
from musicssl.cli import main
from musicssl.data.label_files import LabelGrid, LabelSet, read_labels
from musicssl.data.manifest import read_manifest
from musicssl.targets.rvq_fit import load_mel_rvq
from musicssl.train.mert import mert_run
from tests.train.test_pretrain_musichubert import final_state, pitched_corpus

MICRO = ["model.backbone.conv_layers=[[16,10,5],[16,3,2],[16,3,2],[16,3,2],[16,3,2],[16,2,2],[16,2,2]]",
         "model.backbone.dim=32", "model.backbone.ffn_dim=64", "model.backbone.num_layers=2",
         "model.backbone.num_heads=4", "model.backbone.pos_conv_kernel=16", "model.backbone.pos_conv_groups=4",
         "model.final_dim=16", "data.crop_seconds=2.0", "data.min_seconds=1.0", "data.num_workers=0",
         "data.batch_seconds=8"]


@pytest.fixture(scope="module")
def codes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mert")
    pitched_corpus(root / "corpus", files=6, seconds=3.0)
    assert main(["manifest", str(root / "corpus"), "-o", str(root / "data"), "--sample-rate", "24000",
                 "--valid-percent", "34", "--workers", "1"]) == 0
    assert main(["rvq", "fit", "--data", str(root / "data"), "-o", str(root / "rvq"), "--preset", "mert75",
                 "--steps", "3", "--set", "fit.crop_seconds=2.0", "--set", "fit.batch_size=4",
                 "--set", "fit.stats_crops=4", "--set", "model.codebook_size=16"]) == 0
    assert main(["labels", "rvq", "--data", str(root / "data"), "-o", str(root / "codes"), "--rvq",
                 str(root / "rvq")]) == 0
    return root


def test_labels_rvq_are_the_fitted_rvqs_codes_on_merts_grid(codes):
    listing = json.loads((codes / "codes" / "codebooks.json").read_text())
    assert listing["codebooks"] == [f"codebook_{i}" for i in range(8)] and listing["grid"]["rate_hz"] == 75.0
    rvq = load_mel_rvq(codes / "rvq")
    assert (rvq.config.mel_hop, rvq.config.frames_per_token, rvq.config.token_rate_hz) == (320, 1, 75.0)
    for split in ("train", "valid"):
        manifest = read_manifest(codes / "data" / f"{split}.tsv")
        rows = [read_labels(codes / "codes" / f"codebook_{i}" / f"{split}.km") for i in range(8)]
        for row in range(len(manifest)):
            wav = torch.from_numpy(audio.load_audio(manifest.path(row), 24_000))
            expected = rvq.tokens(wav[None])[0]  # (T, 8)
            assert expected.shape[0] == manifest.num_samples(row) // 320
            for codebook in range(8):
                assert rows[codebook][row].tolist() == expected[:, codebook].tolist()
    info = json.loads((codes / "codes" / "codebook_3" / "labels.json").read_text())
    assert info["k"] == 16 and info["grid"] == {"sample_rate": 24000, "hop": 320, "window": 320, "rate_hz": 75.0}
    assert info["feature"]["codebook"] == 3 and set(info["manifest_fingerprints"]) == {"train", "valid"}


# two micro-batches per update (each draws its own masks and mixtures), a schedule independent of max_steps
SCHEDULE = ["data.micro_batch_seconds=4", "trainer.log_every=2", "trainer.checkpoint_every=2",
            "trainer.schedule.peak_lr=0.002", "trainer.schedule.total_steps=4", "trainer.schedule.warmup_steps=1"]


def pretrain(codes: Path, out: Path, *overrides: str) -> None:
    assert main(["pretrain", "mert", "--preset", "tiny", "--data", str(codes / "data"), "--labels",
                 str(codes / "codes"), "--out", str(out), "--quiet",
                 *sum([["--set", o] for o in [*MICRO, *SCHEDULE, *overrides]], [])]) == 0


@pytest.fixture(scope="module")
def straight(codes) -> Path:
    pretrain(codes, codes / "straight", "trainer.max_steps=4")
    return codes / "straight"


def test_a_tiny_mert_run_learns_and_keeps_its_cqt_head(straight):
    out = straight
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "mert" and config["model"]["extra_codebooks"] == [16] * 7
    assert config["model"]["backbone"]["sample_rate"] == 24_000 and config["model"]["mask"]["mask_length"] == 5
    history = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    first, last = history[0], history[-1]
    assert last["step"] == 4 and 0 < last["mixture/mixed_share"] < 1
    # 4 updates: the codebooks' cross-entropies fall; the CQT's (unnormalised magnitudes) is finite
    assert last["loss"] < first["loss"] and last["loss/masked_ce"] < first["loss/masked_ce"]
    assert all(math.isfinite(last[key]) and last[key] > 0 for key in ("loss/masked_ce_7", "loss/cqt_mse"))
    heads = load_file(str(sorted((out / "checkpoints").glob("step_*"))[-1] / "training_state" / "heads.safetensors"))
    assert heads["cqt_head.weight"].shape == (336, 32) and heads["final_proj.weight"].shape == (8 * 16, 32)
    assert not any(name.startswith("cqt.") for name in heads)  # the CQT kernels are rebuilt, never saved


def test_a_resumed_run_equals_the_uninterrupted_one_exactly(codes, straight, tmp_path):
    pretrain(codes, tmp_path / "split", "trainer.max_steps=2")
    pretrain(codes, tmp_path / "split", "trainer.max_steps=4")  # resumes at update 2
    ours, uninterrupted = final_state(tmp_path / "split"), final_state(straight)
    assert ours.keys() == uninterrupted.keys()
    for name, value in uninterrupted.items():
        assert torch.equal(ours[name], value), name


def refused(capsys, *args: str) -> str:
    assert main(list(args)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_labels_at_another_rate_or_count_are_refused_in_one_line(codes, tmp_path, capsys):
    common = ["--data", str(codes / "data"), "--out", str(tmp_path / "run"), "--quiet", "--preset", "tiny"]
    seven = [str(codes / "codes" / f"codebook_{i}") for i in range(7)]
    line = refused(capsys, "pretrain", "mert", "--labels", *seven, *common)
    assert "7 label set(s)" in line and "8 codebooks" in line
    slow = tmp_path / "slow"
    shutil.copytree(codes / "codes", slow)
    info = json.loads((slow / "codebook_0" / "labels.json").read_text())
    info["grid"].update(hop=960, window=960, rate_hz=25.0)  # MuQ's 25 Hz tokens
    (slow / "codebook_0" / "labels.json").write_text(json.dumps(info))
    line = refused(capsys, "pretrain", "mert", "--labels", str(slow), *common)
    assert str(slow / "codebook_0" / "labels.json") in line and "25 Hz" in line and "75 Hz" in line
    assert main(["manifest", str(codes / "corpus"), "-o", str(tmp_path / "data16k"), "--workers", "1"]) == 0
    capsys.readouterr()
    line = refused(capsys, "pretrain", "mert", "--labels", str(codes / "codes"), *common[2:], "--data",
                   str(tmp_path / "data16k"))
    assert "16000 Hz" in line and "24000" in line  # a 16 kHz corpus: refused, not resampled (yet)
    assert not (tmp_path / "run").exists()


def label_sets(k: int = 1024) -> list[LabelSet]:
    return [LabelSet(Path(f"codes/codebook_{i}"), LabelGrid(24_000, 320, 320), k, {}) for i in range(8)]


def test_the_presets_are_merts_recipes():
    base = mert_run("95m", label_sets())
    model, trainer, data = base.model, base.trainer, base.data
    assert model.codebooks == (1024,) * 8 and model.final_dim == 64 and model.label_rate_hz == 75.0
    assert (model.mask.mask_prob, model.mask.mask_length) == (0.8, 5) and model.cqt.n_bins == 336
    assert (model.feature_penalty_weight, model.cqt_weight, model.extra_classes) == (10.0, 1.0, 4)
    assert (model.mixture.probability, model.mixture.min_samples, model.mixture.max_samples) == (0.5, 12_000, 24_000)
    assert (model.mixture.min_segments, model.mixture.max_segments, model.mixture.gain) == (1, 3, 1.0)
    backbone = model.backbone
    assert (backbone.sample_rate, backbone.frame_rate_hz, backbone.dim, backbone.layer_norm_first) == \
        (24_000, 75.0, 768, False)
    assert (backbone.feature_grad_mult, backbone.dropout, backbone.layerdrop) == (0.1, 0.1, 0.05)
    assert (trainer.schedule.peak_lr, trainer.schedule.warmup_steps, trainer.max_steps, trainer.clip_norm) == \
        (5e-4, 32_000, 400_000, 10.0)
    assert round(data.crop_seconds * 24_000) == 120_000 and data.min_seconds * 24_000 == 72_000
    large = mert_run("330m", label_sets())
    model, trainer, backbone = large.model, large.trainer, large.model.backbone
    assert model.final_dim == 128 and model.attention_relax == 32.0 and model.mixture.max_samples == 36_000
    assert (backbone.dim, backbone.ffn_dim, backbone.num_layers, backbone.num_heads, backbone.layer_norm_first) == \
        (1024, 4096, 24, 16, True)
    assert (backbone.dropout, backbone.attention_dropout, backbone.input_dropout, backbone.layerdrop) == (0.0,) * 4
    assert (trainer.schedule.peak_lr, trainer.clip_norm, trainer.schedule.warmup_steps) == (1.5e-3, 1.0, 32_000)
    assert round(large.data.crop_seconds * 24_000) == 122_880
    assert large.data.crops_per_update == 8 * large.data.crops_per_micro_batch * 64  # update_freq 8 on 64 GPUs
