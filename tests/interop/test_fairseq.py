"""fairseq checkpoints: read without running pickled code, converted to a directory load_model
reads. The fixture is a real fairseq-fixed 0.12.3.1 HuBERT checkpoint (tiny, random weights),
written by benchmarks/fairseq_convert_parity.py as published checkpoints are (cfg an OmegaConf
DictConfig), with the hidden states fairseq itself computed for a fixed batch."""

from __future__ import annotations

import collections
import copy
import os
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from musicssl.cli import main
from musicssl.extract import load_model
from musicssl.interop.fairseq import convert_fairseq, parse_conv_layers
from musicssl.interop.safe_pickle import (DictConfigStandIn, UnsafeCheckpointError, load_checkpoint,
                                          to_python)
from tests.numerics import float64_calibrated

FIXTURES = Path(__file__).parent / "fixtures"


def assert_matches_fairseq(backbone, wav, fairseq_states):
    """Each float32 state within a small multiple of fairseq's own float32 rounding, measured
    against the converted weights run in float64 (tests/numerics.py); that rounding must stay
    below 1e-4 of the states' scale, which a mapping error (O(signal) from the float64 run of
    the converted weights) cannot."""
    with torch.no_grad():
        got = backbone(wav).layers
        truth = copy.deepcopy(backbone).double()(wav.double()).layers
    assert len(got) == len(fairseq_states)
    for layer, (ours, want, exact) in enumerate(zip(got, fairseq_states, truth)):
        assert want.std() > 0.5
        error, tolerance = float64_calibrated(ours, want, exact)
        assert error <= tolerance, f"hidden state {layer}: {error:.2e} > {tolerance:.2e}"
        assert tolerance < 1e-4 * float(exact.abs().max()), f"hidden state {layer}: rounding {tolerance:.2e}"


class _Payload:
    """Pickles as a call: on load, pickle would call `target(*args)`."""

    def __init__(self, target, *args):
        self.target, self.args = target, args

    def __reduce__(self):
        return self.target, self.args


def _checkpoint_with(payload, path: Path, legacy: bool = False) -> Path:
    state = {"args": None, "cfg": {"model": {"_name": "hubert"}},
             "model": collections.OrderedDict(mask_emb=torch.zeros(4)), "extra_state": {"x": payload}}
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.mark.parametrize("legacy", [False, True])
def test_os_system_payload_is_refused_and_never_runs(tmp_path, legacy):
    side_effect = tmp_path / "payload_ran"
    checkpoint = _checkpoint_with(_Payload(os.system, f"touch {side_effect}"), tmp_path / "evil.pt", legacy)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pt: refused: .*(posix|os)\.system"):
        load_checkpoint(checkpoint)
    assert not side_effect.exists()
    assert main(["convert", "fairseq", str(checkpoint), str(tmp_path / "out")]) == 2
    assert not side_effect.exists() and not (tmp_path / "out").exists()


def test_eval_and_exec_style_payloads_are_refused(tmp_path):
    import builtins
    import importlib
    import subprocess

    for target, args in ((builtins.eval, ("1",)), (builtins.exec, ("pass",)), (subprocess.Popen, (["true"],)),
                         (importlib.import_module, ("os",))):
        checkpoint = _checkpoint_with(_Payload(target, *args), tmp_path / "evil.pt")
        with pytest.raises(UnsafeCheckpointError, match="refused"):
            load_checkpoint(checkpoint)


def test_a_fairseq_name_is_a_type_reference_that_cannot_construct(tmp_path, monkeypatch):
    # OmegaConf metadata names fairseq dataclasses; they load as inert references, and a pickle
    # that calls one (to construct an object, i.e. run its code) is refused with its name.
    module = types.ModuleType("fairseq.fake_models")
    ran = []

    def build(*args):
        ran.append(args)

    build.__module__, build.__qualname__ = module.__name__, "build"
    module.build = build
    monkeypatch.setitem(sys.modules, module.__name__, module)
    if "fairseq" not in sys.modules:  # fairseq is not installed here: a parent package for pickle's lookup
        monkeypatch.setitem(sys.modules, "fairseq", types.ModuleType("fairseq"))
    checkpoint = _checkpoint_with(_Payload(build, 1), tmp_path / "ctor.pt")
    with pytest.raises(UnsafeCheckpointError, match="construct fairseq.fake_models.build"):
        load_checkpoint(checkpoint)
    assert not ran


