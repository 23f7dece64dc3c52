"""transformers interop: a backbone <-> a directory that `transformers.AutoModel` loads as
`HubertModel` or `Data2VecAudioModel` (config.json, model.safetensors, preprocessor_config.json).

No transformers import is needed for either direction: the format is plain JSON and safetensors.
The one visible table below maps every weight name; everything else is the config mapping.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
import re
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from musicssl.config import ConfigError, read_json

from musicssl.models.backbone import Backbone
from musicssl.models.backbone_config import BackboneConfig

log = logging.getLogger(__name__)

# (transformers name, our name, variant or None for both). {i} = an index, {p} = weight|bias.
# Where transformers has two names for one tensor (weight norm before and after torch's
# parametrizations), the first is the one we write and both are read.
NAME_TABLE: list[tuple[str, str, str | None]] = [
    ("feature_extractor.conv_layers.{i}.conv.{p}", "feature_extractor.conv_layers.{i}.conv.{p}", None),
    ("feature_extractor.conv_layers.{i}.layer_norm.{p}", "feature_extractor.conv_layers.{i}.norm.{p}", None),
    ("feature_projection.layer_norm.{p}", "feature_projection.layer_norm.{p}", None),
    ("feature_projection.projection.{p}", "feature_projection.projection.{p}", None),
    ("masked_spec_embed", "mask_embedding", None),
    ("encoder.pos_conv_embed.conv.parametrizations.weight.original0", "encoder.pos_conv.convs.0.weight_g", "hubert"),
    ("encoder.pos_conv_embed.conv.weight_g", "encoder.pos_conv.convs.0.weight_g", "hubert"),
    ("encoder.pos_conv_embed.conv.parametrizations.weight.original1", "encoder.pos_conv.convs.0.weight_v", "hubert"),
    ("encoder.pos_conv_embed.conv.weight_v", "encoder.pos_conv.convs.0.weight_v", "hubert"),
    ("encoder.pos_conv_embed.conv.bias", "encoder.pos_conv.convs.0.bias", "hubert"),
    # conv_pos_batch_norm: a BatchNorm1d before a plain (not weight-normed) conv.
    ("encoder.pos_conv_embed.conv.weight", "encoder.pos_conv.convs.0.weight", "hubert"),
    ("encoder.pos_conv_embed.batch_norm.{b}", "encoder.pos_conv.batch_norm.{b}", "hubert"),
    ("encoder.pos_conv_embed.layers.{i}.conv.{p}", "encoder.pos_conv.convs.{i}.{p}", "data2vec"),
    ("encoder.layer_norm.{p}", "encoder.layer_norm.{p}", None),
    ("encoder.layers.{i}.attention.q_proj.{p}", "encoder.layers.{i}.attention.q_proj.{p}", None),
    ("encoder.layers.{i}.attention.k_proj.{p}", "encoder.layers.{i}.attention.k_proj.{p}", None),
    ("encoder.layers.{i}.attention.v_proj.{p}", "encoder.layers.{i}.attention.v_proj.{p}", None),
    ("encoder.layers.{i}.attention.out_proj.{p}", "encoder.layers.{i}.attention.out_proj.{p}", None),
    ("encoder.layers.{i}.layer_norm.{p}", "encoder.layers.{i}.attention_layer_norm.{p}", None),
    ("encoder.layers.{i}.feed_forward.intermediate_dense.{p}", "encoder.layers.{i}.feed_forward.fc1.{p}", None),
    ("encoder.layers.{i}.feed_forward.output_dense.{p}", "encoder.layers.{i}.feed_forward.fc2.{p}", None),
    ("encoder.layers.{i}.final_layer_norm.{p}", "encoder.layers.{i}.final_layer_norm.{p}", None),
]

# Prefixes transformers adds when a backbone is saved inside a task model (e.g. HubertForCTC).
_TASK_PREFIXES = ("hubert.", "data2vec_audio.", "wav2vec2.")
_MODEL_TYPES = {"hubert": ("hubert", "HubertModel"), "data2vec": ("data2vec-audio", "Data2VecAudioModel")}
# MERT-v1 (m-a-p/MERT-v1-95M, -330M; github.com/yizhilll/MERT scripts/mert_hf): a HubertModel
# with `sample_rate` (24000) in config.json and options of its own, read natively (no remote code).
MERT_MODEL_TYPE = "mert_model"


def _pattern(template: str) -> re.Pattern:
    escaped = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    escaped = escaped.replace(r"\{b\}", r"(?P<b>weight|bias|running_mean|running_var|num_batches_tracked)")
    return re.compile(escaped + "$")


def rename(name: str, direction: str, variant: str) -> str | None:
    """Map one tensor name "to_ours" or "to_hf"; None if the table has no such name."""
    for hf, ours, only in NAME_TABLE:
        if only not in (None, variant):
            continue
        source, target = (hf, ours) if direction == "to_ours" else (ours, hf)
        match = _pattern(source).match(name)
        if match:
            return target.format(**match.groupdict())
    return None


# ---------------------------------------------------------------------------------------------
# config mapping


def to_hf_config(config: BackboneConfig) -> dict:
    """config.json for transformers; our own full config rides along under "musicssl"."""
    _check_exportable(config)
    model_type, architecture = _MODEL_TYPES[config.variant]
    hf = {
        "model_type": model_type, "architectures": [architecture], "torch_dtype": "float32",
        "hidden_size": config.dim, "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads, "intermediate_size": config.ffn_dim,
        "hidden_act": "gelu", "feat_extract_activation": "gelu",
        "hidden_dropout": config.dropout, "attention_dropout": config.attention_dropout,
        "activation_dropout": config.activation_dropout, "feat_proj_dropout": config.input_dropout,
        "layerdrop": config.layerdrop, "layer_norm_eps": config.layer_norm_eps,
        "conv_dim": [c for c, _, _ in config.conv_layers], "conv_kernel": [k for _, k, _ in config.conv_layers],
        "conv_stride": [s for _, _, s in config.conv_layers], "conv_bias": config.conv_bias,
        "num_conv_pos_embedding_groups": config.pos_conv_groups,
        # transformers only creates `masked_spec_embed` when a mask probability is positive.
        "mask_time_prob": 0.05, "apply_spec_augment": True,
    }
    if config.variant == "hubert":
        hf.update(num_conv_pos_embeddings=config.pos_conv_kernel, conv_pos_batch_norm=config.pos_conv_batch_norm,
                  feat_extract_norm=config.extractor_norm, feat_proj_layer_norm=True,
                  do_stable_layer_norm=config.layer_norm_first)
    else:  # in Data2VecAudioConfig num_conv_pos_embeddings is the number of pos-conv layers
        hf.update(num_conv_pos_embeddings=config.pos_conv_depth, conv_pos_kernel_size=config.pos_conv_kernel)
    hf["musicssl"] = {"backbone": _config_to_json(config)}
    return hf


def _check_mert_options(hf: dict, source: str) -> None:
    """MERT's options that change the computation: implemented, or refused by name.
    `attention_relax` is read and ignored: softmax((a/r - max(a/r)) r) = softmax(a) exactly (a
    shift), bitwise in fp32 for MERT-330M's r = 32 (a power of two; tests/interop/test_mert.py),
    and MERTModel applies it only inside its deepnorm encoder, which is refused here."""
    if hf.get("feature_extractor_cqt", False):
        raise ValueError(f"{source}: feature_extractor_cqt=true (MERT's CQT input features, nnAudio) "
                         "is not supported; MERT-v1 models have it off")
    if hf.get("deepnorm", False):
        raise ValueError(f"{source}: deepnorm=true (MERT's scaled residual connections) is not supported; "
                         "MERT-v1 models have it off")


def _check_exportable(config: BackboneConfig) -> None:
    if config.variant == "data2vec" and (config.extractor_norm != "layer" or config.layer_norm_first):
        raise ValueError("Data2VecAudioModel has only a layer-norm CNN and a post-LN Transformer; "
                         "this data2vec-variant config cannot be exported to transformers")


def from_hf_config(hf: dict, source: str = "config.json") -> BackboneConfig:
    """BackboneConfig from a transformers config.json (ours round-trips exactly)."""
    if "musicssl" in hf:
        return _config_from_json(hf["musicssl"]["backbone"])
    model_type = hf.get("model_type")
    if model_type not in ("hubert", "data2vec-audio", MERT_MODEL_TYPE):
        raise ValueError(f"{source}: model_type {model_type!r} is not supported "
                         f"(expected 'hubert', 'data2vec-audio' or {MERT_MODEL_TYPE!r})")
    _check_mert_options(hf, source)
    if not hf.get("feat_proj_layer_norm", True):
        raise ValueError(f"{source}: feat_proj_layer_norm=false (wav2vec2-style projection) is not supported")
    conv = tuple(zip(hf["conv_dim"], hf["conv_kernel"], hf["conv_stride"]))
    common = dict(
        conv_layers=tuple(tuple(layer) for layer in conv), conv_bias=hf.get("conv_bias", False),
        dim=hf["hidden_size"], ffn_dim=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"], pos_conv_groups=hf.get("num_conv_pos_embedding_groups", 16),
        dropout=hf.get("hidden_dropout", 0.1), attention_dropout=hf.get("attention_dropout", 0.1),
        activation_dropout=hf.get("activation_dropout", 0.1), input_dropout=hf.get("feat_proj_dropout", 0.0),
        layerdrop=hf.get("layerdrop", 0.1), layer_norm_eps=hf.get("layer_norm_eps", 1e-5),
        sample_rate=int(hf.get("sample_rate", 16_000)),  # MERT-style configs carry it here
    )
    for key in ("hidden_act", "feat_extract_activation"):
        if hf.get(key, "gelu") != "gelu":
            raise ValueError(f"{source}: {key}={hf[key]!r} is not supported (only gelu)")
    if model_type in ("hubert", MERT_MODEL_TYPE):
        extractor_norm = hf.get("feat_extract_norm", "group")
        # The input normalisation is read with the preprocessor config (`read_preprocessing`);
        # this is the default without one.
        return BackboneConfig(variant="hubert", extractor_norm=extractor_norm,
                              normalize_waveform=extractor_norm == "layer",
                              pos_conv_kernel=hf.get("num_conv_pos_embeddings", 128), pos_conv_depth=1,
                              pos_conv_batch_norm=bool(hf.get("conv_pos_batch_norm", False)),
                              layer_norm_first=hf.get("do_stable_layer_norm", False), **common)
    return BackboneConfig(variant="data2vec", extractor_norm="layer", normalize_waveform=True,
                          pos_conv_kernel=hf.get("conv_pos_kernel_size", 19),
                          pos_conv_depth=hf.get("num_conv_pos_embeddings", 5), **common)


def _config_to_json(config: BackboneConfig) -> dict:
    return dataclasses.asdict(config)


def _config_from_json(values: dict) -> BackboneConfig:
    known = {f.name for f in dataclasses.fields(BackboneConfig)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown backbone config keys {sorted(unknown)}")
    values = dict(values)
    if "conv_layers" in values:
        values["conv_layers"] = tuple(tuple(layer) for layer in values["conv_layers"])
    return BackboneConfig(**values)


def preprocessor_config(config: BackboneConfig) -> dict:
    return {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
        "sampling_rate": config.sample_rate, "padding_side": "right", "padding_value": 0.0,
        "do_normalize": config.normalize_waveform,
        # transformers' advice: group-norm models must not get an attention mask.
        "return_attention_mask": config.extractor_norm == "layer",
    }


# ---------------------------------------------------------------------------------------------
# weights


def to_hf_state_dict(state: dict[str, torch.Tensor], variant: str) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in state.items():
        hf_name = rename(name, "to_hf", variant)
        if hf_name is None:
            raise KeyError(f"no transformers name for backbone tensor {name!r}")
        out[hf_name] = tensor.detach().to("cpu", torch.float32).contiguous()
    return out


def from_hf_state_dict(state: dict[str, torch.Tensor], variant: str,
                       source: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Returns (our state dict, names that are not backbone weights and were ignored)."""
    ours, ignored = {}, []
    for name, tensor in state.items():
        for prefix in _TASK_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        our_name = rename(name, "to_ours", variant)
        if our_name is None:
            ignored.append(name)
            continue
        if our_name in ours:
            raise ValueError(f"{source}: two tensors map to {our_name!r} (both weight-norm namings present?)")
        ours[our_name] = tensor
    return ours, ignored


