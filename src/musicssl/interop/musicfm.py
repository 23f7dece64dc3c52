"""Open MusicFM and MuQ model directories as those projects publish them: the same encoder
(models/musicfm.py) under two layouts.

MusicFM (github.com/minzwon/musicfm README):

    DIR/pretrained_msd.pt    torch.save({"state_dict": {"model.<name>": tensor, ...}, ...})
    DIR/msd_stats.json       {"melspec_2048_mean": ..., "melspec_2048_std": ..., ...}

(`fma` instead of `msd` for the FMA model). The .pt is read through the allow-list unpickler
(interop/safe_pickle.py): nothing in it runs. The shapes give the configuration (MusicFM's code
fixes 16 attention heads, from facebook/wav2vec2-conformer-rope-large-960h-ft); the mel
filterbank stored in the state dict is compared with ours, so a checkpoint made with another mel
is refused rather than fed features it never saw.

MuQ (tencent-ailab/MuQ, `MuQ.from_pretrained`: huggingface_hub's PyTorchModelHubMixin):

    DIR/config.json          MuQConfig's fields: encoder_dim, encoder_depth, conv_dim, n_mels,
                             label_rate, stat {melspec_2048_mean, _std}, w2v2_config {...}
    DIR/model.safetensors    (or pytorch_model.bin) {"model.<name>": tensor}: MuQModel's modules

MuQ's mel is a plain object (no buffers in its state dict), its quantiser an RVQ or random
projection (`model.rvq.*`, `model.quantizer_*`), left out of the encoder.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from musicssl.interop.huggingface import read_hf_weights
from musicssl.interop.safe_pickle import load_checkpoint
from musicssl.models.bestrq import mel_filterbank
from musicssl.models.conformer import ConformerConfig
from musicssl.models.musicfm import MelConformer, MusicFMConfig

STATS_KEY = "melspec_2048"  # MusicFM's feature name: the stats file's keys are f"{STATS_KEY}_mean" / "_std"
HEADS = 16  # wav2vec2-conformer-rope-large-960h-ft's num_attention_heads, which MusicFM never changes
# In the state dict, not in the encoder: the pre-training head and quantiser, the cls token, torchaudio's
# buffers, and what transformers' rotary encoder builds but never applies.
NOT_ENCODER = re.compile(r"^(linear\.|cls_token$|quantizer_|preprocessor_|rvq\.|recon_proj\.|"
                         r"conformer\.pos_conv_embed\.|conformer\.embed_positions\.)")
FILTERBANK_KEY = f"preprocessor_{STATS_KEY}.mel_stft.mel_scale.fb"
FILTERBANK_TOLERANCE = 1e-5  # float32 evaluations of the same triangles in another order: ~1e-7 apart


def is_musicfm_dir(path: Path) -> bool:
    return path.is_dir() and not (path / "config.json").exists() and any(path.glob("*_stats.json"))


def is_muq_dir(path: Path) -> bool:
    """config.json with MuQConfig's own fields (transformers' configs have none of them)."""
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        values = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return False  # the transformers loader names the problem
    return isinstance(values, dict) and {"w2v2_config", "encoder_dim", "stat"} <= set(values)


def _one(directory: Path, pattern: str, what: str) -> Path:
    found = sorted(directory.glob(pattern))
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise ValueError(f"{directory}: a MusicFM directory holds exactly one {what} ({pattern}); found {names}")
    return found[0]


def read_stats(path: Path) -> tuple[float, float]:
    try:
        stats = json.loads(path.read_text())
        mean, std = float(stats[f"{STATS_KEY}_mean"]), float(stats[f"{STATS_KEY}_std"])
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a JSON file ({error})") from None
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{path}: no numeric {STATS_KEY}_mean / {STATS_KEY}_std (MusicFM's stats file)") from None
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ValueError(f"{path}: {STATS_KEY}_mean {mean} / _std {std}: need finite values, std > 0")
    return mean, std


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    checkpoint = load_checkpoint(path)
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: no state dict of tensors (MusicFM saves {{'state_dict': {{name: tensor}}}})")
    # MusicFM strips the Lightning module's "model." prefix (`k[6:]`); a bare state dict has none
    return {name[6:] if name.startswith("model.") else name: value for name, value in state.items()}


def config_from_state(state: dict[str, torch.Tensor], mean: float, std: float, source: str) -> MusicFMConfig:
    try:
        conv_dim = state["conv.conv.0.conv1.weight"].shape[0]
        dim, flat = state["conv.linear.weight"].shape
        ffn_dim = state["conformer.layers.0.ffn1.intermediate_dense.weight"].shape[0]
        kernel = state["conformer.layers.0.conv_module.depthwise_conv.weight"].shape[-1]
    except KeyError as error:
        raise ValueError(f"{source}: not a MusicFM state dict (no {error.args[0]})") from None
    layers = 1 + max(int(m.group(1)) for name in state if (m := re.match(r"conformer\.layers\.(\d+)\.", name)))
    conformer = ConformerConfig(dim=dim, num_layers=layers, num_heads=HEADS, ffn_dim=ffn_dim, kernel=kernel,
                                dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, conv_dropout=0.0,
                                layerdrop=0.0)
    return MusicFMConfig(conv_dim=conv_dim, n_mels=4 * flat // conv_dim, conformer=conformer,
                         mel_mean=mean, mel_std=std)


def _check_filterbank(state: dict[str, torch.Tensor], config: MusicFMConfig, source: str) -> None:
    stored = state.get(FILTERBANK_KEY)
    if stored is None:
        return  # a bare encoder state dict: nothing to compare
    ours = mel_filterbank(config.sample_rate, config.n_fft, config.n_mels)
    if stored.shape != ours.shape or float((stored.float() - ours).abs().max()) > FILTERBANK_TOLERANCE:
        raise ValueError(f"{source}: its mel filterbank {tuple(stored.shape)} is not torchaudio's HTK mel of "
                         f"{config.n_mels} bands, n_fft {config.n_fft} at {config.sample_rate} Hz that MusicFM uses")


def _load_encoder(state: dict[str, torch.Tensor], config: MusicFMConfig, source: str) -> MelConformer:
    encoder = MelConformer(config)
    wanted = {name: value for name, value in state.items() if not NOT_ENCODER.match(name)}
    expected = encoder.state_dict()
    missing, unexpected = sorted(set(expected) - set(wanted)), sorted(set(wanted) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{source}: not this encoder's weights: missing {missing[:3]}, unexpected {unexpected[:3]}"
                         f"{' ...' if len(missing) > 3 or len(unexpected) > 3 else ''}")
    for name, value in wanted.items():
        if value.shape != expected[name].shape:
            raise ValueError(f"{source}: {name} has shape {tuple(value.shape)}, the config says "
                             f"{tuple(expected[name].shape)}")
    encoder.load_state_dict(wanted)
    return encoder.eval()


def load_musicfm(directory: str | Path) -> MelConformer:
    """A MusicFM directory -> the encoder in eval mode, every weight checked against its shape."""
    directory = Path(directory)
    mean, std = read_stats(_one(directory, "*_stats.json", "stats file"))
    weights = _one(directory, "*.pt", "checkpoint")
    state = read_state_dict(weights)
    config = config_from_state(state, mean, std, str(weights))
    _check_filterbank(state, config, str(weights))
    return _load_encoder(state, config, str(weights))


def muq_config(values: dict, source: str) -> MusicFMConfig:
    """MuQConfig's fields -> ours; what MuQ's code would build differently is refused by name."""
    w2v2 = values.get("w2v2_config") or {}
    stat = values.get("stat") or {}
    try:
        mean, std = float(stat[f"{STATS_KEY}_mean"]), float(stat[f"{STATS_KEY}_std"])
        folds = 100 // int(values.get("label_rate", 25))
        heads, ffn_dim = int(w2v2["num_attention_heads"]), int(w2v2["intermediate_size"])
        kernel = int(w2v2["conv_depthwise_kernel_size"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{source}: not a MuQ config (stat / label_rate / w2v2_config: {error})") from None
    if w2v2.get("position_embeddings_type", "rotary") != "rotary" or w2v2.get("hidden_act", "swish") not in ("swish", "silu"):
        raise ValueError(f"{source}: w2v2_config asks for position_embeddings_type "
                         f"{w2v2.get('position_embeddings_type')!r}, hidden_act {w2v2.get('hidden_act')!r}; "
                         "MuQ's and ours are rotary and swish")
    strides = {4: (2, 2), 2: (2, 1)}.get(folds)
    if strides is None or values.get("features", ["melspec_2048"]) != ["melspec_2048"]:
        raise ValueError(f"{source}: label_rate {values.get('label_rate')} / features {values.get('features')}: "
                         "MuQ's code builds 25 or 50 Hz models on melspec_2048 only")
    conformer = ConformerConfig(dim=int(values["encoder_dim"]), num_layers=int(values["encoder_depth"]),
                                num_heads=heads, ffn_dim=ffn_dim, kernel=kernel,
                                rotary_base=int(w2v2.get("rotary_embedding_base", 10_000)),
                                layer_norm_eps=float(w2v2.get("layer_norm_eps", 1e-5)), dropout=0.0,
                                attention_dropout=0.0, activation_dropout=0.0, conv_dropout=0.0, layerdrop=0.0)
    return MusicFMConfig(n_mels=int(values.get("n_mels", 128)), mel_hop=int(values.get("hop_length", 240)),
                         conv_dim=int(values.get("conv_dim", 512)), time_strides=strides, conformer=conformer,
                         mel_mean=mean, mel_std=std)


def load_muq(directory: str | Path) -> MelConformer:
    """A MuQ directory -> the encoder in eval mode (MuQ's `output_hidden_states` are its layers)."""
    directory = Path(directory)
    config = muq_config(json.loads((directory / "config.json").read_text()), str(directory / "config.json"))
    state = read_hf_weights(directory)
    prefixed = [name for name in state if not name.startswith("model.")]
    if prefixed:
        raise ValueError(f"{directory}: weights outside MuQ's `model.` ({prefixed[:3]}): not a MuQ directory")
    return _load_encoder({name[6:]: value for name, value in state.items()}, config, str(directory))


def export_muq(encoder: MelConformer, directory: str | Path) -> Path:
    """Write the encoder in MuQ's layout, so that `load_muq` / `extract` read it and so does MuQ's
    own `MuQ.from_pretrained(DIR)`: config.json holds every MuQConfig field and nothing else (MuQ
    builds `MuQConfig(**config)`, which refuses unknown keys), `w2v2_config` every field
    transformers' Wav2Vec2ConformerEncoder reads; model.safetensors the encoder under `model.`
    (MuQ's head and quantiser are not written: its loader is not strict)."""
    from safetensors.torch import save_file

    config, c = encoder.config, encoder.config.conformer
    w2v2 = {"hidden_size": c.dim, "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
            "intermediate_size": c.ffn_dim, "conv_depthwise_kernel_size": c.kernel, "hidden_act": "swish",
            "position_embeddings_type": "rotary", "rotary_embedding_base": c.rotary_base,
            "layer_norm_eps": c.layer_norm_eps, "hidden_dropout": c.dropout, "attention_dropout": c.attention_dropout,
            "activation_dropout": c.activation_dropout, "conformer_conv_dropout": c.conv_dropout,
            "layerdrop": c.layerdrop, "max_source_positions": 5000,
            # the positional conv transformers builds (and a rotary encoder never applies)
            "num_conv_pos_embeddings": 128, "num_conv_pos_embedding_groups": 16, "feat_extract_activation": "gelu",
            # transformers >= 4.4x reads config._attn_implementation, which MuQ's EasyDict config only
            # has if the file says it (without it MuQ's own code fails on a recent transformers)
            "_attn_implementation": "eager"}
    values = {"label_rate": round(config.frame_rate_hz), "num_codebooks": 1, "codebook_dim": 16,
              "codebook_size": 4096, "features": [STATS_KEY], "hop_length": config.mel_hop, "n_mels": config.n_mels,
              "conv_dim": config.conv_dim, "encoder_dim": c.dim, "encoder_depth": c.num_layers, "mask_hop": 0.4,
              "mask_prob": 0.6, "is_flash": False,
              "stat": {f"{STATS_KEY}_mean": config.mel_mean, f"{STATS_KEY}_std": config.mel_std},
              "w2v2_config": w2v2, "use_rvq_target": False, "use_vq_target": False, "use_encodec_target": False,
              "rvq_ckpt_path": None, "recon_loss_ratio": None, "resume_checkpoint": None, "rvq_n_codebooks": 8,
              "rvq_multi_layer_num": 1}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(values, indent=2) + "\n")
    save_file({f"model.{name}": value.detach().cpu().contiguous() for name, value in encoder.state_dict().items()},
              str(directory / "model.safetensors"))
    return directory


def muq_encoder_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The encoder's tensors of a MuQ-layout directory, `model.` stripped (resuming a run)."""
    return {name[6:]: value for name, value in read_hf_weights(directory).items()
            if name.startswith("model.") and not NOT_ENCODER.match(name[6:])}
