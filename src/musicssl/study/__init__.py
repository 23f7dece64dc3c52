"""`musicssl study paper`: the study of Ma et al. (ISMIR 2023), Tables 1-3, as one resumable plan.

plan.py      every run of the three tables as a DAG of ordinary musicssl steps (manifest, labels,
             pre-training, probing), each an ordinary run directory with the command it equals;
             scales (tiny: CPU, base: the paper's budgets), completion markers, shards.
paper.py     the paper's published numbers (its ISMIR 2023 poster, docs/study.md) and its
             stated findings as comparisons between runs.
findings.py  the findings' arithmetic (agrees / disagrees / not measurable against the probe-seed
             spread) and the STUDY/study.md + study.json writer.
execute.py   runs the steps of a plan (or one shard of it) by calling the library's functions.

Layering: above musicssl.demo, below musicssl.cli (pyproject.toml [tool.importlinter]).
"""

from musicssl.study.plan import SCALES, Step, StudyScale, build_plan, shard_of, step_status

__all__ = ["SCALES", "Step", "StudyScale", "build_plan", "shard_of", "step_status"]
