"""`musicssl labels rvq`: the codes of a fitted Mel-RVQ (`musicssl rvq fit`) as label directories the
trainer reads, one per codebook (MERT's 8 acoustic codebooks; docs/method.md §10.3).

    CODES/codebooks.json              {"format": "musicssl-codebooks", "codebooks": ["codebook_0", ...],
                                       "grid": ..., "rvq": {directory, config fingerprint}}
    CODES/codebook_i/labels.json      an ordinary label set: grid, k, how it was made, manifest fingerprints
    CODES/codebook_i/{split}.km       one line of codes per manifest row

`--labels CODES` stands for its codebooks in order (data/label_files.expand_label_dirs), so nothing
(no dictionary file, no label names) is left for the user to get right. Each row is tokenised whole,
as `MelRVQ.tokens` does (eval mode, float32): a token covers `token_hop` samples, so a row of n samples
has n // token_hop codes per codebook (the grid's window is the hop).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from musicssl import atomic, audio
from musicssl.config import fingerprint, to_dict
from musicssl.data.label_files import (CODEBOOKS_FORMAT, CODEBOOKS_JSON, LABELS_JSON, LabelGrid, check_labels,
                                       label_file)
from musicssl.data.manifest import check_sample_rate, read_manifest
from musicssl.targets.rvq_fit import load_mel_rvq


def codebook_name(index: int) -> str:
    return f"codebook_{index}"


def write_rvq_labels(manifest_dir: str | Path, out: str | Path, rvq_dir: str | Path,
                     splits: tuple[str, ...] = ("train", "valid"), device: str = "cpu") -> Path:
    """Tokenise every row of each split's manifest (a split without a tsv is skipped, train is
    required) and write OUT whole (a temporary sibling renamed at the end)."""
    manifest_dir, rvq_dir = Path(manifest_dir), Path(rvq_dir)
    rvq = load_mel_rvq(rvq_dir).to(device)
    config = rvq.config
    grid = LabelGrid(config.sample_rate, config.token_hop, config.token_hop)
    manifests = {}
    for split in splits:
        path = manifest_dir / f"{split}.tsv"
        if not path.exists() and split != "train":
            continue
        check_sample_rate(path, config.sample_rate)  # a missing train.tsv: one line naming it
        manifests[split] = read_manifest(path)
    source = {"kind": "mel_rvq", "rvq": str(rvq_dir.resolve()), "rvq_config": fingerprint(to_dict(config))}
    with atomic.atomic_path(out) as partial:
        partial.mkdir(parents=True)
        names = [codebook_name(i) for i in range(config.num_codebooks)]
        for name in names:
            (partial / name).mkdir()
        for split, manifest in manifests.items():
            handles = [label_file(partial / name, split).open("w", encoding="utf-8") for name in names]
            try:
                for row in range(len(manifest)):
                    codes = _row_codes(rvq, manifest.path(row), config.sample_rate, device)  # (T, S)
                    for codebook, handle in enumerate(handles):
                        handle.write(" ".join(map(str, codes[:, codebook].tolist())) + "\n")
            finally:
                for handle in handles:
                    handle.close()
        fingerprints = {split: manifest.fingerprint for split, manifest in manifests.items()}
        for index, name in enumerate(names):
            info = {"feature": {**source, "codebook": index}, "k": config.codebook_size, "seed": config.init_seed,
                    "fit_fraction": None, "max_frames": None,
                    "grid": {"sample_rate": grid.sample_rate, "hop": grid.hop, "window": grid.window,
                             "rate_hz": grid.rate_hz},
                    "manifest_fingerprints": fingerprints}
            for split, manifest in manifests.items():
                summary = check_labels(label_file(partial / name, split), manifest, grid, config.codebook_size)
                info.setdefault("summary", {})[split] = summary.line(split)
                print(f"{name} {summary.line(split)}", file=sys.stderr)
            atomic.write_text(partial / name / LABELS_JSON, json.dumps(info, indent=2) + "\n")
        listing = {"format": CODEBOOKS_FORMAT, "version": 1, "codebooks": names, "grid": info["grid"], "source": source}
        atomic.write_text(partial / CODEBOOKS_JSON, json.dumps(listing, indent=2) + "\n")
    return Path(out)


def _row_codes(rvq, path: Path, sample_rate: int, device: str) -> np.ndarray:
    """(T, S) codes of one file, T = samples // token_hop (none for a file shorter than a token or
    than half the STFT window: an empty row, which the trainer skips as it skips short files)."""
    wav = torch.from_numpy(np.ascontiguousarray(audio.load_audio(path, sample_rate), dtype=np.float32))
    codes = rvq.tokens(wav[None].to(device))[0]  # (T, S), -1 where no token was computed
    codes = codes[(codes >= 0).all(-1)]
    return codes.cpu().numpy()
