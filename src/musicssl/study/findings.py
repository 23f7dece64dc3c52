"""The study's report: our Tables 1-3 beside the paper's, and each stated finding marked.

The rule (docs/study.md#the-findings-rule). Every score is a probe's test score x100, the mean over
the probe seeds of the configuration chosen on validation, with sigma its standard deviation over
those seeds (results.json `test_std`). Comparing row A with row B on one column:
    d = mean_A - mean_B,  s = sqrt(sigma_A^2 + sigma_B^2)   (the spread of one seed's difference)
    higher if d > s, lower if d < -s, level otherwise.
A column counts only when both rows have it with at least 2 probe seeds. Kinds of claims:
    most    A higher than B on more than half of the columns counted (at least 3 counted);
    same    level on more than half of the columns counted (at least 3 counted);
    higher  A higher on every listed column (all must be counted); lower: the mirror.
A finding agrees when every part agrees, is not measurable when a part cannot be counted, and
disagrees otherwise (a difference inside the spread does not support a claimed difference).
The paper's own numbers are read the same way with s = 0 (it publishes no spread).
The seed spread covers the probes only; one pre-training seed per run, so a run-to-run spread of
pre-training (docs/learning_curve.md: one seed in three collapsed) is not in it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from musicssl.atomic import write_text
from musicssl.study.paper import (COLUMNS, FINDINGS, PUBLISHED, TITLES, Finding, paper_average, published_scores,
                                  table_rows)

Score = tuple[float, float, int]  # mean x100, std x100, probe seeds


def read_scores(study: str | Path) -> dict[str, dict[tuple[str, str], Score]]:
    """run name -> column -> score, from every STUDY/probe*/RUN/results.json."""
    scores: dict[str, dict[tuple[str, str], Score]] = {}
    for path in sorted(Path(study).glob("probe*/*/results.json")):
        try:
            payload = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not a benchmark results.json ({error}); delete it to probe again") from None
        scores_from_results(payload, scores)
    return scores


def scores_from_results(payload: dict, into: dict | None = None) -> dict[str, dict[tuple[str, str], Score]]:
    into = {} if into is None else into
    seeds = len(payload.get("probe_config", {}).get("seeds", ()) or ())
    for result in payload.get("results", []):
        for task, metric in COLUMNS:
            if result["task"] == task and metric in result["test"]:
                into.setdefault(result["model"], {})[(task, metric)] = (
                    100 * result["test"][metric], 100 * result["test_std"].get(metric, 0.0), seeds)
    return into


def compare_column(a: Score, b: Score) -> tuple[float, float, str]:
    d = a[0] - b[0]
    s = math.hypot(a[1], b[1])
    return d, s, "higher" if d > s else "lower" if d < -s else "level"


def evaluate_part(kind: str, a: dict, b: dict, columns, min_seeds: int = 2) -> dict:
    """One part of a finding on two rows' scores (column -> Score): its verdict and the columns."""
    counted = []
    for column in columns:
        if column in a and column in b and min(a[column][2], b[column][2]) >= min_seeds:
            d, s, verdict = compare_column(a[column], b[column])
            counted.append({"column": "/".join(column), "difference": round(d, 2), "spread": round(s, 2),
                            "class": verdict})
    tally = {name: sum(c["class"] == name for c in counted) for name in ("higher", "level", "lower")}
    result = {"kind": kind, "columns": counted, "counted": len(counted), **tally}
    if kind in ("most", "same"):
        if len(counted) < 3:
            return {**result, "verdict": "not measurable", "reason": f"{len(counted)} column(s) counted, need 3"}
        wanted = tally["higher"] if kind == "most" else tally["level"]
        return {**result, "verdict": "agrees" if wanted > len(counted) / 2 else "disagrees"}
    if len(counted) < len(columns):
        return {**result, "verdict": "not measurable", "reason": "a listed column was not probed"}
    return {**result, "verdict": "agrees" if tally[kind] == len(counted) else "disagrees"}


def evaluate_finding(finding: Finding, rows: dict[str, dict], min_seeds: int = 2) -> dict:
    """`rows`: paper row name -> column -> Score."""
    out = {"key": finding.key, "table": finding.table, "text": finding.text}
    if finding.not_measurable:
        return {**out, "verdict": "not measurable", "reason": finding.not_measurable, "parts": []}
    parts = []
    for kind, model, control, columns in finding.parts:
        if model not in rows or control not in rows:
            missing = " and ".join(name for name in (model, control) if name not in rows)
            parts.append({"kind": kind, "model": model, "control": control, "verdict": "not measurable",
                          "reason": f"no probe results for {missing}"})
            continue
        parts.append({"model": model, "control": control,
                      **evaluate_part(kind, rows[model], rows[control], columns, min_seeds)})
    verdicts = {part["verdict"] for part in parts}
    verdict = ("not measurable" if "not measurable" in verdicts else
               "agrees" if verdicts == {"agrees"} else "disagrees")
    return {**out, "verdict": verdict, "parts": parts}


def paper_rows() -> dict[str, dict]:
    """The published rows as Scores with no spread (and 'seeds' enough to be counted)."""
    names = {row for rows in table_rows(500, 2000).values() for row, _, _ in rows}
    return {name: {column: (value, 0.0, 99) for column, value in published_scores(name).items()} for name in names}


