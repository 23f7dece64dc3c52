"""fairseq checkpoints (HuBERT, data2vec-audio, MERT) -> a transformers-native directory.

`musicssl convert fairseq CKPT.pt OUT_DIR` writes config.json (with our full config under
"musicssl"), model.safetensors and preprocessor_config.json, which `load_model` and
transformers' HubertModel / Data2VecAudioModel read; plus `training_state/`:
- `heads.safetensors`: every tensor that is not backbone, under its fairseq name: HuBERT / MERT
  `final_proj.*` and `label_embs_concat`, data2vec `final_proj.*` and the EMA teacher
  (`_ema.<name>`), MERT's reconstruction heads. Nothing in the checkpoint is dropped.
- `fairseq.json`: the checkpoint's model and task config as plain JSON, and what was kept.

The pickle is read with an allow-list unpickler (`safe_pickle`): no code in it runs. The
architecture comes from the checkpoint's `cfg` (OmegaConf, fairseq >= 0.10) or `args`
(argparse, older); the input rate and normalisation from its task config. Options that change
the computation and are not implemented are refused by name.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from musicssl.interop.huggingface import export_pretrained
from musicssl.interop.safe_pickle import load_checkpoint, to_python
from musicssl.models.backbone import Backbone
from musicssl.models.backbone_config import BackboneConfig

# (fairseq name, our name, condition). {i} = an index, {p} = weight|bias, {b} = a BatchNorm
# tensor. Conditions: "group" / "layer" = CNN norm, "wn" = weight-normed pos conv, "bn" =
# conv_pos_batch_norm, "d2v" = data2vec's stacked pos convs, None = always.
NAME_TABLE: list[tuple[str, str, str | None]] = [
    ("feature_extractor.conv_layers.{i}.0.{p}", "feature_extractor.conv_layers.{i}.conv.{p}", None),
    ("feature_extractor.conv_layers.0.2.{p}", "feature_extractor.conv_layers.0.norm.{p}", "group"),
    ("feature_extractor.conv_layers.{i}.2.1.{p}", "feature_extractor.conv_layers.{i}.norm.{p}", "layer"),
    ("layer_norm.{p}", "feature_projection.layer_norm.{p}", None),
    ("post_extract_proj.{p}", "feature_projection.projection.{p}", None),
    ("mask_emb", "mask_embedding", None),
    ("encoder.pos_conv.0.weight_g", "encoder.pos_conv.convs.0.weight_g", "wn"),
    ("encoder.pos_conv.0.weight_v", "encoder.pos_conv.convs.0.weight_v", "wn"),
    ("encoder.pos_conv.0.bias", "encoder.pos_conv.convs.0.bias", "wn"),
    ("encoder.pos_conv.0.{b}", "encoder.pos_conv.batch_norm.{b}", "bn"),
    ("encoder.pos_conv.1.{p}", "encoder.pos_conv.convs.0.{p}", "bn"),
    ("encoder.pos_conv.{i}.0.{p}", "encoder.pos_conv.convs.{i}.{p}", "d2v"),
    ("encoder.layer_norm.{p}", "encoder.layer_norm.{p}", None),
    ("encoder.layers.{i}.self_attn.{proj}.{p}", "encoder.layers.{i}.attention.{proj}.{p}", None),
    ("encoder.layers.{i}.self_attn_layer_norm.{p}", "encoder.layers.{i}.attention_layer_norm.{p}", None),
    ("encoder.layers.{i}.fc1.{p}", "encoder.layers.{i}.feed_forward.fc1.{p}", None),
    ("encoder.layers.{i}.fc2.{p}", "encoder.layers.{i}.feed_forward.fc2.{p}", None),
    ("encoder.layers.{i}.final_layer_norm.{p}", "encoder.layers.{i}.final_layer_norm.{p}", None),
]
_GROUPS = {"{i}": r"(?P<i>\d+)", "{p}": r"(?P<p>weight|bias)", "{proj}": r"(?P<proj>[qkv]_proj|out_proj)",
           "{b}": r"(?P<b>weight|bias|running_mean|running_var|num_batches_tracked)"}
MODEL_NAMES = {"hubert": "hubert", "mert": "hubert", "data2vec_audio": "data2vec"}


def _pattern(template: str) -> re.Pattern:
    escaped = re.escape(template)
    for key, group in _GROUPS.items():
        escaped = escaped.replace(re.escape(key), group)
    return re.compile(escaped + "$")


_PATTERNS = [(_pattern(fairseq), ours, condition) for fairseq, ours, condition in NAME_TABLE]


def our_name(name: str, conditions: set[str]) -> str | None:
    for pattern, ours, condition in _PATTERNS:
        if condition is not None and condition not in conditions:
            continue
        match = pattern.match(name)
        if match:
            return ours.format(**match.groupdict())
    return None


# ---------------------------------------------------------------------------------------------
# config


def parse_conv_layers(text: str, source: str) -> tuple[tuple[int, int, int], ...]:
    """fairseq's `conv_feature_layers`, e.g. "[(512,10,5)] + [(512,3,2)] * 4", which fairseq
    eval()s; here only list/tuple literals of ints joined by + and * are accepted."""
    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(item) for item in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Mult) and max((x for x in (left, right) if isinstance(x, int)), default=0) > 64:
                raise ValueError(f"{source}: conv_feature_layers {text!r} repeats a layer more than 64 times")
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"{source}: conv_feature_layers {text!r} is not a list of (dim, kernel, stride)")
    try:
        layers = value(ast.parse(text, mode="eval").body)
    except SyntaxError:
        raise ValueError(f"{source}: conv_feature_layers {text!r} does not parse") from None
    if not layers or not all(isinstance(layer, tuple) and len(layer) == 3 for layer in layers):
        raise ValueError(f"{source}: conv_feature_layers {text!r} is not a list of (dim, kernel, stride)")
    return tuple(layers)


def model_and_task_config(state: dict, source: str) -> tuple[str, dict, dict]:
    """(model name, model config, task config) as plain dicts, from `cfg` or legacy `args`."""
    cfg = to_python(state.get("cfg")) if state.get("cfg") is not None else None
    if cfg:
        model, task = cfg.get("model") or {}, cfg.get("task") or {}
        name = model.get("_name")
    elif state.get("args") is not None:
        model = task = to_python(state["args"])
        name = model.get("arch")
    else:
        raise ValueError(f"{source}: neither cfg nor args: not a fairseq training checkpoint")
    if name not in MODEL_NAMES:
        raise ValueError(f"{source}: model {name!r} is not supported (expected one of {sorted(MODEL_NAMES)})")
    return name, model, task


def _refuse_unsupported(model: dict, source: str) -> None:
    checks = {
        "activation_fn": ("gelu", "only gelu"), "layer_type": ("transformer", "only the plain Transformer"),
        "pos_enc_type": ("abs", "only the convolutional positional embedding"),
        "feature_extractor_cqt": (False, "MERT's CQT input features are not implemented"),
        "deepnorm": (False, "MERT's deepnorm residual scaling is not implemented"),
        "subln": (False, "MERT's sub-LayerNorm is not implemented"),
        "do_cnn_feat_stable_layernorm": (False, "MERT's non-affine feature LayerNorms are not implemented"),
    }
    # MERT's attention_relax (> 0 in MERT-330M) is a shift of the softmax logits: identical
    # output (see interop/huggingface.py `_check_mert_options`), so it is accepted.
    for key, (wanted, why) in checks.items():
        if key in model and model[key] not in (wanted, None):
            raise ValueError(f"{source}: {key}={model[key]!r} is not supported ({why})")


def backbone_config(name: str, model: dict, task: dict, source: str) -> BackboneConfig:
    """Our BackboneConfig from fairseq's model and task config (field names are fairseq's)."""
    _refuse_unsupported(model, source)
    variant = MODEL_NAMES[name]
    mode = model.get("extractor_mode", "default")
    if mode not in ("default", "layer_norm"):
        raise ValueError(f"{source}: extractor_mode={mode!r} is not supported")
    conv_pos, depth = int(model.get("conv_pos", 128)), int(model.get("pos_conv_depth", 1) or 1)
    if variant == "data2vec":
        kernel = max(3, conv_pos // depth) if depth > 1 else conv_pos  # fairseq TransformerEncoder
    else:
        if depth != 1:
            raise ValueError(f"{source}: pos_conv_depth={depth} with {name} is not supported")
        kernel = conv_pos
    return BackboneConfig(
        variant=variant, extractor_norm="group" if mode == "default" else "layer",
        conv_layers=parse_conv_layers(str(model.get("conv_feature_layers")), source),
        conv_bias=bool(model.get("conv_bias", False)), dim=int(model["encoder_embed_dim"]),
        ffn_dim=int(model["encoder_ffn_embed_dim"]), num_layers=int(model["encoder_layers"]),
        num_heads=int(model["encoder_attention_heads"]), pos_conv_kernel=kernel,
        pos_conv_groups=int(model.get("conv_pos_groups", 16)), pos_conv_depth=depth,
        pos_conv_batch_norm=bool(model.get("conv_pos_batch_norm", False)),
        layer_norm_first=bool(model.get("layer_norm_first", False)),
        dropout=float(model.get("dropout", 0.1)), attention_dropout=float(model.get("attention_dropout", 0.1)),
        activation_dropout=float(model.get("activation_dropout", 0.0)),
        input_dropout=float(model.get("dropout_input", 0.0)), layerdrop=float(model.get("encoder_layerdrop", 0.0)),
        feature_grad_mult=float(model.get("feature_grad_mult", 1.0)),
        # MERT can also normalise inside the model (wav_normalize: one layer_norm over the whole
        # (B, N) batch tensor, which is per-utterance for one recording, as extraction runs).
        normalize_waveform=bool(task.get("normalize", False) or model.get("wav_normalize", False)),
        sample_rate=int(task.get("sample_rate", 16_000)))


# ---------------------------------------------------------------------------------------------
# weights


def _flatten(state: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """data2vec stores its EMA teacher as a nested dict under `_ema`: flatten to `_ema.<name>`."""
    flat = {}
    for name, value in state.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{name}."))
        elif isinstance(value, torch.Tensor):
            flat[f"{prefix}{name}"] = value
    return flat


def split_weights(model_state: dict, config: BackboneConfig,
                  source: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(our backbone state dict, every other tensor under its fairseq name)."""
    conditions = {config.extractor_norm}
    if config.variant == "data2vec":
        conditions.add("d2v")
    else:
        conditions.add("bn" if config.pos_conv_batch_norm else "wn")
    ours, heads = {}, {}
    for name, tensor in _flatten(model_state).items():
        target = our_name(name, conditions)
        if target is None:
            heads[name] = tensor
        elif target in ours:
            raise ValueError(f"{source}: two tensors map to {target!r}")
        else:
            ours[target] = tensor
    return ours, heads


