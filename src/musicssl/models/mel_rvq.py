"""MuQ's Mel-RVQ: a small residual vector quantiser over stacked log-mel frames, trained once on the
corpus and then frozen; its codes are the targets MuQ predicts (docs/method.md §9).

    wav (24 kHz) ─> log-mel dB (100 Hz, 128 bands) ─> (x - mean) / std ─> stack 4 frames (25 Hz, 512-d)
        ─> stage s = 1..8:  residual ─> in-proj (512 -> 16) ─> nearest L2-normalised code of 1,024
                            ─> code vector ─> out-proj (16 -> 512) ─> reconstruction += it, residual -= it
        codes (B, T, 8); loss = 0.25 commitment + 1.0 codebook + L1(stacked frames - reconstruction)

The quantiser mirrors `ResidualVectorQuantize` of tencent-ailab/MuQ `src/muq/muq/modules/rvq.py`
(d4a6658, identical in the `muq` 0.1.0 package; [RVQ] in the comments): its parameter names and
shapes (a state dict of MuQ's loads unchanged), its initialisation stream (a seed gives MuQ's
weights bit for bit) and its float32 operations in its (B, D, T) layout (kernel-1 convolutions, the
distance formula, the straight-through sum), so the same weights give the same codes bit for bit
and the same losses (tests/targets/test_mel_rvq.py, `make parity-muq`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from musicssl.config import Registry
from musicssl.models.bestrq import LogMel, stack_frames

FORMAT = "musicssl-mel-rvq"  # config.json's "format": what load_mel_rvq accepts


@dataclass(frozen=True)
class MelRVQConfig:
    # The mel MuQ computes (MuQModel L57-59: MelSTFT n_fft 2048, hop_length 240; features.py: 24 kHz,
    # 128 mels, power to dB), the last frame dropped (MuQModel.preprocessing L198): 100 Hz frames.
    sample_rate: int = 24_000
    n_fft: int = 2048
    mel_hop: int = 240
    n_mels: int = 128
    # 100 // label_rate 25 = 4 frames side by side, frame-major ("b f (t s) -> b t (s f)", MuQModel L241): 25 Hz.
    frames_per_token: int = 4
    # One global mean / std of the dB-mel (MuQ's stat dict; MSD: 6.768 / 18.418). None until measured.
    mel_mean: float | None = None
    mel_std: float | None = None
    num_codebooks: int = 8  # MuQConfig.rvq_n_codebooks
    codebook_size: int = 1024  # MuQModel L75
    code_dim: int = 16  # MuQModel L76
    # Calls in which a code went unused before it is replaced by a random input: ResidualVectorQuantize's
    # default, which MuQ does not override [RVQ L157].
    stale_tolerance: int = 100
    # The training loss [RVQ L255, and the fitting script's `loss` string]: weights of its three terms.
    commitment_weight: float = 0.25
    codebook_weight: float = 1.0
    reconstruction_weight: float = 1.0
    init_seed: int = 0  # the weights are torch.manual_seed(init_seed) followed by MuQ's constructor

    def __post_init__(self) -> None:
        if (self.mel_mean is None) != (self.mel_std is None) or (self.mel_std is not None and self.mel_std <= 0):
            raise ValueError(f"mel_mean and mel_std go together, std > 0; got {self.mel_mean}, {self.mel_std}")
        if min(self.num_codebooks, self.codebook_size, self.code_dim, self.frames_per_token, self.stale_tolerance) < 1:
            raise ValueError("num_codebooks, codebook_size, code_dim, frames_per_token and stale_tolerance "
                             "must be >= 1")
        if self.n_fft // 2 + 1 < self.n_mels:
            raise ValueError(f"n_fft {self.n_fft} gives {self.n_fft // 2 + 1} bins, fewer than n_mels {self.n_mels}")

    @property
    def token_dim(self) -> int:
        return self.n_mels * self.frames_per_token  # 512

    @property
    def token_hop(self) -> int:
        return self.mel_hop * self.frames_per_token  # 960 samples = 40 ms

    @property
    def token_rate_hz(self) -> float:
        return self.sample_rate / self.token_hop  # 25.0


MEL_RVQ_PRESETS: Registry[MelRVQConfig] = Registry("Mel-RVQ preset", {
    "base": MelRVQConfig(),  # MuQ's
    # CPU tests and tiny MuQ runs: the same mel and tokens, 4 stages of 256 codes (a smaller head to
    # predict), stale codes replaced after 20 unused calls because a tiny fit has few steps [ours].
    "tiny": MelRVQConfig(num_codebooks=4, codebook_size=256, stale_tolerance=20),
    # MERT's grid (docs/method.md §10.3): a token per 320-sample mel frame, 75 Hz at 24 kHz, 8 codebooks of
    # 1,024 as EnCodec's, in place of the EnCodec codes MERT trains on [ours].
    "mert75": MelRVQConfig(mel_hop=320, frames_per_token=1),
})


def mel_rvq_config(preset: str, **changes) -> MelRVQConfig:
    return dataclasses.replace(MEL_RVQ_PRESETS[preset], **changes)


# ---------------------------------------------------------------------------------------------
# one stage


class WeightNormConv1x1(nn.Module):
    """MuQ's `WNConv1d(..., kernel_size=1)`: a kernel-1 Conv1d under torch's weight_norm (dim 0), so
    weight = weight_g * weight_v / |weight_v| per output channel. Kept as a convolution over (B, C, T),
    with MuQ's parameter names and shapes, because a Linear sums in another order (codes near a tie
    would differ from MuQ's). Initialised as nn.Conv1d is, from `generator`."""

    def __init__(self, in_channels: int, out_channels: int, generator: torch.Generator):
        super().__init__()
        weight = torch.empty(out_channels, in_channels, 1)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)  # nn.Conv1d.reset_parameters
        bound = 1 / math.sqrt(in_channels)
        bias = torch.empty(out_channels).uniform_(-bound, bound, generator=generator)
        self.weight_g = nn.Parameter(torch.norm_except_dim(weight, 2, 0))  # (out, 1, 1)
        self.weight_v = nn.Parameter(weight)  # (out, in, 1)
        self.bias = nn.Parameter(bias)  # (out,)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in, T) -> (B, out, T)."""
        return F.conv1d(x, torch._weight_norm(self.weight_v, self.weight_g, 0), self.bias)


