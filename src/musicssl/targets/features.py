"""What is target-specific about frame features: the named presets `musicssl labels` offers, and
the hidden states of a frozen model clustered for HuBERT's second and later iterations. The signal
features themselves (MFCC, pitch) are in musicssl/frame_features.py, shared with evaluation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from musicssl.frame_features import MfccConfig, PitchConfig

if TYPE_CHECKING:
    from musicssl.extract import Encoder

# The feature recipes `musicssl labels mfcc|pitch --preset` names.

MFCC_PRESETS: dict[str, MfccConfig] = {"mfcc39": MfccConfig(), "mfcc60": MfccConfig(num_ceps=20)}
PITCH_PRESETS: dict[str, PitchConfig] = {"semitone84": PitchConfig(), "chroma12": PitchConfig(fold_octaves=True)}


def layer_features(encoder: Encoder, wav: np.ndarray, sample_rate: int, layer: int,
                   chunk_seconds: float | None = 30.0) -> np.ndarray:
    """Hidden state `layer` of a frozen model, (T, D) float32 at encoder.frame_rate_hz: the
    features clustered for the second HuBERT iteration."""
    return encoder.extract(wav, sample_rate, layers=[layer], chunk_seconds=chunk_seconds)[0].numpy()