def convert_fairseq(checkpoint: str | Path, out_dir: str | Path) -> tuple[Path, BackboneConfig, list[str]]:
    """Write OUT_DIR; returns (OUT_DIR, the config, the names kept in training_state/heads)."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    state = load_checkpoint(checkpoint)
    name, model_cfg, task_cfg = model_and_task_config(state, str(checkpoint))
    config = backbone_config(name, model_cfg, task_cfg, str(checkpoint))
    if not isinstance(state.get("model"), dict):
        raise ValueError(f"{checkpoint}: no 'model' state dict")
    ours, heads = split_weights(state["model"], config, str(checkpoint))
    backbone = Backbone(config)
    expected = backbone.state_dict()
    missing = sorted(set(expected) - set(ours))
    if missing:
        raise ValueError(f"{checkpoint}: the {name} config implies weights the checkpoint lacks: {missing[:5]}")
    for key, tensor in ours.items():
        if tensor.shape != expected[key].shape:
            raise ValueError(f"{checkpoint}: {key} has shape {tuple(tensor.shape)}, the config implies "
                             f"{tuple(expected[key].shape)}")
    backbone.load_state_dict({k: v.float() for k, v in ours.items()})
    export_pretrained(backbone, out_dir)
    _write_training_state(out_dir, heads, name, model_cfg, task_cfg, checkpoint)
    return out_dir, config, sorted(heads)


def _write_training_state(out_dir: Path, heads: dict, name: str, model_cfg: dict, task_cfg: dict,
                          checkpoint: Path) -> None:
    state_dir = out_dir / "training_state"
    state_dir.mkdir(exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in heads.items()}, str(state_dir / "heads.safetensors"))
    summary = {"source": str(checkpoint), "format": "fairseq", "model": name, "heads": sorted(heads),
               "model_cfg": model_cfg, "task_cfg": task_cfg}
    (state_dir / "fairseq.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
