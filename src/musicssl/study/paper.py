"""The paper's published numbers and its stated findings, as data.

Source: the paper's ISMIR 2023 poster (the arXiv body was not readable when this was written;
docs/study.md). Its Tables 2 and 3 print 11 scores and an Average per row in the
column order of COLUMNS; every printed Average is the mean over the 9 tasks of each task's mean
column (MTT and EMO averaged first), which `paper_average` reproduces from the printed scores to
within 0.1 (their rounding) for all 14 rows, 13 of them to the printed decimal
(tests/study/test_findings.py): that is how we know the columns are read right. The
poster's Table 1 is laid out with shifted columns; its HuBERT, MusicHuBERT, data2vec and Music2vec
rows are the same models as Table 2's HuBERT and k=2000 MFCC dim=39 rows and Table 3's data2vec
and vanilla rows (identical first 10 numbers), so Table 1 is shown from those.
"""

from __future__ import annotations

from dataclasses import dataclass

# (task, metric) of each published column, in the poster's order
COLUMNS: tuple[tuple[str, str], ...] = (
    ("mtt", "roc_auc"), ("mtt", "ap"), ("gs", "key_score"), ("gtzan", "accuracy"), ("emo", "r2_valence"),
    ("emo", "r2_arousal"), ("nsynth_instrument", "accuracy"), ("nsynth_pitch", "accuracy"),
    ("vocalset_technique", "accuracy"), ("vocalset_singer", "accuracy"), ("gtzan_beats", "beat_f"))
TITLES = ("MTT ROC", "MTT AP", "GS", "GTZAN", "EMO V", "EMO A", "NsI", "NsP", "VsT", "VsS", "Beat F1")


def _row(text: str) -> tuple[tuple[float, ...], float]:
    values = tuple(float(word) for word in text.split())
    return values[:11], values[11]


# paper row -> (11 scores x100, printed Average); the poster's Tables 2 and 3
PUBLISHED: dict[str, tuple[tuple[float, ...], float]] = {
    "HuBERT": _row("89.8 36.4 15.0 64.8 31.0 57.5 68.2 79.4 61.0 58.8 83.5 59.8"),
    "k=2000 MFCC dim=39": _row("90.2 37.7 14.7 70.0 42.1 66.5 69.3 77.4 65.9 75.3 88.6 64.4"),
    "k=2000 iter2": _row("90.4 37.5 13.8 68.3 43.3 67.4 70.0 80.3 63.6 70.4 88.8 63.8"),
    "k=500 MFCC dim=39": _row("89.6 36.1 15.7 64.5 41.0 67.7 66.7 76.8 60.5 72.3 87.5 62.4"),
    "k=500 MFCC dim=60": _row("90.3 38.0 17.6 69.7 40.8 67.5 70.3 79.0 66.2 75.5 88.6 65.0"),
    "data2vec": _row("88.4 33.6 15.5 60.7 23.0 49.6 69.3 77.7 64.9 74.6 36.4 55.2"),
    "vanilla": _row("89.1 35.1 19.0 59.7 38.5 61.9 69.4 88.9 68.3 69.5 33.5 57.8"),
    "span=5": _row("87.3 32.0 15.7 47.6 22.7 41.2 64.2 84.8 56.7 53.8 33.2 49.7"),
    "span=15": _row("88.7 34.3 16.4 56.6 39.0 58.8 67.1 88.1 63.1 61.9 33.1 55.2"),
    "prob=50": _row("88.5 34.0 23.7 59.3 40.6 55.0 66.8 87.7 64.9 61.7 33.9 56.3"),
    "prob=80": _row("88.2 33.9 18.4 50.3 36.7 55.7 67.9 88.9 64.2 65.2 33.7 55.1"),
    "step=800k": _row("87.7 32.7 20.3 54.5 34.9 47.3 66.9 87.5 65.6 65.1 33.4 55.0"),
    "target=12": _row("89.7 35.2 26.5 64.5 41.7 64.2 71.1 89.2 71.0 73.2 34.1 60.6"),
    "crop5s": _row("90.0 36.6 18.5 76.6 53.4 71.6 68.3 88.9 71.3 72.4 33.9 61.8"),
}


def paper_average(scores: dict[tuple[str, str], float]) -> float:
    """The paper's Average: mean over tasks of each task's mean over its columns, on the columns
    given (a subset gives the average over those tasks)."""
    by_task: dict[str, list[float]] = {}
    for (task, _), value in scores.items():
        by_task.setdefault(task, []).append(value)
    return sum(sum(values) / len(values) for values in by_task.values()) / len(by_task) if by_task else float("nan")


def published_scores(row: str) -> dict[tuple[str, str], float]:
    return dict(zip(COLUMNS, PUBLISHED[row][0]))


