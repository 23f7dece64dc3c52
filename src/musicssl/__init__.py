"""musicssl: self-supervised music audio representation learning (MusicHuBERT, Music2Vec)."""

__version__ = "0.1.0"


def load_model(path, device=None, dtype="auto", **overrides):
    """Open a model directory for feature extraction; see `musicssl.extract.load_model`."""
    from musicssl.extract import load_model as _load_model

    return _load_model(path, device=device, dtype=dtype, **overrides)


__all__ = ["load_model", "__version__"]
