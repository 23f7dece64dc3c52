"""An EnCodec 24 kHz checkpoint in the published format (a torch-saved state dict of `EncodecModel`)
is read without running pickled code; one that is not the 24 kHz architecture is refused in one line
naming the file."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch

from musicssl.interop.encodec import _shapes, load_encodec, published_names
from musicssl.models.encodec import EncodecConfig, EncodecTokenizer
from tests.models.encodec_cases import WEIGHT_SEED, published_tensor


def random_checkpoint_state(seed: int = WEIGHT_SEED) -> dict[str, torch.Tensor]:
    """The published state dict's encoder and all 32 codebooks (with their training buffers), random
    (tests/models/encodec_cases.py); the decoder, which we never read, left out. A new dict each call
    (its tensors shared: change entries, not tensors)."""
    return dict(_random_state(seed))


@functools.lru_cache(maxsize=2)
def _random_state(seed: int) -> dict[str, torch.Tensor]:
    shapes = _shapes(EncodecConfig())
    state = {theirs: published_tensor(theirs, shapes[ours], seed) for ours, theirs in published_names().items()
             if not ours.startswith("codebooks.")}
    buffers = {"inited": (1,), "cluster_size": (1024,), "embed": (1024, 128), "embed_avg": (1024, 128)}
    for stage in range(32):
        for name, shape in buffers.items():
            key = f"quantizer.vq.layers.{stage}._codebook.{name}"
            state[key] = published_tensor(key, shape, seed)
    return state


def write_checkpoint(path: Path, state: dict | None = None) -> Path:
    torch.save(state if state is not None else random_checkpoint_state(), path)
    return path


def test_the_name_table_covers_every_parameter_once():
    names = published_names()
    ours = set(EncodecTokenizer().state_dict()) - {"codebooks"} | {f"codebooks.{s}" for s in range(8)}
    assert set(names) == ours and len(set(names.values())) == len(names)
    assert names["encoder.stages.3.down.weight_v"] == "encoder.model.12.conv.conv.weight_v"
    assert names["encoder.lstm.weight_hh_l1"] == "encoder.model.13.lstm.weight_hh_l1"
    assert names["encoder.head.bias"] == "encoder.model.15.conv.conv.bias"


def test_a_published_checkpoint_loads_with_its_sha256(tmp_path):
    path = write_checkpoint(tmp_path / "codec.th")
    tokenizer, sha = load_encodec(path)
    assert len(sha) == 64 and not tokenizer.training
    embed = published_tensor("quantizer.vq.layers.7._codebook.embed", (1024, 128))
    assert torch.equal(tokenizer.codebooks[7], embed)


def test_torchs_parametrised_weight_norm_names_are_read_too(tmp_path):
    state = random_checkpoint_state()
    renamed = {key.replace(".weight_g", ".parametrizations.weight.original0")
               .replace(".weight_v", ".parametrizations.weight.original1"): value for key, value in state.items()}
    old, _ = load_encodec(write_checkpoint(tmp_path / "old.th", state))
    new, _ = load_encodec(write_checkpoint(tmp_path / "new.th", renamed))
    for name, value in old.state_dict().items():
        assert torch.equal(new.state_dict()[name], value), name


def _damaged(change) -> dict:
    state = random_checkpoint_state()
    change(state)
    return state


WRONG = {
    "missing": (lambda s: s.pop("encoder.model.13.lstm.weight_ih_l1"), "missing encoder.model.13.lstm.weight_ih_l1"),
    "extra": (lambda s: s.update({"encoder.model.16.conv.conv.bias": torch.zeros(3)}),
              "unexpected encoder.model.16.conv.conv.bias"),
    "shape": (lambda s: s.update({"encoder.model.15.conv.conv.weight_v": torch.zeros(256, 512, 7)}),
              r"encoder.model.15.conv.conv.weight_v has shape \(256, 512, 7\), EnCodec 24 kHz has \(128, 512, 7\)"),
    "48khz": (lambda s: s.update({"encoder.model.0.conv.conv.weight_v": torch.zeros(32, 2, 7),
                                  "encoder.model.0.conv.norm.weight": torch.ones(32)}), "the 48 kHz EnCodec"),
    "untrained": (lambda s: s.update({"quantizer.vq.layers.2._codebook.inited": torch.zeros(1)}),
                  "codebook 2 was never initialised"),
    "not_a_state_dict": (lambda s: s.update({"step": 5}), "not an EnCodec state dict"),
}


@pytest.mark.parametrize("wrong", sorted(WRONG))
def test_another_architecture_is_refused_in_one_line_naming_the_file(tmp_path, wrong):
    change, message = WRONG[wrong]
    path = write_checkpoint(tmp_path / "other.th", _damaged(change))
    with pytest.raises(ValueError, match=message) as error:
        load_encodec(path)
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_a_download_whose_sha256_does_not_match_its_name_is_refused(tmp_path):
    path = write_checkpoint(tmp_path / "encodec_24khz-d7cc33bc.th")
    with pytest.raises(ValueError, match="its name says d7cc33bc: a damaged or altered download"):
        load_encodec(path)


def test_a_pickle_of_something_else_is_refused_naming_what_was_expected(tmp_path):
    path = write_checkpoint(tmp_path / "list.th", [torch.zeros(3)])
    with pytest.raises(ValueError, match="list.th: an EnCodec state dict is a dict, found list"):
        load_encodec(path)


class RunsCode:
    def __reduce__(self):
        return os.system, ("echo pwned",)


def test_a_checkpoint_that_would_run_code_is_refused_before_anything_runs(tmp_path):
    path = write_checkpoint(tmp_path / "evil.th", {**random_checkpoint_state(), "x": RunsCode()})
    with pytest.raises(ValueError, match=r"evil.th: refused: the checkpoint references (os|posix)\.system"):
        load_encodec(path)
