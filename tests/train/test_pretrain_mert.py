"""MERT through the real CLI: `rvq fit --preset mert75` -> `labels rvq` (the Mel-RVQ's codes as 8 label
directories on the 75 Hz grid) -> `pretrain mert`; the recipes' values; labels at another rate or with
another number of codebooks refused in one line naming the file."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from musicssl import audio
from musicssl.cli import main
from musicssl.config import from_dict
from musicssl.extract import load_model
from musicssl.interop.huggingface import from_hf_state_dict, import_pretrained, read_hf_weights
from musicssl.models.backbone import Backbone
from musicssl.data.label_files import LabelGrid, LabelSet, read_labels
from musicssl.data.manifest import read_manifest
from musicssl.targets.rvq_fit import load_mel_rvq
from musicssl.train.checkpoint import read_run_config
from musicssl.train.mert import MERTRun, mert_run
from tests.conftest import tone
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


# ---------------------------------------------------------------------------------------------
# the run's checkpoints are MERT-v1 directories; `--init DIR` continues one (interop/mert.py)


def trained_backbone(checkpoint: Path) -> Backbone:
    """The backbone as the trainer holds it: the run's own config (trainer.json), the weights as
    resume reads them."""
    run = from_dict(MERTRun, read_run_config(checkpoint))
    backbone = Backbone(run.model.backbone).eval()
    backbone.load_state_dict(from_hf_state_dict(read_hf_weights(checkpoint), "hubert", str(checkpoint))[0])
    return backbone


def hidden_states(backbone: Backbone, wav: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack(backbone(wav[None]).layers)[:, 0]  # (L+1, T, D)


def test_checkpoints_are_mert_v1_directories_our_loader_reads_bit_for_bit(straight):
    transformers = pytest.importorskip("transformers")
    from tests.interop.mert_reference import MERT_MICRO, build_reference

    reference, published = build_reference(MERT_MICRO)
    mert_keys = set(published) - set(transformers.PretrainedConfig().to_dict())  # HubertConfig's + MERTConfig's
    wav = torch.from_numpy(tone(1.0, 24_000, frequency=330.0))
    for directory in (straight / "initial", sorted((straight / "checkpoints").glob("step_*"))[-1]):
        config = json.loads((directory / "config.json").read_text())
        assert mert_keys <= set(config) and "musicssl" not in config, mert_keys - set(config)
        assert (config["model_type"], config["architectures"], config["sample_rate"]) == \
            ("mert_model", ["MERTModel"], 24_000)
        assert (config["feature_extractor_cqt"], config["deepnorm"], config["hidden_size"]) == (False, False, 32)
        preprocessor = json.loads((directory / "preprocessor_config.json").read_text())
        assert (preprocessor["sampling_rate"], preprocessor["do_normalize"]) == (24_000, False)
        # MERT-v1's weight names (transformers 4.x weight norm), exactly the reference's set
        names = set(load_file(str(directory / "model.safetensors")))
        legacy = {k.replace("parametrizations.weight.original0", "weight_g")
                  .replace("parametrizations.weight.original1", "weight_v") for k in reference.state_dict()}
        assert names == legacy
        encoder = load_model(directory, device="cpu")
        assert (encoder.sample_rate, encoder.frame_rate_hz) == (24_000, 75.0)
        ours = encoder.extract(wav.numpy(), 24_000, chunk_seconds=None)
        assert torch.equal(ours, hidden_states(trained_backbone(directory) if directory.name != "initial"
                                               else import_pretrained(directory).eval(), wav))
    # the trained weights moved away from the initial ones: the comparison above is not of one model
    last = sorted((straight / "checkpoints").glob("step_*"))[-1]
    assert not torch.equal(hidden_states(trained_backbone(last), wav),
                           hidden_states(import_pretrained(straight / "initial").eval(), wav))


def test_transformers_hubert_model_reads_a_checkpoint_as_mert_does(straight):
    # MERTModel with feature_extractor_cqt and deepnorm off is HubertModel's modules and forward
    # (tests/interop/mert_reference.py): HubertModel.from_pretrained reads every weight, no remote code.
    pytest.importorskip("transformers")
    from transformers import HubertModel

    from tests.interop.mert_reference import MertReference
    from tests.interop.test_huggingface import assert_state_matches

    checkpoint = sorted((straight / "checkpoints").glob("step_*"))[-1]
    model, info = HubertModel.from_pretrained(checkpoint, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    wav = torch.from_numpy(tone(1.0, 24_000, frequency=330.0))[None]
    ours = hidden_states(trained_backbone(checkpoint), wav[0])
    model.eval()
    with torch.no_grad():
        out = model(wav, output_hidden_states=True)
        exact = copy.deepcopy(model).double()(wav.double(), output_hidden_states=True)
    assert len(out.hidden_states) == len(ours) == 3
    for layer, (want, truth) in enumerate(zip(out.hidden_states, exact.hidden_states)):
        assert_state_matches(ours[layer], want[0], truth[0], f"hidden state {layer}")
    reference = MertReference(model.config).eval()  # MERTModel's composition, the same weights: the same numbers
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in
                   zip(reference(wav, output_hidden_states=True).hidden_states, out.hidden_states))


@pytest.fixture(scope="module")
def published(codes) -> Path:
    """A MERT-v1 directory as m-a-p publishes one (pytorch_model.bin, weight_g / weight_v), random weights."""
    pytest.importorskip("transformers")
    from tests.interop.mert_reference import MERT_MICRO, build_reference, save_mert_format

    return save_mert_format(*build_reference(MERT_MICRO, seed=3), codes / "MERT-v1-micro", weights="bin")


def pretrain_from(codes: Path, init: Path, out: Path, *overrides: str) -> int:
    return main(["pretrain", "mert", "--preset", "tiny", "--data", str(codes / "data"), "--labels",
                 str(codes / "codes"), "--out", str(out), "--quiet", "--init", str(init),
                 *sum([["--set", o] for o in [*MICRO, *SCHEDULE, *overrides]], [])])


def cnn_features(backbone: Backbone, wav: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return backbone.feature_extractor(wav[None], None)


def test_init_continues_a_published_mert_directory(codes, published, straight, tmp_path, capsys):
    # 5 updates with the CNN frozen (feature_grad_mult 0): the exported run's CNN must give the
    # published model's features exactly, its Transformer must have moved, and RUN/initial must be
    # the published model, every hidden state bit for bit; the heads are the run's own fresh draw
    out = tmp_path / "continued"
    assert pretrain_from(codes, published, out, "trainer.max_steps=5", "model.backbone.feature_grad_mult=0") == 0
    said = capsys.readouterr().err  # the tiny preset's own backbone is 4 x 128: the directory's is used, said once
    assert said.count(f"--init {published}: the directory's architecture with the tiny recipe: ") == 1
    assert "dim 32 (the preset's: 128)" in said
    config = json.loads((out / "config.json").read_text())
    assert config["init"] == str(published.resolve()) and config["model"]["backbone"]["dim"] == 32
    recipe = mert_run("tiny", label_sets(16)).model.backbone
    assert config["model"]["backbone"]["layerdrop"] == recipe.layerdrop != 0.1  # the preset's, not config.json's
    history = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert history[-1]["step"] == 5 and math.isfinite(history[-1]["loss"])
    wav = torch.from_numpy(tone(1.0, 24_000, frequency=220.0))
    start = import_pretrained(published).eval()
    initial = load_model(out / "initial", device="cpu").extract(wav.numpy(), 24_000, chunk_seconds=None)
    assert torch.equal(initial, hidden_states(start, wav))
    final = sorted((out / "checkpoints").glob("step_*"))[-1]
    continued = import_pretrained(final).eval()
    assert torch.equal(load_model(final, device="cpu").extract(wav.numpy(), 24_000, chunk_seconds=None),
                       hidden_states(trained_backbone(final), wav))
    assert torch.equal(cnn_features(continued, wav), cnn_features(start, wav))  # untouched: equal
    assert (hidden_states(continued, wav)[-1] - hidden_states(start, wav)[-1]).abs().max() > 1e-3  # trained: moved
    fresh = load_file(str(sorted((straight / "checkpoints").glob("step_*"))[0] / "training_state" /
                          "heads.safetensors"))
    heads = load_file(str(final / "training_state" / "heads.safetensors"))
    assert heads.keys() == fresh.keys() and heads["cqt_head.weight"].shape == (336, 32)
    pretrain(codes, out, "trainer.max_steps=6")  # resumed without --init: the record stays
    assert json.loads((out / "config.json").read_text())["init"] == str(published.resolve())


def test_init_of_a_non_mert_damaged_or_conflicting_directory_is_refused(codes, published, tmp_path, capsys):
    hubert = tmp_path / "hubert"
    shutil.copytree(published, hubert)
    config = json.loads((hubert / "config.json").read_text())
    (hubert / "config.json").write_text(json.dumps({**config, "model_type": "hubert"}))
    assert pretrain_from(codes, hubert, tmp_path / "run") == 2
    line, = capsys.readouterr().err.strip().splitlines()
    assert str(hubert / "config.json") in line and "not a MERT-v1 directory" in line
    damaged = tmp_path / "damaged"
    shutil.copytree(published, damaged)
    weights = damaged / "pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert pretrain_from(codes, damaged, tmp_path / "run") == 2
    line, = capsys.readouterr().err.strip().splitlines()
    assert str(weights) in line
    assert pretrain_from(codes, published, tmp_path / "run", "model.backbone.num_layers=3") == 2
    line, = capsys.readouterr().err.strip().splitlines()
    assert str(published / "config.json") in line and "num_layers=3" in line and "num_hidden_layers gives 2" in line
    faster = tmp_path / "faster"  # a CNN hop of 256: 93.75 frames/s, off the 75 Hz labels
    shutil.copytree(published, faster)
    (faster / "config.json").write_text(json.dumps({**config, "conv_stride": [4, 2, 2, 2, 2, 2, 2]}))
    assert pretrain_from(codes, faster, tmp_path / "run") == 2
    line, = capsys.readouterr().err.strip().splitlines()
    assert str(faster / "config.json") in line and "93.75 frames/s" in line and "75 Hz" in line
    assert not (tmp_path / "run").exists()
