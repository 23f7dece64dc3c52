"""HEAR 2021 API (hearbenchmark.com, "common API") for any model `load_model` opens.

    from musicssl import hear
    model = hear.load_model("runs/mert-v1-95m")           # or a checkpoint, a converted fairseq dir
    frames, ms = hear.get_timestamp_embeddings(audio, model)  # audio (n_sounds, n_samples) at model.sample_rate
    clips = hear.get_scene_embeddings(audio, model)

Embeddings are the backbone's hidden states exactly as `Encoder.extract` computes them (same
preprocessing, same chunking of long audio), batched over sounds: by default the mean of all
hidden states (`layer="mean"`; the best layer differs by task and HEAR trains one downstream
model on one fixed embedding), or one hidden state (`layer=6`, `layer=-1`). Timestamps are frame
centres in milliseconds; the scene embedding is the mean over frames.

HEAR 2021 accepts sample rates 16000, 22050, 44100 and 48000. A model at another rate (MERT:
24 kHz) declares the smallest accepted multiple of its rate (48000) and is given audio at that
rate, which is resampled to the model rate here (soxr, as every other input path).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from musicssl import audio as audio_io
from musicssl.extract import Encoder, load_model as load_encoder
from musicssl.models.backbone import normalize_waveform

HEAR_SAMPLE_RATES = (16000, 22050, 44100, 48000)


def hear_sample_rate(model_rate: int) -> int:
    """The rate to declare: the model's own if HEAR accepts it, else the smallest accepted
    integer multiple of it (resampling by an integer factor), else 48000."""
    if model_rate in HEAR_SAMPLE_RATES:
        return model_rate
    multiples = [rate for rate in HEAR_SAMPLE_RATES if rate % model_rate == 0]
    return min(multiples) if multiples else max(HEAR_SAMPLE_RATES)


class HearModel(nn.Module):
    """A frozen backbone with the attributes HEAR requires."""

    def __init__(self, encoder: Encoder, layer: int | str = "mean", chunk_seconds: float | None = 30.0,
                 dtype: str = "auto"):
        super().__init__()
        self.backbone = encoder.backbone  # a submodule, so that HEAR's model.to(device) moves it
        # HEAR moves the model itself: "auto" decides per call (bf16 autocast on CUDA), bf16 / fp32 always
        self.dtype = dtype if dtype == "auto" else encoder.dtype
        self.config = encoder.config
        self.normalize_eps = encoder.normalize_eps
        if layer != "mean":
            layer = encoder.resolve_layers([int(layer)])[0]
        self.layer = layer
        self.chunk_seconds = chunk_seconds
        self.model_rate = encoder.sample_rate
        self.sample_rate = hear_sample_rate(encoder.sample_rate)
        self.scene_embedding_size = self.timestamp_embedding_size = int(encoder.dim)

    def prepare(self, audio: Tensor) -> Tensor:
        """(B, N) at `sample_rate` -> (B, N') float32 at the model rate, normalised if the model is."""
        if not isinstance(audio, Tensor) or audio.dim() != 2:
            raise ValueError(f"HEAR audio must be a (n_sounds, n_samples) tensor, got "
                             f"{getattr(audio, 'shape', type(audio))}")
        wav = audio.float()
        if self.model_rate != self.sample_rate:
            resampled = audio_io.resample(wav.detach().cpu().numpy(), self.sample_rate, self.model_rate)
            wav = torch.from_numpy(resampled).to(audio.device)
        if not torch.isfinite(wav).all():
            raise ValueError("HEAR audio has non-finite samples (NaN or inf)")
        if wav.shape[1] < self.config.receptive_field:
            raise ValueError(f"HEAR audio has {wav.shape[1]} samples at {self.model_rate} Hz, fewer than the "
                             f"receptive field of {self.config.receptive_field}")
        if self.config.normalize_waveform:  # whole-clip statistics per sound, as extract does
            lengths = torch.full((wav.shape[0],), wav.shape[1], device=wav.device)
            wav = normalize_waveform(wav, lengths, self.normalize_eps)
        return wav

    @torch.no_grad()
    def frames(self, wav: Tensor) -> Tensor:
        """(B, n) at the model rate -> (B, T, D): the chosen hidden state (or their mean)."""
        deepest = self.config.num_layers if self.layer == "mean" else self.layer
        bf16 = self.dtype == "bf16" or (self.dtype == "auto" and wav.is_cuda)
        autocast = torch.autocast(wav.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            out = self.backbone(wav, num_layers=max(deepest, 1))
        states = list(out.layers)
        if deepest == self.config.num_layers:
            states[-1] = out.last_hidden_state  # a pre-LN model's final LayerNorm, as in extract
        if self.layer == "mean":
            return torch.stack([state.float() for state in states]).mean(0)
        return states[self.layer].float()


def load_model(model_file_path: str = "", layer: int | str = "mean", device: str | None = None,
               dtype: str = "auto") -> HearModel:
    """HEAR's load_model: `model_file_path` is a model directory (anything `musicssl.load_model`
    opens: ours, transformers HuBERT / data2vec-audio, MERT-v1, a converted fairseq checkpoint)."""
    if not model_file_path:
        raise ValueError("musicssl.hear.load_model needs a model directory (there is no default model)")
    return HearModel(load_encoder(model_file_path, device=device or "cpu", dtype=dtype), layer=layer, dtype=dtype)


def get_timestamp_embeddings(audio: Tensor, model: HearModel) -> tuple[Tensor, Tensor]:
    """(n_sounds, n_samples) -> embeddings (n_sounds, T, D) float32 and timestamps (n_sounds, T)
    in ms: the centre of each frame's receptive field, t * hop + receptive_field / 2 samples."""
    wav = model.prepare(audio)
    config, total = model.config, wav.shape[1]
    chunk = total if model.chunk_seconds is None else max(int(model.chunk_seconds * model.model_rate), config.hop)
    plan = audio_io.plan_chunks(total, chunk, hop=config.hop, receptive_field=config.receptive_field)
    count = audio_io.num_frames(total, hop=config.hop, receptive_field=config.receptive_field)
    embeddings = torch.empty(wav.shape[0], count, model.timestamp_embedding_size, device=wav.device)
    position = 0
    for window in plan:  # the same windows as Encoder.extract, run for the whole batch
        piece = model.frames(wav[:, window.start:window.stop])[:, window.keep_start:window.keep_stop]
        embeddings[:, position:position + piece.shape[1]] = piece
        position += piece.shape[1]
    centres = (torch.arange(count, dtype=torch.float64) * config.hop + config.receptive_field / 2)
    timestamps = (centres * 1000.0 / model.model_rate).float().to(wav.device)
    return embeddings, timestamps.expand(wav.shape[0], count).contiguous()


def get_scene_embeddings(audio: Tensor, model: HearModel) -> Tensor:
    """(n_sounds, n_samples) -> (n_sounds, D): the mean of the timestamp embeddings over time."""
    embeddings, _ = get_timestamp_embeddings(audio, model)
    return embeddings.mean(dim=1)