class QuantizerStage(nn.Module):
    """One of MuQ's `VectorQuantize` (n_layer 1): factorised codes (lookup in 16 dims after a
    projection) and L2-normalised lookup (cosine), both from Improved VQGAN, as MuQ has them."""

    def __init__(self, input_dim: int, codebook_size: int, code_dim: int, stale_tolerance: int,
                 generator: torch.Generator):
        super().__init__()
        self.in_proj = WeightNormConv1x1(input_dim, code_dim, generator)  # [RVQ L41]
        self.out_proj = WeightNormConv1x1(code_dim, input_dim, generator)  # [RVQ L42]
        codes = torch.empty(codebook_size, code_dim).normal_(generator=generator)  # nn.Embedding's N(0, 1)
        self.codebook = nn.Embedding(codebook_size, code_dim, _weight=codes)  # [RVQ L57]
        # Calls in a row each code went unused; float as MuQ's [RVQ L58], so its state dict loads.
        self.register_buffer("stale_counter", torch.zeros(codebook_size))
        self.stale_tolerance = stale_tolerance

    def forward(self, z: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """z (B, D, T) -> out (B, D, T) this stage's reconstruction (straight-through), commitment and
        codebook losses (B,), codes (B, T), replaced (number of stale codes replaced, training only)."""
        z_e = self.in_proj(z)  # (B, E, T)
        codes, replaced = self.nearest_codes(z_e, generator)
        z_q = self.codebook(codes).transpose(1, 2)  # (B, E, T), the un-normalised code vectors [RVQ L121]
        commitment = F.mse_loss(z_e, z_q.detach(), reduction="none").mean([1, 2])  # moves the projection
        codebook = F.mse_loss(z_q, z_e.detach(), reduction="none").mean([1, 2])  # moves the codes
        z_q = z_e + (z_q - z_e).detach()  # straight-through gradient, MuQ's sum (not z_q itself) [RVQ L92]
        return {"out": self.out_proj(z_q), "commitment": commitment, "codebook": codebook, "codes": codes,
                "replaced": replaced}

    def nearest_codes(self, z_e: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """(B, E, T) -> codes (B, T): the nearest code after L2-normalising both, by MuQ's expanded
        distance [RVQ L107-120]. In training, codes unused for `stale_tolerance` calls are replaced."""
        batch = z_e.shape[0]
        encodings = F.normalize(z_e.transpose(1, 2).reshape(-1, z_e.shape[1]))  # (B*T, E)
        codebook = F.normalize(self.codebook.weight)  # (K, E)
        distance = (encodings.pow(2).sum(1, keepdim=True) - 2 * encodings @ codebook.t()
                    + codebook.pow(2).sum(1, keepdim=True).t())  # (B*T, K)
        codes = (-distance).max(1)[1].reshape(batch, -1)  # (B, T)
        replaced = torch.zeros((), dtype=torch.long, device=z_e.device)
        if self.training:
            replaced = self._replace_stale_codes(codes, encodings.detach(), generator)
        return codes, replaced

    @torch.no_grad()
    def _replace_stale_codes(self, codes: Tensor, encodings: Tensor, generator: torch.Generator | None) -> Tensor:
        """MuQ's stale-code replacement [RVQ L123-139]: a code unused in `stale_tolerance` calls in a
        row becomes a random one of this call's normalised inputs (the code list cycles when the call has
        fewer inputs than codes). `generator` draws the permutation (MuQ: the global generator)."""
        size = self.stale_counter.shape[0]
        stale = (torch.bincount(codes.reshape(-1), minlength=size) == 0).float()  # (K,)
        self.stale_counter.copy_(self.stale_counter * stale + stale)
        replace = (self.stale_counter == self.stale_tolerance).float()  # (K,)
        if replace.sum() == 0:
            return torch.zeros((), dtype=torch.long, device=codes.device)
        order = torch.randperm(encodings.shape[0], generator=generator).to(encodings.device)
        pool = encodings[order]  # (B*T, E)
        if pool.shape[0] < size:
            pool = torch.cat([pool] * (size // pool.shape[0] + 1), 0)
        pool = pool[:size]  # (K, E)
        weight = self.codebook.weight
        weight.copy_(weight * (1 - replace).unsqueeze(-1) + pool * replace.unsqueeze(-1))
        self.stale_counter.copy_(self.stale_counter * (1 - replace))
        return replace.sum().long()


# ---------------------------------------------------------------------------------------------
# the tokenizer


class MelRVQ(nn.Module):
    def __init__(self, config: MelRVQConfig):
        super().__init__()
        self.config = config
        self.log_mel = LogMel(config.sample_rate, config.n_fft, config.mel_hop, config.n_mels)
        # MuQ builds its stages from the global generator after torch.manual_seed; ours draws the
        # same stream from its own generator: in_proj, out_proj, codebook, stage after stage.
        generator = torch.Generator().manual_seed(config.init_seed)
        self.quantizers = nn.ModuleList([
            QuantizerStage(config.token_dim, config.codebook_size, config.code_dim, config.stale_tolerance, generator)
            for _ in range(config.num_codebooks)])
        # The statistics the codes were fitted with, kept with the weights: load_mel_rvq checks them
        # against config.json (float32: MPS has no float64; the config keeps the exact values). NaN until measured.
        mean, std = (config.mel_mean, config.mel_std) if config.mel_mean is not None else (math.nan, math.nan)
        self.register_buffer("mel_statistics", torch.tensor([mean, std], dtype=torch.float32))

    def features(self, wav: Tensor) -> Tensor:
        """(B, n) 24 kHz waveform -> (B, 512, n // 960) normalised stacked log-mel, MuQ's layout."""
        config = self.config
        if config.mel_mean is None:
            raise ValueError("MelRVQConfig.mel_mean / mel_std are unset: measure them on the corpus first "
                             "(musicssl rvq fit does)")
        mel = (self.log_mel(wav) - config.mel_mean) / config.mel_std  # (B, n // 240, 128)
        return stack_frames(mel, config.frames_per_token).transpose(1, 2)  # (B, 512, T)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """x (B, 512, T) stacked frames -> MuQ's `ResidualVectorQuantize.forward` without quantizer
        dropout (MuQ's 0.0): `reconstruction` (B, 512, T), `codes` (B, S, T), the commitment and
        codebook losses summed over stages (each the batch mean of per-item means), `replaced` (S,)."""
        reconstruction: Tensor | int = 0
        residual = x
        commitment: Tensor | int = 0
        codebook: Tensor | int = 0
        codes, replaced = [], []
        for stage in self.quantizers:
            out = stage(residual, generator)
            reconstruction = reconstruction + out["out"]
            residual = residual - out["out"]  # the next stage quantises what is left, gradient included
            commitment = commitment + out["commitment"].mean()
            codebook = codebook + out["codebook"].mean()
            codes.append(out["codes"])
            replaced.append(out["replaced"])
        return {"reconstruction": reconstruction, "codes": torch.stack(codes, dim=1), "commitment_loss": commitment,
                "codebook_loss": codebook, "replaced": torch.stack(replaced)}

    def loss(self, x: Tensor, out: dict[str, Tensor]) -> dict[str, Tensor]:
        """MuQ's `get_loss`: weighted commitment + codebook loss + mean |x - reconstruction| (L1)."""
        config = self.config
        reconstruction = (x - out["reconstruction"]).abs().mean()
        loss = (out["commitment_loss"] * config.commitment_weight + out["codebook_loss"] * config.codebook_weight
                + reconstruction * config.reconstruction_weight)
        return {"loss": loss, "commitment_loss": out["commitment_loss"], "codebook_loss": out["codebook_loss"],
                "reconstruction_loss": reconstruction}

    @torch.no_grad()
    def tokens(self, wav: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, n) 24 kHz waveform, (B,) lengths -> (B, n // 960, S) long codes, -1 past each item's
        length // 960 tokens. Each item on its own samples (grouped by length, so padding never moves a
        code), with the stages in eval mode (no replacement, as MuQ's `tokenize` calls `rvq.eval()`), in
        float32 whatever the autocast around: bf16 projections would move frames to other codes."""
        config = self.config
        lengths = lengths if lengths is not None else torch.full((wav.shape[0],), wav.shape[1], device=wav.device)
        if wav.dim() != 2 or lengths.shape != (wav.shape[0],):
            raise ValueError(f"expected wav (B, n) and lengths (B,), got {tuple(wav.shape)} and {tuple(lengths.shape)}")
        tokens = torch.full((wav.shape[0], wav.shape[1] // config.token_hop, config.num_codebooks), -1,
                            dtype=torch.long, device=wav.device)  # (B, T_tok, S)
        was_training = self.training
        self.eval()
        try:
            with torch.autocast(wav.device.type, enabled=False):
                for length in torch.unique(lengths).tolist():
                    count = length // config.token_hop
                    if count == 0 or length <= config.n_fft // 2:
                        continue
                    rows = (lengths == length).nonzero().squeeze(1)
                    codes = self(self.features(wav[rows, :length].float()))["codes"]  # (b, S, count)
                    tokens[rows, :count] = codes.transpose(1, 2)
        finally:
            self.train(was_training)
        return tokens