# Each table: (paper row, our run name or None when we do not train it, a note); k at its scale
def table_rows(k_small: int, k_large: int) -> dict[str, list[tuple[str, str | None, str]]]:
    return {
        "table1": [("HuBERT", "hubert-speech", "paper: the released speech HuBERT base; ours: the MusicHuBERT "
                                               "recipe on SPEECH_DATA"),
                   ("k=2000 MFCC dim=39", f"musichubert-k{k_large}-mfcc39", "MusicHuBERT base"),
                   ("data2vec", "data2vec-speech", "paper: the released data2vec-audio base; ours: the Music2Vec "
                                                   "recipe on SPEECH_DATA"),
                   ("vanilla", "music2vec-vanilla", "Music2vec vanilla")],
        "table2": [("HuBERT", "hubert-speech", ""),
                   ("k=2000 MFCC dim=39", f"musichubert-k{k_large}-mfcc39", ""),
                   ("k=2000 iter2", f"musichubert-k{k_large}-iter2", ""),
                   ("k=500 MFCC dim=39", f"musichubert-k{k_small}-mfcc39", ""),
                   ("k=500 MFCC dim=60", f"musichubert-k{k_small}-mfcc60", "")],
        "table3": [("data2vec", "data2vec-speech", ""), ("vanilla", "music2vec-vanilla", ""),
                   ("span=5", "music2vec-span5", ""), ("span=15", "music2vec-span15", ""),
                   ("prob=50", "music2vec-prob50", ""), ("prob=80", "music2vec-prob80", ""),
                   ("step=800k", "music2vec-steps800k", ""), ("target=12", "music2vec-target12", ""),
                   ("crop5s", None, "not run: our Music2Vec presets already crop 5 s, so crop5s = vanilla "
                                    "(docs/method.md §4.6)")],
    }


@dataclass(frozen=True)
class Finding:
    """A stated finding as comparisons of `model` against `control` (paper row names).
    kind: "most" (higher on more than half of the columns measured), "higher" (higher on each of
    `columns`), "lower" (lower on each of `columns`), "same" (within the spread on more than half
    of the columns measured). A finding of several parts agrees only if every part does."""

    key: str
    table: str
    text: str                         # the paper's words (the poster)
    parts: tuple[tuple[str, str, str, tuple[tuple[str, str], ...]], ...]  # (kind, model, control, columns)
    not_measurable: str = ""          # why it cannot be measured here at all


NON_VOCAL = tuple(column for column in COLUMNS if not column[0].startswith("vocalset"))

FINDINGS: tuple[Finding, ...] = (
    Finding("musichubert_above_music2vec", "table1", "MusicHuBERT surpasses Music2vec in various tasks",
            (("most", "k=2000 MFCC dim=39", "vanilla", COLUMNS),)),
    Finding("music2vec_pitch_not_beats", "table1",
            "Music2Vec is better at learning pitch information, but worse at beat tracking",
            (("higher", "vanilla", "k=2000 MFCC dim=39", (("nsynth_pitch", "accuracy"),)),
             ("lower", "vanilla", "k=2000 MFCC dim=39", (("gtzan_beats", "beat_f"),)))),
    Finding("musichubert_above_speech", "table1",
            "Pre-training with music recordings rather than speech can generally improve performance on a wide "
            "range of MIR tasks (MusicHuBERT above HuBERT-on-speech)",
            (("most", "k=2000 MFCC dim=39", "HuBERT", COLUMNS),)),
    Finding("music2vec_above_speech", "table1",
            "Pre-training with music recordings rather than speech can generally improve performance on a wide "
            "range of MIR tasks (Music2Vec above data2vec-on-speech)",
            (("most", "vanilla", "data2vec", COLUMNS),)),
    Finding("k2000_above_k500", "table2", "MusicHuBERT with k=2000 outperforms k=500 for most tasks",
            (("most", "k=2000 MFCC dim=39", "k=500 MFCC dim=39", COLUMNS),)),
    Finding("iter2_above_vanilla_except_vocal", "table2",
            "K-means clustering of deep features performs better than vanilla MusicHuBERT for most tasks, except "
            "pure vocal datasets",
            (("most", "k=2000 iter2", "k=2000 MFCC dim=39", NON_VOCAL),
             ("lower", "k=2000 iter2", "k=2000 MFCC dim=39",
              (("vocalset_technique", "accuracy"), ("vocalset_singer", "accuracy"))))),
    Finding("mfcc60_same_as_39", "table2", "Increasing the dimension of MFCC doesn't significantly impact most tasks",
            (("same", "k=500 MFCC dim=60", "k=500 MFCC dim=39", COLUMNS),)),
    Finding("target12_key", "table3",
            "Modifying the prediction target for Music2Vec from the average of the top 8 layers to all 12 layers "
            "enhances performance across various tasks, notably improving key detection",
            (("most", "target=12", "vanilla", COLUMNS), ("higher", "target=12", "vanilla", (("gs", "key_score"),)))),
    Finding("crop5s_better", "table3",
            "Shortening the audio length can increase batch diversity, providing better performance",
            (("most", "crop5s", "vanilla", COLUMNS),),
            not_measurable="our Music2Vec presets already crop 5 s: crop5s and vanilla are one configuration"),
)