def our_rows(scores: dict[str, dict], k_small: int, k_large: int) -> dict[str, dict]:
    rows = {}
    for table in table_rows(k_small, k_large).values():
        for row, run, _ in table:
            if run is not None and run in scores:
                rows[row] = scores[run]
    return rows


def study_report(scores: dict[str, dict], k_small: int = 500, k_large: int = 2000) -> dict:
    """Everything study.json holds: tables (ours and the paper's per row) and the findings."""
    ours, paper = our_rows(scores, k_small, k_large), paper_rows()
    tables = {}
    for table, rows in table_rows(k_small, k_large).items():
        entries = []
        for row, run, note in rows:
            measured = {column: score for column, score in scores.get(run, {}).items()} if run else {}
            published = published_scores(row)
            entries.append({
                "row": row, "run": run, "note": note,
                "ours": {"/".join(c): [round(s[0], 2), round(s[1], 2)] for c, s in measured.items()},
                "ours_average": _rounded(paper_average({c: s[0] for c, s in measured.items()})),
                "paper": {"/".join(c): v for c, v in published.items()},
                "paper_average": PUBLISHED[row][1],  # as printed
                "paper_average_same_columns": _rounded(paper_average({c: published[c] for c in measured})),
            })
        tables[table] = entries
    findings = []
    for finding in FINDINGS:
        ours_verdict = evaluate_finding(finding, ours)
        paper_verdict = evaluate_finding(Finding(finding.key, finding.table, finding.text, finding.parts), paper)
        findings.append({**ours_verdict, "paper": _tally_line(paper_verdict)})
    return {"tables": tables, "findings": findings}


def _rounded(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 2)


def _tally_line(verdict: dict) -> str:
    words = []
    for part in verdict["parts"]:
        if "counted" in part:
            words.append(f"{part['model']} vs {part['control']}: higher on {part['higher']}, level on "
                         f"{part['level']}, lower on {part['lower']} of {part['counted']}")
    return "; ".join(words)


def _cell(score: list | None, paper: float) -> str:
    if score is None:
        return f"- ({paper:.1f})"
    spread = f" ± {score[1]:.1f}" if score[1] > 0 else ""
    return f"{score[0]:.1f}{spread} ({paper:.1f})"


def markdown(report: dict, header: str = "") -> str:
    lines = ["# The paper's study (Ma et al., ISMIR 2023), Tables 1-3", ""]
    if header:
        lines += [header, ""]
    lines += ["Each cell: ours, test x100, mean ± std over probe seeds (the paper's published number in "
              "brackets, from its ISMIR 2023 poster; docs/study.md). Avg: the paper's average (mean over tasks "
              "of each task's mean column) over the tasks we measured; in brackets the paper's over the same "
              "columns (over all, as printed, where we have none).", ""]
    for table, entries in report["tables"].items():
        lines += [f"## {table.replace('table', 'Table ')}", "",
                  "| row | run | " + " | ".join(TITLES) + " | Avg |", "|" + "---|" * (len(TITLES) + 3)]
        for entry in entries:
            cells = [_cell(entry["ours"].get("/".join(c)), entry["paper"]["/".join(c)]) for c in COLUMNS]
            ours_avg, same = entry["ours_average"], entry["paper_average_same_columns"]
            avg = f"{ours_avg:.1f} ({same:.1f})" if ours_avg is not None else f"- ({entry['paper_average']:.1f})"
            lines.append(f"| {entry['row']} | {entry['run'] or '-'} | " + " | ".join(cells) + f" | {avg} |")
        notes = [f"- {entry['row']}: {entry['note']}" for entry in entries if entry["note"]]
        lines += ["", *notes, ""] if notes else [""]
    lines += ["## The paper's findings", "",
              "Rule: a column is higher when the difference exceeds sqrt(std_A^2 + std_B^2) of the probe seeds; "
              "see docs/study.md#the-findings-rule.", ""]
    for finding in report["findings"]:
        detail = "; ".join(_part_words(part) for part in finding["parts"]) or finding.get("reason", "")
        lines.append(f"- **{finding['verdict']}** ({finding['table']}) {finding['text']}. Ours: {detail}. "
                     f"Paper: {finding['paper'] or '-'}.")
    return "\n".join(lines) + "\n"


def _part_words(part: dict) -> str:
    if "counted" not in part:
        return f"{part['model']} vs {part['control']}: {part['reason']}"
    columns = ", ".join(f"{c['column']} {c['difference']:+.1f} (spread {c['spread']:.1f})" for c in part["columns"])
    extra = f", {part['reason']}" if "reason" in part else ""
    return (f"{part['model']} vs {part['control']} [{part['kind']}]: higher on {part['higher']}, level on "
            f"{part['level']}, lower on {part['lower']} of {part['counted']}{extra} ({columns})")


def write_study_report(study: str | Path, k_small: int, k_large: int, header: str = "",
                       extra: dict | None = None) -> dict:
    """STUDY/study.md and STUDY/study.json from the probe results found under STUDY."""
    study = Path(study)
    report = {**study_report(read_scores(study), k_small, k_large), **(extra or {})}
    write_text(study / "study.json", json.dumps(report, indent=1))
    write_text(study / "study.md", markdown(report, header))
    return report
