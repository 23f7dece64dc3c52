"""The task registry, in the column order of the paper's Table 1 (docs/evaluation.md §4.1).

Modules are imported on first use, so a broken or slow dataset module never affects others.
"""

from __future__ import annotations

import importlib

from musicssl.evaluate.tasks.base import DatasetError, Item, Kind, LayoutExample, Protocol, Splits, Task

# registry name -> (module in this package, Task class)
_REGISTRY: dict[str, tuple[str, str]] = {
    "mtt": ("mtt", "MTTTagging"),
    "gs": ("giantsteps", "GiantStepsKey"),
    "gtzan": ("gtzan", "GTZANGenre"),
    "gtzan_beats": ("gtzan", "GTZANBeats"),
    "emo": ("emomusic", "EmoMusic"),
    "nsynth_instrument": ("nsynth", "NSynthInstrument"),
    "nsynth_pitch": ("nsynth", "NSynthPitch"),
    "vocalset_technique": ("vocalset", "VocalSetTechnique"),
    "vocalset_singer": ("vocalset", "VocalSetSinger"),
    "mtg_instrument": ("mtg_jamendo", "MTGInstrument"),
    "mtg_moodtheme": ("mtg_jamendo", "MTGMoodTheme"),
    "mtg_genre": ("mtg_jamendo", "MTGGenre"),
    "mtg_top50": ("mtg_jamendo", "MTGTop50"),
}
TASK_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def get_task(name: str) -> Task:
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}")
    module_name, class_name = _REGISTRY[name]
    module = importlib.import_module(f"musicssl.evaluate.tasks.{module_name}")
    return getattr(module, class_name)()


def resolve_tasks(spec: str) -> list[str]:
    """'all' or a comma-separated list of registry names."""
    if spec.strip() == "all":
        return list(TASK_NAMES)
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if not names:  # an empty list would run nothing and exit 0
        raise ValueError(f"--tasks {spec!r}: expected 'all' or task names, e.g. gtzan,mtt")
    for name in names:
        get_task(name)
    return names


__all__ = ["DatasetError", "Item", "Kind", "LayoutExample", "Protocol", "Splits", "Task", "TASK_NAMES",
           "get_task", "resolve_tasks"]
