"""A MERT-v1 reference built from transformers' own Hubert classes the way MERT's modeling code
(github.com/yizhilll/MERT, scripts/mert_hf/modeling_MERT.py) composes them, and a writer for
MERT's published directory format. No MERT code is imported or copied: MERTModel is a
HubertModel whose __init__ assembles HubertFeatureEncoder, a feature projection (LayerNorm,
Linear, dropout: HubertFeatureProjection when the CQT input is off), `masked_spec_embed` and
HubertEncoder (post-LN) or HubertEncoderStableLayerNorm (pre-LN), and whose forward is
HubertModel's when the CQT input is off."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor
from transformers.models.hubert.modeling_hubert import (HubertEncoder, HubertEncoderStableLayerNorm,
                                                        HubertFeatureEncoder, HubertFeatureProjection,
                                                        HubertPreTrainedModel)

# MERT-v1's CNN: kernels (10, 3, 3, 3, 3, 2, 2), strides (5, 2, ...): hop 320 = 75 Hz at 24 kHz.
MERT_CNN = dict(conv_dim=(512,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2))
# Sizes from MERT's configs (scripts/hf_config/mert_base.json, mert_large.json).
MERT_95M = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                do_stable_layer_norm=False, feat_extract_norm="group", attention_relax=-1.0, **MERT_CNN)
MERT_330M = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                 do_stable_layer_norm=True, feat_extract_norm="group", attention_relax=32.0, **MERT_CNN)
MERT_MICRO = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, do_stable_layer_norm=False,
                  feat_extract_norm="group", attention_relax=-1.0,
                  conv_dim=(16,) * 7, conv_kernel=MERT_CNN["conv_kernel"], conv_stride=MERT_CNN["conv_stride"])

# MERTConfig's own fields and defaults (configuration_MERT.py) that HubertConfig lacks or
# defaults differently; config.json carries them all, as PretrainedConfig.to_dict writes them.
MERT_ONLY_FIELDS = dict(feature_extractor_cqt=False, feature_extractor_cqt_bins=336, deepnorm=False,
                        attention_relax=-1.0, sample_rate=24000, conv_pos_batch_norm=False)


class MertReference(HubertModel):
    """MERTModel with feature_extractor_cqt=False and deepnorm=False, from transformers' classes."""

    def __init__(self, config: HubertConfig):
        HubertPreTrainedModel.__init__(self, config)  # MERT: super(HubertModel, self).__init__(config)
        self.config = config
        self.feature_extractor = HubertFeatureEncoder(config)
        self.feature_projection = HubertFeatureProjection(config)
        if config.mask_time_prob > 0.0 or config.mask_feature_prob > 0.0:
            self.masked_spec_embed = nn.Parameter(torch.empty(config.hidden_size).uniform_())
        self.encoder = HubertEncoderStableLayerNorm(config) if config.do_stable_layer_norm else HubertEncoder(config)
        self.post_init()


def build_reference(shape: dict, seed: int = 0) -> tuple[MertReference, dict]:
    """(random-weight reference in eval mode, the MERT config.json dict)."""
    fields = {k: v for k, v in shape.items() if k not in MERT_ONLY_FIELDS}
    mert_only = {**MERT_ONLY_FIELDS, **{k: v for k, v in shape.items() if k in MERT_ONLY_FIELDS}}
    torch.manual_seed(seed)
    config = HubertConfig(**fields, feat_proj_layer_norm=True, conv_pos_batch_norm=mert_only["conv_pos_batch_norm"])
    model = MertReference(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # transformers' init leaves biases 0 and norms 1: a mapping bug could hide
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
    mert_json = config.to_dict()
    mert_json.update(mert_only, model_type="mert_model", architectures=["MERTModel"],
                     auto_map={"AutoConfig": "configuration_MERT.MERTConfig", "AutoModel": "modeling_MERT.MERTModel"})
    return model, mert_json


def save_mert_format(model: MertReference, mert_json: dict, directory: Path, weights: str = "bin") -> Path:
    """config.json (MERT's fields), preprocessor_config.json (24 kHz, no normalisation, as MERT's
    fairseq configs train: `normalize: false`) and weights: pytorch_model.bin with the legacy
    weight_g / weight_v names (transformers 4.x, which MERT-v1 was saved with) or safetensors."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(mert_json, indent=2))
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=mert_json["sample_rate"], padding_value=0.0,
                             do_normalize=False, return_attention_mask=True).save_pretrained(directory)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if weights == "bin":
        state = {k.replace("parametrizations.weight.original0", "weight_g")
                  .replace("parametrizations.weight.original1", "weight_v"): v for k, v in state.items()}
        torch.save(state, directory / "pytorch_model.bin")
    else:
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def reference_hidden_states(model: MertReference, wav: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What `extract` returns: the block outputs, the last after a pre-LN model's final LayerNorm."""
    with torch.no_grad():
        out = model(wav, output_hidden_states=True)
    return out.hidden_states[:-1] + (out.last_hidden_state,)
