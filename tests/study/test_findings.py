"""The findings' arithmetic on fixed results, and the published numbers' reading."""

from __future__ import annotations

import json

import pytest

from musicssl.study.findings import compare_column, evaluate_part, study_report, write_study_report
from musicssl.study.paper import COLUMNS, PUBLISHED, paper_average, published_scores


@pytest.mark.parametrize("row", sorted(PUBLISHED))
def test_the_paper_average_reproduces_every_printed_average(row):
    # a shifted column would move the 9-task average by points; the printed scores' own rounding
    # (0.05 each) and the average's (0.05) allow 0.1 (crop5s: 61.74 from the rounded scores, 61.8 printed)
    assert paper_average(published_scores(row)) == pytest.approx(PUBLISHED[row][1], abs=0.1)


def test_a_difference_counts_only_beyond_the_seed_spread():
    assert compare_column((60.0, 1.5, 3), (58.0, 2.0, 3)) == (2.0, 2.5, "level")     # 2.0 < sqrt(1.5^2+2^2)
    assert compare_column((60.0, 0.6, 3), (58.0, 0.8, 3))[2] == "higher"              # 2.0 > 1.0
    assert compare_column((55.0, 0.6, 3), (58.0, 0.8, 3))[2] == "lower"


def results_json(model: str, scores: dict, seeds: int = 3) -> dict:
    """A benchmark results.json: scores {(task, metric): (mean x100, std x100)}."""
    by_task: dict[str, dict] = {}
    for (task, metric), (mean, std) in scores.items():
        entry = by_task.setdefault(task, {"task": task, "model": model, "test": {}, "test_std": {}})
        entry["test"][metric], entry["test_std"][metric] = mean / 100, std / 100
    return {"probe_config": {"seeds": list(range(seeds))}, "results": list(by_task.values())}


NINE = [column for column in COLUMNS if not column[0].startswith("vocalset")]  # what a generated bench has


def fixed_study(tmp_path, seeds=3):
    k2000 = {column: (50.0, 1.0) for column in NINE}
    # k500: below k2000 by 3 on 5 columns (> spread 1.41), by 1 on 4 (level)
    k500 = {column: (47.0 if index < 5 else 49.0, 1.0) for index, column in enumerate(NINE)}
    # target12 above vanilla on GS by 4 and on 4 more columns; vanilla higher pitch, lower beats than k2000
    vanilla = {column: (40.0, 0.5) for column in NINE}
    vanilla[("nsynth_pitch", "accuracy")] = (60.0, 0.5)
    target12 = {column: (40.0 + (4.0 if column in NINE[:5] else 0.0), 0.5) for column in NINE}
    for run, scores in (("musichubert-k2000-mfcc39", k2000), ("musichubert-k500-mfcc39", k500),
                        ("music2vec-vanilla", vanilla), ("music2vec-target12", target12)):
        folder = tmp_path / "probe" / run
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(results_json(run, scores, seeds)))
    return write_study_report(tmp_path, 500, 2000)


def test_the_findings_on_a_fixed_results_json(tmp_path):
    report = fixed_study(tmp_path)
    verdicts = {finding["key"]: finding for finding in report["findings"]}
    k = verdicts["k2000_above_k500"]
    assert k["verdict"] == "agrees" and (k["parts"][0]["higher"], k["parts"][0]["level"]) == (5, 4)
    assert verdicts["musichubert_above_music2vec"]["verdict"] == "agrees"   # 50 vs 40 on 8 of 9
    assert verdicts["music2vec_pitch_not_beats"]["verdict"] == "agrees"     # pitch 60 > 50, beats 40 < 50
    target = verdicts["target12_key"]                                          # GS +4 > 0.71; 5 of 9 higher
    assert target["verdict"] == "agrees" and target["parts"][1]["columns"][0]["difference"] == 4.0
    for key in ("musichubert_above_speech", "music2vec_above_speech", "mfcc60_same_as_39",
                "iter2_above_vanilla_except_vocal", "crop5s_better"):      # runs not there, or crop5s = vanilla
        assert verdicts[key]["verdict"] == "not measurable"
    # the paper's own numbers, read with no spread: k=2000 above k=500 on 9 of 11
    assert k["paper"].startswith("k=2000 MFCC dim=39 vs k=500 MFCC dim=39: higher on 9, level on 0, lower on 2")
    table2 = {entry["row"]: entry for entry in report["tables"]["table2"]}
    # 7 tasks measured: MTT (47, 47), GS 47, GTZAN 47, EMO (47, 49), NsI 49, NsP 49, beats 49
    assert table2["k=500 MFCC dim=39"]["ours_average"] == pytest.approx((47 * 3 + 48 + 49 * 3) / 7)
    text = (tmp_path / "study.md").read_text()
    assert "**agrees** (table2) MusicHuBERT with k=2000 outperforms k=500" in text
    assert "| k=2000 MFCC dim=39 | musichubert-k2000-mfcc39 | 50.0 ± 1.0 (90.2) |" in text


def test_one_probe_seed_measures_nothing(tmp_path):
    report = fixed_study(tmp_path, seeds=1)
    assert {finding["verdict"] for finding in report["findings"]} == {"not measurable"}


def test_a_claim_of_no_change_needs_most_columns_level():
    a = {column: (50.0, 1.0, 3) for column in NINE}
    b = {column: (50.5 if index < 6 else 55.0, 1.0, 3) for index, column in enumerate(NINE)}
    part = evaluate_part("same", a, b, COLUMNS)
    assert (part["level"], part["lower"], part["verdict"]) == (6, 3, "agrees")
    assert study_report({})["findings"][0]["verdict"] == "not measurable"
