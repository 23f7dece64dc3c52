"""Parity with transformers: import its HubertModel / Data2VecAudioModel, export ours to it."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")
from transformers import (AutoModel, Data2VecAudioConfig, Data2VecAudioModel, HubertConfig,  # noqa: E402
                          HubertForCTC, HubertModel)

from musicssl.interop.huggingface import export_pretrained, import_pretrained  # noqa: E402
from musicssl.models.backbone import Backbone, count_parameters  # noqa: E402
from musicssl.models.backbone_config import backbone_preset  # noqa: E402
from tests.conftest import micro_backbone, perturb_  # noqa: E402
from tests.numerics import float64_calibrated  # noqa: E402

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             conv_dim=(16,) * 7, num_conv_pos_embedding_groups=4)
REFERENCES = {
    "hubert_group": lambda: HubertModel(HubertConfig(**SMALL, num_conv_pos_embeddings=16)),
    "hubert_layer_pre_ln": lambda: HubertModel(HubertConfig(**SMALL, num_conv_pos_embeddings=16,
                                                            feat_extract_norm="layer", do_stable_layer_norm=True)),
    "data2vec": lambda: Data2VecAudioModel(Data2VecAudioConfig(**SMALL, num_conv_pos_embeddings=3,
                                                               conv_pos_kernel_size=5)),
}


def padded_batch(lengths=(9600, 7000, 3210), seed=0):
    generator = torch.Generator().manual_seed(seed)
    wav = torch.randn(len(lengths), max(lengths), generator=generator)
    lengths = torch.tensor(lengths)
    keep = torch.arange(wav.shape[1])[None] < lengths[:, None]
    return wav * keep, lengths, keep.long()


def saved_reference(name, tmp_path):
    torch.manual_seed(0)
    reference = REFERENCES[name]().eval()
    perturb_(reference)  # transformers' init leaves biases at 0 and norms at 1: a mapping bug could hide
    reference.save_pretrained(tmp_path / name)
    return reference, tmp_path / name


def reference_states(model, wav, attention_mask):
    """transformers' hidden states, each as (float32, float64): the float64 run is the truth
    that both float32 computations round from (see tests/numerics.py)."""
    exact = copy.deepcopy(model).double()
    with torch.no_grad():
        rounded = model(wav, attention_mask=attention_mask, output_hidden_states=True).hidden_states
        truth = exact(wav.double(), attention_mask=attention_mask, output_hidden_states=True).hidden_states
    return list(zip(rounded, truth))


def assert_state_matches(got, want, truth, what):
    error, tolerance = float64_calibrated(got, want, truth)
    assert error <= tolerance, f"{what}: max abs error {error:.2e}, float32 rounding allows {tolerance:.2e}"
    # and the comparison is still sharp: rounding stays far below the signal (a mapping bug is O(signal))
    assert tolerance < 1e-4 * float(truth.abs().max()), f"{what}: float32 rounding of {tolerance:.2e}"


def assert_states_match(ours, reference, lengths):
    assert len(ours.layers) == len(reference)
    for layer, (got, (want, truth)) in enumerate(zip(ours.layers, reference)):
        for item, frames in enumerate(ours.lengths.tolist()):
            assert_state_matches(got[item, :frames], want[item, :frames], truth[item, :frames],
                                 f"hidden state {layer}, item {item}")
        assert want.std() > 0.1  # the comparison is not between two near-constant tensors


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_imported_model_matches_transformers_on_a_padded_batch(name, tmp_path):
    reference, directory = saved_reference(name, tmp_path)
    ours = import_pretrained(directory, isolate_padding=False).eval()
    wav, lengths, attention_mask = padded_batch()
    with torch.no_grad():
        out = ours(wav, lengths)
    assert_states_match(out, reference_states(reference, wav, attention_mask), lengths)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_isolated_padding_gives_transformers_unpadded_result(name, tmp_path):
    # Our default: a padded item's valid frames equal transformers' result on that item alone.
    assert_padded_items_match_the_reference_alone(*saved_reference(name, tmp_path))


def assert_padded_items_match_the_reference_alone(reference, directory) -> None:
    """Our padded batch (isolated padding) vs transformers on each item alone, every layer."""
    ours = import_pretrained(directory).eval()
    wav, lengths, _ = padded_batch()
    with torch.no_grad():
        out = ours(wav, lengths)
    for item, length in enumerate(lengths.tolist()):
        alone = reference_states(reference, wav[item:item + 1, :length], None)
        frames = int(out.lengths[item])
        for layer, (got, (want, truth)) in enumerate(zip(out.layers, alone)):
            assert_state_matches(got[item, :frames], want[0], truth[0], f"hidden state {layer}, item {item}")


def test_both_weight_norm_namings_import(tmp_path):
    reference, directory = saved_reference("hubert_group", tmp_path)
    state = load_file(str(directory / "model.safetensors"))
    assert "encoder.pos_conv_embed.conv.parametrizations.weight.original0" in state
    old = {k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1",
                                                                           "weight_v"): v for k, v in state.items()}
    save_file(old, str(directory / "model.safetensors"))
    ours = import_pretrained(directory, isolate_padding=False).eval()
    wav, lengths, attention_mask = padded_batch()
    with torch.no_grad():
        assert_states_match(ours(wav, lengths), reference_states(reference, wav, attention_mask), lengths)


def test_task_model_checkpoint_and_pickle_free_bin_import(tmp_path):
    torch.manual_seed(0)
    task_model = HubertForCTC(HubertConfig(**SMALL, num_conv_pos_embeddings=16, vocab_size=12)).eval()
    perturb_(task_model)
    state = {k: v.contiguous() for k, v in task_model.state_dict().items()}
    directory = tmp_path / "ctc"
    directory.mkdir()
    (directory / "config.json").write_text(task_model.config.to_json_string())
    torch.save(state, directory / "pytorch_model.bin")  # read back with weights_only=True
    ours = import_pretrained(directory, isolate_padding=False).eval()
    wav, lengths, attention_mask = padded_batch()
    with torch.no_grad():
        assert_states_match(ours(wav, lengths), reference_states(task_model.hubert, wav, attention_mask), lengths)


@pytest.mark.parametrize("variant, architecture", [("hubert", "HubertModel"), ("data2vec", "Data2VecAudioModel")])
def test_export_round_trip_through_transformers(variant, architecture, tmp_path):
    ours = micro_backbone(variant, isolate_padding=False)
    directory = export_pretrained(ours, tmp_path / "exported")
    loaded, info = AutoModel.from_pretrained(directory, output_loading_info=True)
    assert type(loaded).__name__ == architecture
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert json.loads((directory / "preprocessor_config.json").read_text())["sampling_rate"] == 16000
    wav, lengths, attention_mask = padded_batch()
    with torch.no_grad():
        out = ours(wav, lengths)
    assert_states_match(out, reference_states(loaded.eval(), wav, attention_mask), lengths)
    again = import_pretrained(directory)
    assert again.config == ours.config
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name


def test_export_refuses_what_data2vec_audio_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="cannot be exported"):
        export_pretrained(micro_backbone("data2vec", layer_norm_first=True), tmp_path / "x")


def test_import_errors_name_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        import_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type 'bert'"):
        import_pretrained(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("config_class, model_class, preset", [
    (HubertConfig, HubertModel, "hubert_base"), (Data2VecAudioConfig, Data2VecAudioModel, "data2vec_base")])
def test_base_size_parity_with_transformers(config_class, model_class, preset, tmp_path):
    torch.manual_seed(0)
    reference = model_class(config_class()).eval()
    perturb_(reference, scale=0.02)
    reference.save_pretrained(tmp_path / preset)
    ours = import_pretrained(tmp_path / preset, isolate_padding=False).eval()
    assert count_parameters(ours) == count_parameters(reference) == count_parameters(Backbone(backbone_preset(preset)))
    # transformers' config defaults differ from the recipes only in training-time fields.
    expected = backbone_preset(preset)
    training_fields = ("dropout", "activation_dropout", "input_dropout", "layerdrop", "feature_grad_mult",
                       "isolate_padding")
    assert dataclasses.replace(ours.config, **{f: getattr(expected, f) for f in training_fields}) == expected
    wav, lengths, attention_mask = padded_batch((32000, 20000))
    with torch.no_grad():
        out = ours(wav, lengths)
    assert_states_match(out, reference_states(reference, wav, attention_mask), lengths)
