"""MERT-v1's published directory format (m-a-p/MERT-v1-95M, -330M), written and read.

A MERT-v1 directory is a transformers directory of `model_type: "mert_model"`: config.json with
HubertConfig's fields plus MERT's own (configuration_MERT.py: `feature_extractor_cqt`,
`feature_extractor_cqt_bins`, `deepnorm`, `attention_relax`, `sample_rate`, `conv_pos_batch_norm`),
preprocessor_config.json (Wav2Vec2FeatureExtractor at 24 kHz, `do_normalize: false` as MERT's
fairseq recipes train), and the weights under HubertModel's names, the positional conv's weight norm
as `weight_g` / `weight_v` (the transformers 4.x names MERT-v1 was saved with; transformers 5 maps
them onto its parametrization when it loads). We write `model.safetensors` (no pickle).

Who reads it: our `load_model` / `extract` / `benchmark` (interop/huggingface.py), natively; and
transformers' `HubertModel.from_pretrained(DIR)` with the same weights and the same hidden states
(MERTModel with `feature_extractor_cqt` and `deepnorm` off is HubertModel's modules and forward;
tests/train/test_pretrain_mert.py). MERT's own `AutoModel.from_pretrained(DIR,
trust_remote_code=True)` needs its two code files (configuration_MERT.py, modeling_MERT.py, from a
published MERT-v1 repository) copied into DIR; `auto_map` points at them, as the published one does.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from musicssl.config import read_json
from musicssl.interop.huggingface import (MERT_MODEL_TYPE, load_pretrained, preprocessor_config,
                                          to_hf_state_dict)
from musicssl.models.backbone import Backbone
from musicssl.models.backbone_config import BackboneConfig

# BackboneConfig fields that fix the weights' shapes or the inference forward: an `--init`
# directory decides them; the recipe (dropouts, LayerDrop, feature_grad_mult) stays the preset's.
ARCHITECTURE_FIELDS = ("variant", "extractor_norm", "conv_layers", "conv_bias", "dim", "ffn_dim", "num_layers",
                       "num_heads", "pos_conv_kernel", "pos_conv_groups", "pos_conv_depth", "pos_conv_batch_norm",
                       "layer_norm_first", "layer_norm_eps", "normalize_waveform", "sample_rate")
# Our name -> config.json's key, for messages.
CONFIG_KEYS = {"extractor_norm": "feat_extract_norm", "conv_layers": "conv_dim/conv_kernel/conv_stride",
               "dim": "hidden_size", "ffn_dim": "intermediate_size", "num_layers": "num_hidden_layers",
               "num_heads": "num_attention_heads", "pos_conv_kernel": "num_conv_pos_embeddings",
               "pos_conv_groups": "num_conv_pos_embedding_groups", "pos_conv_batch_norm": "conv_pos_batch_norm",
               "layer_norm_first": "do_stable_layer_norm",
               "normalize_waveform": "preprocessor_config.json do_normalize",
               "sample_rate": "sample_rate"}
LEGACY_WEIGHT_NORM = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}


def mert_config_json(config: BackboneConfig, attention_relax: float = -1.0) -> dict:
    """config.json as MERT-v1's: HubertConfig's fields (its defaults where ours has no value: the
    fine-tuning and SpecAugment options) and MERTConfig's, with our architecture and dropouts."""
    if config.variant != "hubert" or config.pos_conv_depth != 1:
        raise ValueError("MERT-v1's format holds a HuBERT-variant backbone (one weight-normed positional conv); "
                         f"this one is variant {config.variant!r}, pos_conv_depth {config.pos_conv_depth}")
    return {
        "architectures": ["MERTModel"], "model_type": MERT_MODEL_TYPE, "torch_dtype": "float32",
        "auto_map": {"AutoConfig": "configuration_MERT.MERTConfig", "AutoModel": "modeling_MERT.MERTModel"},
        # MERTConfig's own (configuration_MERT.py); CQT input features and DeepNorm off as in MERT-v1
        "sample_rate": config.sample_rate, "feature_extractor_cqt": False, "feature_extractor_cqt_bins": 336,
        "deepnorm": False, "attention_relax": attention_relax, "conv_pos_batch_norm": config.pos_conv_batch_norm,
        # HubertConfig's architecture
        "hidden_size": config.dim, "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
        "intermediate_size": config.ffn_dim, "hidden_act": "gelu", "layer_norm_eps": config.layer_norm_eps,
        "feat_extract_norm": config.extractor_norm, "feat_extract_activation": "gelu",
        "feat_proj_layer_norm": True, "do_stable_layer_norm": config.layer_norm_first,
        "num_feat_extract_layers": len(config.conv_layers),
        "conv_dim": [c for c, _, _ in config.conv_layers], "conv_kernel": [k for _, k, _ in config.conv_layers],
        "conv_stride": [s for _, _, s in config.conv_layers], "conv_bias": config.conv_bias,
        "num_conv_pos_embeddings": config.pos_conv_kernel, "num_conv_pos_embedding_groups": config.pos_conv_groups,
        # the training recipe's dropouts (fairseq dropout, attention_dropout, activation_dropout,
        # dropout_input, encoder_layerdrop)
        "hidden_dropout": config.dropout, "attention_dropout": config.attention_dropout,
        "activation_dropout": config.activation_dropout, "feat_proj_dropout": config.input_dropout,
        "layerdrop": config.layerdrop,
        # HubertConfig's defaults, as MERT-v1's config.json carries them (fine-tuning heads, SpecAugment;
        # mask_time_prob > 0 is what makes transformers create `masked_spec_embed`)
        "initializer_range": 0.02, "final_dropout": 0.1, "vocab_size": 32, "pad_token_id": 0, "bos_token_id": 1,
        "eos_token_id": 2, "apply_spec_augment": True, "mask_time_prob": 0.05, "mask_time_length": 10,
        "mask_time_min_masks": 2, "mask_feature_prob": 0.0, "mask_feature_length": 10, "mask_feature_min_masks": 0,
        "ctc_loss_reduction": "sum", "ctc_zero_infinity": False, "use_weighted_layer_sum": False,
        "classifier_proj_size": 256,
    }


