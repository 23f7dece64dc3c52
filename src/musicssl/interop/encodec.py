"""An EnCodec 24 kHz checkpoint (the `.th` file `encodec` publishes: a pickled state dict of
`EncodecModel`) -> `EncodecTokenizer`, read by the allow-list unpickler: no code in the file runs.

The names map by one table (`published_names`): ours on the left, EnCodec's on the right. Its
`SEANetEncoder` is one `nn.Sequential` (`encoder.model.i`); a weight-normed conv keeps `weight_g`,
`weight_v` and `bias` under `.conv.conv` (torch's parametrised weight norm, `parametrizations.weight.
original0/1`, is read too). The checkpoint's other tensors are EnCodec's and unread: the decoder,
codebooks 8-31 (the higher bandwidths) and each codebook's training buffers (`inited`,
`cluster_size`, `embed_avg`). Any other key, a missing one, a wrong shape, or a codebook EnCodec
never initialised is refused in one line naming the file (a ValueError: exit 2 at the CLI).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch

from musicssl.interop.safe_pickle import load_checkpoint
from musicssl.models.encodec import EncodecConfig, EncodecTokenizer

CONV_PARTS = ("weight_g", "weight_v", "bias")
LSTM_PARTS = tuple(f"{kind}_{part}_l{layer}" for layer in range(2) for kind in ("weight", "bias")
                   for part in ("ih", "hh"))
CODEBOOK_BUFFERS = ("inited", "cluster_size", "embed", "embed_avg")
# `encodec_24khz-d7cc33bc.th`: EnCodec names its files by the first hex digits of their sha256
PUBLISHED_NAME = re.compile(r"^encodec_\w+-([0-9a-f]{8})$")


def published_names(config: EncodecConfig = EncodecConfig()) -> dict[str, str]:
    """{our parameter: the published state dict's key}, codebooks as `codebooks.s`. `encoder.model` is
    [conv, (residual block, ELU, strided conv) x 4, SLSTM, ELU, conv]: 0, 1-3, 4-6, 7-9, 10-12, 13, 15."""
    convs = {"encoder.stem": "encoder.model.0"}
    for stage in range(len(config.ratios)):
        block = 1 + 3 * stage
        convs |= {f"encoder.stages.{stage}.residual.conv_a": f"encoder.model.{block}.block.1",
                  f"encoder.stages.{stage}.residual.conv_b": f"encoder.model.{block}.block.3",
                  f"encoder.stages.{stage}.residual.shortcut": f"encoder.model.{block}.shortcut",
                  f"encoder.stages.{stage}.down": f"encoder.model.{block + 2}"}
    lstm = 1 + 3 * len(config.ratios)  # 13
    convs["encoder.head"] = f"encoder.model.{lstm + 2}"
    names = {f"{ours}.{part}": f"{theirs}.conv.conv.{part}" for ours, theirs in convs.items() for part in CONV_PARTS}
    names |= {f"encoder.lstm.{part}": f"encoder.model.{lstm}.lstm.{part}" for part in LSTM_PARTS}
    names |= {f"codebooks.{s}": f"quantizer.vq.layers.{s}._codebook.embed" for s in range(config.num_codebooks)}
    return names


def _known_unread(key: str, config: EncodecConfig) -> bool:
    """The published keys we leave: the decoder and the quantiser's other tensors."""
    match = re.fullmatch(r"quantizer\.vq\.layers\.(\d+)\._codebook\.(\w+)", key)
    if match:
        return int(match.group(1)) < config.total_codebooks and match.group(2) in CODEBOOK_BUFFERS
    return key.startswith("decoder.")


def _parametrised(state: dict) -> dict:
    """torch's newer weight norm (`...conv.parametrizations.weight.original0/1`) under the old names."""
    renamed = {}
    for key, value in state.items():
        key = re.sub(r"\.parametrizations\.weight\.original0$", ".weight_g", key)
        renamed[re.sub(r"\.parametrizations\.weight\.original1$", ".weight_v", key)] = value
    return renamed


def _listing(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def encodec_state_dict(state: dict, path: Path, config: EncodecConfig = EncodecConfig()) -> dict[str, torch.Tensor]:
    """Our state dict from the published one; ValueError naming `path` and the first problem."""
    if not all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()):
        raise ValueError(f"{path}: not an EnCodec state dict (expected parameter names -> tensors)")
    state = _parametrised(state)
    if any(key.endswith(".conv.norm.weight") for key in state) or (
            getattr(state.get("encoder.model.0.conv.conv.weight_v"), "shape", (0, 1))[1] == 2):
        raise ValueError(f"{path}: the 48 kHz EnCodec (stereo, group-normed, non-causal); labels are "
                         "EnCodec 24 kHz codes (encodec_24khz-d7cc33bc.th)")
    names = published_names(config)
    wanted = set(names.values())
    missing = [key for key in names.values() if key not in state]
    extra = [key for key in state if key not in wanted and not _known_unread(key, config)]
    if missing:
        raise ValueError(f"{path}: not an EnCodec 24 kHz state dict: missing {_listing(missing)}")
    if extra:
        raise ValueError(f"{path}: not an EnCodec 24 kHz state dict: unexpected {_listing(extra)}")
    expected = _shapes(config)
    for ours, theirs in names.items():
        if tuple(state[theirs].shape) != expected[ours]:
            raise ValueError(f"{path}: {theirs} has shape {tuple(state[theirs].shape)}, EnCodec 24 kHz has "
                             f"{expected[ours]}")
    for s in range(config.num_codebooks):
        inited = state.get(f"quantizer.vq.layers.{s}._codebook.inited")
        if inited is not None and not bool(inited.flatten()[0]):
            raise ValueError(f"{path}: codebook {s} was never initialised (EnCodec fills its codebooks by k-means "
                             "on the first training batch): an untrained model")
    ours = {name: state[key].float() for name, key in names.items() if not name.startswith("codebooks.")}
    ours["codebooks"] = torch.stack([state[names[f"codebooks.{s}"]].float() for s in range(config.num_codebooks)])
    return ours


def _shapes(config: EncodecConfig) -> dict[str, tuple[int, ...]]:
    shapes = {name: tuple(value.shape) for name, value in EncodecTokenizer(config).state_dict().items()}
    codebooks = shapes.pop("codebooks")
    return shapes | {f"codebooks.{s}": codebooks[1:] for s in range(codebooks[0])}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def load_encodec(path: str | Path, config: EncodecConfig = EncodecConfig()) -> tuple[EncodecTokenizer, str]:
    """(the tokenizer in eval mode, the file's sha256). A file named as EnCodec names its downloads
    (`encodec_24khz-d7cc33bc.th`) must start its sha256 with those digits, as `encodec` checks."""
    path = Path(path)
    state = load_checkpoint(path, kind="an EnCodec state dict")
    sha = file_sha256(path)
    named = PUBLISHED_NAME.match(path.stem)
    if named and not sha.startswith(named.group(1)):
        raise ValueError(f"{path}: its sha256 starts {sha[:8]}, its name says {named.group(1)}: a damaged or "
                         "altered download")
    tokenizer = EncodecTokenizer(config)
    tokenizer.load_state_dict(encodec_state_dict(state, path, config))
    return tokenizer.eval(), sha