def test_conv_feature_layers_are_parsed_not_evaluated():
    assert parse_conv_layers("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2", "x") == \
        ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2
    with pytest.raises(ValueError, match="is not a list"):
        parse_conv_layers("__import__('os').system('true')", "x")


def test_interpolations_resolve_against_the_root():
    cfg = {"model": {"label_rate": 50.0}, "task": {"label_rate": "${model.label_rate}", "x": "${nope.y}"}}
    assert to_python(cfg)["task"] == {"label_rate": 50.0, "x": "${nope.y}"}


@pytest.fixture
def fixture_checkpoint():
    checkpoint = FIXTURES / "hubert_tiny.pt"
    if not checkpoint.exists():
        pytest.skip("fixture not generated (benchmarks/fairseq_convert_parity.py --write-fixture)")
    return checkpoint, load_file(str(FIXTURES / "hubert_tiny_states.safetensors"))


def test_real_fairseq_checkpoint_pickle_is_read_with_its_omegaconf_cfg(fixture_checkpoint):
    checkpoint, _ = fixture_checkpoint
    state = load_checkpoint(checkpoint)
    assert isinstance(state["cfg"], DictConfigStandIn)  # the published format, pinned
    cfg = to_python(state["cfg"])
    assert cfg["model"]["_name"] == "hubert" and cfg["model"]["encoder_layers"] == 2
    assert cfg["task"]["_name"] == "hubert_pretraining" and cfg["task"]["normalize"] is False


def test_converted_fixture_matches_fairseq_at_every_layer(fixture_checkpoint, tmp_path):
    checkpoint, states = fixture_checkpoint
    assert main(["convert", "fairseq", str(checkpoint), str(tmp_path / "hubert")]) == 0
    encoder = load_model(tmp_path / "hubert", device="cpu")
    assert encoder.sample_rate == 16000 and not encoder.config.normalize_waveform
    assert_matches_fairseq(encoder.backbone, states["wav"], [states[f"layer_{i}"] for i in range(3)])
    heads = load_file(str(tmp_path / "hubert" / "training_state" / "heads.safetensors"))
    assert set(heads) == {"final_proj.weight", "final_proj.bias", "label_embs_concat"}
    original = load_checkpoint(checkpoint)["model"]
    assert torch.equal(heads["label_embs_concat"], original["label_embs_concat"])


def _as_mert(fixture_checkpoint, tmp_path, **model_changes) -> Path:
    """The fixture re-saved as MERT's fairseq trainer writes: cfg a plain dict, model._name "mert",
    task at 24 kHz (MERT's key layout is HuBERT's; its extra heads are named encoder_cqt_model.*)."""
    checkpoint, _ = fixture_checkpoint
    state = load_checkpoint(checkpoint)
    cfg = to_python(state["cfg"])
    cfg["model"].update({"_name": "mert", "attention_relax": 32.0, "deepnorm": False,
                         "feature_extractor_cqt": False, **model_changes})
    cfg["task"].update(_name="mert_pretraining", sample_rate=24000)
    state["cfg"] = cfg
    state["model"]["encoder_cqt_model.fc.weight"] = torch.randn(84, 32)
    torch.save(state, tmp_path / "mert.pt")
    return tmp_path / "mert.pt"


def test_mert_fairseq_checkpoint_converts_at_24_khz(fixture_checkpoint, tmp_path):
    _, states = fixture_checkpoint
    out, config, heads = convert_fairseq(_as_mert(fixture_checkpoint, tmp_path), tmp_path / "mert")
    assert config.sample_rate == 24000 and "encoder_cqt_model.fc.weight" in heads
    encoder = load_model(out, device="cpu")
    assert encoder.frame_rate_hz == 75.0
    # attention_relax changes nothing: fairseq's HuBERT states hold
    assert_matches_fairseq(encoder.backbone, states["wav"], [states[f"layer_{i}"] for i in range(3)])


@pytest.mark.parametrize("option", ["feature_extractor_cqt", "deepnorm", "do_cnn_feat_stable_layernorm"])
def test_mert_options_not_implemented_are_refused_by_name(fixture_checkpoint, tmp_path, option):
    with pytest.raises(ValueError, match=f"{option}=True is not supported"):
        convert_fairseq(_as_mert(fixture_checkpoint, tmp_path, **{option: True}), tmp_path / "mert")