def export_mert(backbone: Backbone, directory: str | Path, attention_relax: float = -1.0) -> Path:
    """Write `backbone` into `directory` as a MERT-v1 directory (config.json, preprocessor_config.json,
    model.safetensors). Our loader reads it back to the same computation, bit for bit."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = backbone.config
    (directory / "config.json").write_text(json.dumps(mert_config_json(config, attention_relax), indent=2) + "\n")
    # MERT-v1: Wav2Vec2FeatureExtractor, sampling_rate 24000, do_normalize false, attention mask returned
    preprocessor = {**preprocessor_config(config), "return_attention_mask": True}
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    state = {}
    for name, tensor in to_hf_state_dict(backbone.state_dict(), "hubert").items():
        for new, legacy in LEGACY_WEIGHT_NORM.items():
            name = name.replace(new, legacy)
        state[name] = tensor
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def load_mert(directory: str | Path, what: str = "--init") -> Backbone:
    """A MERT-v1 directory's backbone (weights and config), for continued pre-training. Anything
    else (another model type, a missing or damaged file) is a ValueError naming the file."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{config_path}: missing; {what} takes a MERT-v1 directory "
                         "(config.json, preprocessor_config.json, model.safetensors or pytorch_model.bin)")
    hf = read_json(config_path)
    model_type = hf.get("model_type") if isinstance(hf, dict) else None
    if model_type != MERT_MODEL_TYPE:
        raise ValueError(f"{config_path}: model_type {model_type!r}, not a MERT-v1 directory "
                         f"(model_type {MERT_MODEL_TYPE!r}); {what} continues a MERT-v1 model")
    return load_pretrained(directory)[0]  # its config holds preprocessor_config.json's rate and normalisation


def architecture_conflicts(preset: BackboneConfig, requested: BackboneConfig, found: BackboneConfig) -> list[str]:
    """Architecture fields the command line set (`requested` differs from the `preset`) to a value the
    directory's model does not have (`found`)."""
    return [f"{name}={getattr(requested, name)!r} ({CONFIG_KEYS.get(name, name)} gives "
            f"{getattr(found, name)!r})" for name in ARCHITECTURE_FIELDS
            if getattr(requested, name) != getattr(preset, name) and getattr(requested, name) != getattr(found, name)]