def export_pretrained(backbone: Backbone, directory: str | Path) -> Path:
    """Write config.json, model.safetensors and preprocessor_config.json into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = backbone.config
    (directory / "config.json").write_text(json.dumps(to_hf_config(config), indent=2) + "\n")
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(config), indent=2) + "\n")
    save_file(to_hf_state_dict(backbone.state_dict(), config.variant), str(directory / "model.safetensors"),
              metadata={"format": "pt"})
    return directory


def read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The weights file's tensors; a damaged file is a ValueError naming it (the readers' own
    errors name neither the file nor, for safetensors, a Python exception type we could catch)."""
    safetensors = directory / "model.safetensors"
    if safetensors.exists():
        try:
            return load_file(str(safetensors))
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            raise ValueError(f"{safetensors}: not a readable safetensors file ({' '.join(str(error).split())})") from None
    binary = directory / "pytorch_model.bin"
    if binary.exists():
        try:
            # weights_only: a plain tensor dict loads; anything that needs unpickling code is refused.
            state = torch.load(binary, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile, OSError, ValueError) as error:
            raise ValueError(f"{binary}: not a readable torch weights file ({' '.join(str(error).split())})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"{binary}: expected a dict of tensors, found {type(state).__name__}")
        return state
    raise FileNotFoundError(f"{directory}: no model.safetensors or pytorch_model.bin")


def import_pretrained(directory: str | Path, **overrides) -> Backbone:
    """Build a Backbone from a transformers (or our exported) directory. `overrides` replace
    config fields that do not change the weights, e.g. isolate_padding=False."""
    return load_pretrained(directory, **overrides)[0]


def read_hf_config(config_path: Path) -> tuple[dict, BackboneConfig]:
    """(config.json as a dict, our config from it); damaged JSON, a missing field or a wrong
    type is a ConfigError naming the file."""
    hf = read_json(config_path)
    if not isinstance(hf, dict):
        raise ConfigError(f"{config_path}: expected a JSON object, found {type(hf).__name__}")
    try:
        return hf, from_hf_config(hf, str(config_path))
    except KeyError as error:
        raise ConfigError(f"{config_path}: missing field {error}") from None
    except (TypeError, AttributeError) as error:  # e.g. "conv_dim": 3, or a string where a number belongs
        raise ConfigError(f"{config_path}: a field has the wrong type ({error})") from None


def load_pretrained(directory: str | Path, **overrides) -> tuple[Backbone, "Preprocessing"]:
    """(backbone, its input preprocessing): the rate and waveform normalisation come from
    preprocessor_config.json (or the model type's default, logged), and are in the config."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{directory}: no config.json (not a model directory)")
    hf, config = read_hf_config(config_path)
    preprocessing = read_preprocessing(directory, hf, config)
    config = dataclasses.replace(config, **{"sample_rate": preprocessing.sample_rate,
                                            "normalize_waveform": preprocessing.do_normalize, **overrides})
    backbone = Backbone(config)
    state, _ = from_hf_state_dict(read_hf_weights(directory), config.variant, str(directory))
    expected = backbone.state_dict()
    missing = sorted(set(expected) - set(state) - {"mask_embedding"})
    if missing:
        raise ValueError(f"{directory}: weights missing for {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    for name, tensor in state.items():
        if name in expected and tensor.shape != expected[name].shape:
            raise ValueError(f"{directory}: {name} has shape {tuple(tensor.shape)}, config implies "
                             f"{tuple(expected[name].shape)}")
    backbone.load_state_dict(state, strict=False)
    return backbone, preprocessing


# ---------------------------------------------------------------------------------------------
# input preprocessing: what transformers' Wav2Vec2FeatureExtractor does before the model


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    sample_rate: int
    do_normalize: bool  # per-utterance zero mean, unit variance
    # sqrt(var + eps): transformers' zero_mean_unit_var_norm uses 1e-7; fairseq's F.layer_norm
    # over the waveform (and our own training) 1e-5.
    normalize_eps: float
    origin: str  # where the values came from, for messages


TRANSFORMERS_NORMALIZE_EPS = 1e-7
FAIRSEQ_NORMALIZE_EPS = 1e-5


def read_preprocessing(directory: Path, hf: dict, config: BackboneConfig) -> Preprocessing:
    """preprocessor_config.json's sampling_rate and do_normalize; without that file, the default
    of the model type (see `default_preprocessing`), stated in a log line."""
    ours = "musicssl" in hf
    eps = FAIRSEQ_NORMALIZE_EPS if ours else TRANSFORMERS_NORMALIZE_EPS
    path = directory / "preprocessor_config.json"
    if path.exists():
        values = read_json(path)
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a JSON object, found {type(values).__name__}")
        default = default_preprocessing(hf, config)
        rate = int(values.get("sampling_rate", default.sample_rate))
        # transformers' Wav2Vec2FeatureExtractor defaults do_normalize to true when the key is absent.
        return Preprocessing(rate, bool(values.get("do_normalize", True)), eps, str(path))
    default = default_preprocessing(hf, config)
    log.warning("%s: no preprocessor_config.json; using the %s default: sampling_rate=%d, do_normalize=%s",
                directory, default.origin, default.sample_rate, default.do_normalize)
    return dataclasses.replace(default, normalize_eps=eps)


def default_preprocessing(hf: dict, config: BackboneConfig) -> Preprocessing:
    """Without a preprocessor config. Ours: the config we trained with. data2vec-audio: always
    normalised (fairseq data2vec `normalize: true`). HuBERT and MERT: fairseq's recipes pair
    `normalize` with the CNN's norm ("must be consistent with extractor_mode", MERT's configs):
    base / MERT (group norm) raw audio, large / xlarge (layer norm) normalised. The rate is the
    config's `sample_rate` (MERT: 24000) or 16000."""
    if "musicssl" in hf:
        return Preprocessing(config.sample_rate, config.normalize_waveform, FAIRSEQ_NORMALIZE_EPS, "musicssl config")
    model_type = hf.get("model_type")
    if model_type == "data2vec-audio":
        return Preprocessing(config.sample_rate, True, TRANSFORMERS_NORMALIZE_EPS, "data2vec-audio")
    return Preprocessing(config.sample_rate, config.extractor_norm == "layer", TRANSFORMERS_NORMALIZE_EPS,
                         f"{model_type} (feat_extract_norm={config.extractor_norm!r})")
