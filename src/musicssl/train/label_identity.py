"""Which label sets a MusicHuBERT run trains on: recorded in the run's config.json, checked on resume.

The codebook sizes alone do not identify labels (pitch labels of k = 8 fit a run started on MFCC
labels of k = 8), so the run records each set's `LabelSet.fingerprint` (arguments, rows, centroids)
and a resume with any other set is refused.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from musicssl.data.label_files import read_label_set

RECORD_KEY = "label_sets"  # in the run's config.json, beside the resolved run config


def label_identities(label_dirs: Sequence[str | Path]) -> list[dict]:
    """[{directory, fingerprint}] in --labels order (the order of the codebooks)."""
    sets = [read_label_set(directory) for directory in label_dirs]
    return [{"directory": str(s.directory.resolve()), "fingerprint": s.fingerprint} for s in sets]


def check_resumed_labels(resume_from: Path, label_dirs: Sequence[str | Path]) -> None:
    """Refuse label sets other than those the checkpoint's run recorded; runs that recorded none
    (started before this check) are accepted."""
    config = resume_from.parent.parent / "config.json"  # run_dir/checkpoints/step_N -> run_dir
    recorded = json.loads(config.read_text()).get(RECORD_KEY) if config.is_file() else None
    if not recorded:
        return
    given = label_identities(label_dirs)
    if [r["fingerprint"] for r in recorded] != [g["fingerprint"] for g in given]:
        raise ValueError(f"{resume_from}: the run trains on label sets {_describe(recorded)}, --labels gives "
                         f"{_describe(given)}; resume with the label sets it started with")


def _describe(identities: list[dict]) -> str:
    return ", ".join(f"{i['directory']} ({i['fingerprint']})" for i in identities)
