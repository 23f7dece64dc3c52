"""Every run of the paper's Tables 1-3 as a DAG of ordinary musicssl steps.

A step is one run directory under STUDY (its `name` is the path) and the exact `musicssl` command
it equals: the music and speech manifests, MFCC k-means labels (k 500/2000, MFCC 39/60), the
pre-training runs (MusicHuBERT and Music2Vec with the paper's variants, both recipes on speech as
the domain control), the second-iteration labels from a layer of the k = 2000 run and its run,
then one probe (`benchmark`) per pre-trained model. Building the plan reads no file: what is done
is asked separately (`step_status`), from the completion markers the steps already write.

Shards (`shard_of`): the steps are grouped into units, the connected pieces of the DAG once the
manifests are cut out (a pre-training run, its labels, its probes, and for the k = 2000 run its
second iteration too); units go to shards by longest-first greedy balancing of their estimated
cost, ties to the lower shard index, manifests as units of their own. Every step is in exactly one
shard; a shard runs its steps in plan order and waits for (then skips, saying so) a step whose
inputs another shard has not written yet. Every shard must be given the same arguments.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

TABLES = ("table1", "table2", "table3")
KINDS = ("manifest", "labels_mfcc", "labels_layer", "pretrain", "probe")
# The columns of the poster's Tables 2 and 3 (docs/study.md); VocalSet is read when the bench
# root has it, and listed as not probed otherwise (benchmark --skip-missing).
PAPER_TASKS = ("mtt", "gs", "gtzan", "emo", "nsynth_instrument", "nsynth_pitch", "vocalset_technique",
               "vocalset_singer")
MTG_TASKS = ("mtg_instrument", "mtg_moodtheme", "mtg_genre", "mtg_top50")  # Table 1's extra columns
BEAT_TASKS = ("gtzan_beats",)
MUSIC2VEC_ABLATIONS = ("span5", "span15", "prob50", "prob80", "target12", "steps800k")


@dataclass(frozen=True)
class StudyScale:
    """The budgets of one scale and the cost model of its dry run."""

    name: str
    preset: str                       # the pre-training preset (`--preset`)
    hubert_steps: int                 # every MusicHuBERT run, the second iteration and the speech control
    music2vec_steps: int              # vanilla and every ablation; steps800k runs twice this
    iter2_layer: int                  # the hidden state clustered for the second iteration
    all_layers: int                   # "target=12" (every block) at this depth
    k_small: int
    k_large: int
    fit_fraction: float               # share of train files whose frames feed k-means
    valid_percent: float
    hubert_overrides: tuple[str, ...]
    music2vec_overrides: tuple[str, ...]
    probe_flags: tuple[str, ...]      # `benchmark` flags of the main probe
    beats_flags: tuple[str, ...]      # and of the beat-tracking probe (its own grid: DBN decoding is slow)
    tasks: tuple[str, ...]
    cost_unit: str
    cost: dict = field(default_factory=dict)  # per kind (pretrain: per update and method)
    cost_source: str = ""


SCALES = {
    # CPU, the curve corpus (`musicssl synth DIR --preset curve`, 1.5 h). MusicHuBERT 2000 updates of
    # 20 s: where 2 of 3 seeds of the `tiny` recipe had left the majority-code floor (masked accuracy
    # 0.26-0.28, 7-task average +10.6-12.8 over the init; docs/learning_curve.md, stability table).
    # Music2Vec 1000 updates with the demo's recipe (EMA 0.99 -> 0.999, lr 2e-3), 2000 for
    # "steps800k": the curve's Music2Vec average rose 37.4 -> 40.0 by 2k and stayed there.
    "tiny": StudyScale(
        name="tiny", preset="tiny", hubert_steps=2000, music2vec_steps=1000, iter2_layer=2, all_layers=4,
        k_small=500, k_large=2000, fit_fraction=1.0, valid_percent=5.0,
        hubert_overrides=("data.batch_seconds=20",),
        music2vec_overrides=("data.batch_seconds=20", "model.ema_decay=0.99", "model.ema_end_decay=0.999",
                             "trainer.schedule.peak_lr=0.002"),
        probe_flags=("--seeds", "3", "--batch-size", "8", "--max-epochs", "40", "--layer-weight-init", "zeros"),
        beats_flags=("--seeds", "2", "--lrs", "0.001", "--layers", "weighted", "--batch-size", "8",
                     "--max-epochs", "40", "--layer-weight-init", "zeros"),
        tasks=PAPER_TASKS, cost_unit="CPU thread-seconds",
        # musichubert: 1098-1178 s per 2000 updates of 20 s, one thread each, two runs side by side
        # (docs/learning_curve.md); music2vec: the demo's 0.23 s an update on 2 threads, x2 for one
        # [inf]; probe: the demo's 92 s a model on 2 cores (5 models, 7 tasks, docs/demo.md) x2;
        # labels: k-means of ~540k frames at k = 2000, a few minutes [inf].
        cost={"manifest": 60.0, "labels_mfcc": 150.0, "labels_layer": 300.0, "probe": 150.0, "probe_beats": 40.0,
              "musichubert": 0.58, "music2vec": 0.47},
        cost_source="docs/learning_curve.md (stability table), docs/demo.md (stage timings); AMD EPYC"),
    # GPU clusters: the paper's budgets (docs/method.md §3.5, §4.6; the poster: 250k updates on 8 A100s
    # in 2-3 days, 1k h of 5-s crops). The second iteration trains as long as the first (the
    # paper gives no figure; speech HuBERT's is 400k).
    "base": StudyScale(
        name="base", preset="base", hubert_steps=250_000, music2vec_steps=400_000, iter2_layer=6, all_layers=12,
        k_small=500, k_large=2000, fit_fraction=0.1, valid_percent=1.0, hubert_overrides=(), music2vec_overrides=(),
        probe_flags=("--seeds", "3"), beats_flags=("--seeds", "3"), tasks=PAPER_TASKS + MTG_TASKS,
        cost_unit="A100-hours",
        # 8 GPUs x 2.5 days / 250k updates (the poster), the same per update for Music2Vec [inf];
        # manifests, labels and probes: rough [inf]
        cost={"manifest": 1.0, "labels_mfcc": 4.0, "labels_layer": 16.0, "probe": 12.0, "probe_beats": 4.0,
              "musichubert": 480 / 250_000, "music2vec": 480 / 250_000},
        cost_source="the poster (8 x A100, 2-3 days for 250k updates); the rest estimated"),
}


@dataclass(frozen=True)
class Step:
    """One run directory under STUDY (`name` is its path there) and what makes it."""

    name: str
    kind: str                         # one of KINDS
    args: dict                        # what execute.py passes to the library (absolute paths)
    needs: tuple[str, ...]            # the steps whose outputs it reads
    tables: tuple[str, ...]
    cost: float                       # in the scale's cost_unit
    command: str                      # the musicssl command it equals

    def out(self, study: str | Path) -> Path:
        return Path(study) / self.name


@dataclass(frozen=True)
class RunSpec:
    """A pre-trained model of the tables: its row name, how it is made and where it appears."""

    name: str
    method: str                       # musichubert | music2vec
    corpus: str                       # music | speech
    tables: tuple[str, ...]
    labels: tuple[str, ...] = ()      # label step names (MusicHuBERT)
    variant: str = "vanilla"


def _join(words) -> str:
    return " ".join(shlex.quote(str(word)) for word in words)


def checkpoint_name(steps: int) -> str:
    return f"step_{steps:08d}"  # musicssl.train.checkpoint's naming


def run_specs(scale: StudyScale, with_speech: bool) -> list[RunSpec]:
    """The pre-training runs of the three tables, in plan order."""
    small, large = scale.k_small, scale.k_large
    runs = [RunSpec(f"musichubert-k{large}-mfcc39", "musichubert", "music", ("table1", "table2"),
                    (f"labels/music-mfcc39-k{large}",)),
            RunSpec(f"musichubert-k{small}-mfcc39", "musichubert", "music", ("table2",),
                    (f"labels/music-mfcc39-k{small}",)),
            RunSpec(f"musichubert-k{small}-mfcc60", "musichubert", "music", ("table2",),
                    (f"labels/music-mfcc60-k{small}",)),
            RunSpec(f"musichubert-k{large}-iter2", "musichubert", "music", ("table2",),
                    (f"labels/music-iter2-k{large}",)),
            RunSpec("music2vec-vanilla", "music2vec", "music", ("table1", "table3"))]
    runs += [RunSpec(f"music2vec-{variant}", "music2vec", "music", ("table3",), variant=variant)
             for variant in MUSIC2VEC_ABLATIONS]
    if with_speech:  # the domain control: the same recipes on speech (the paper's rows are released speech models)
        runs += [RunSpec("hubert-speech", "musichubert", "speech", ("table1", "table2"),
                         (f"labels/speech-mfcc39-k{large}",)),
                 RunSpec("data2vec-speech", "music2vec", "speech", ("table1", "table3"))]
    return runs


def build_plan(scale: str | StudyScale, data: str | Path, bench_root: str | Path, study: str | Path,
               speech: str | Path | None = None, only: tuple[str, ...] = TABLES,
               task_options: tuple[str, ...] = ()) -> list[Step]:
    """The steps, dependencies first. `only`: the tables whose runs (and their inputs) are kept.
    `task_options`: benchmark `--option TASK.KEY=VALUE` pairs (generated GS tracks: gs.segment_seconds=10)."""
    scale = SCALES[scale] if isinstance(scale, str) else scale
    study = Path(study)
    unknown = [table for table in only if table not in TABLES]
    if unknown:
        raise ValueError(f"--only {','.join(unknown)}: unknown table; known: {','.join(TABLES)}")
    runs = [run for run in run_specs(scale, speech is not None) if set(run.tables) & set(only)]
    steps: dict[str, Step] = {}

    def add(step: Step) -> None:
        if step.name in steps:  # a shared input (manifest, labels): listed under every table that reads it
            known = steps[step.name]
            step = Step(known.name, known.kind, known.args, known.needs,
                        tuple(t for t in TABLES if t in known.tables + step.tables), known.cost, known.command)
        steps[step.name] = step

    def path(name: str) -> str:
        return str(study / name)

    for run in runs:
        corpus = run.corpus
        manifest = f"data/{corpus}"
        source = data if corpus == "music" else speech
        add(Step(manifest, "manifest", {"audio_dir": str(source), "out": path(manifest), "valid_percent":
                                         scale.valid_percent, "seed": 0},
                 (), run.tables, scale.cost["manifest"],
                 _join(["musicssl", "manifest", source, "-o", path(manifest), "--valid-percent",
                        f"{scale.valid_percent:g}", "--seed", "0"])))
        for label in run.labels:
            add(_labels_step(label, manifest, scale, study, run.tables))
        steps_n = scale.hubert_steps if run.method == "musichubert" else scale.music2vec_steps
        overrides = list(scale.hubert_overrides if run.method == "musichubert" else scale.music2vec_overrides)
        if run.variant == "steps800k":  # twice vanilla's budget, as 800k is twice 400k
            steps_n *= 2
        if run.variant == "target12":  # every block of this depth (the variant writes 12)
            overrides.append(f"model.average_top_k_layers={scale.all_layers}")
        overrides.append(f"trainer.max_steps={steps_n}")
        run_name = f"runs/{run.name}"
        words = ["musicssl", "pretrain", run.method, "--preset", scale.preset, "--data", path(manifest)]
        if run.labels:
            words += ["--labels", *(path(label) for label in run.labels)]
        if run.method == "music2vec" and run.variant != "vanilla":
            words += ["--variant", run.variant]
        words += ["--out", path(run_name)] + [word for item in overrides for word in ("--set", item)]
        per_update = scale.cost[run.method]
        add(Step(run_name, "pretrain", {"method": run.method, "preset": scale.preset, "data": path(manifest),
                                        "labels": [path(label) for label in run.labels], "out": path(run_name),
                                        "overrides": overrides, "variant": run.variant, "steps": steps_n},
                 (manifest, *run.labels), run.tables, per_update * steps_n, _join(words)))
        checkpoint = str(study / run_name / "checkpoints" / checkpoint_name(steps_n))
        for probe, tasks, flags, cost in (("probe", scale.tasks, scale.probe_flags, scale.cost["probe"]),
                                          ("probe-beats", BEAT_TASKS, scale.beats_flags, scale.cost["probe_beats"])):
            name = f"{probe}/{run.name}"
            options = [option for option in task_options if option.split(".", 1)[0] in tasks]
            words = ["musicssl", "benchmark", f"{run.name}={checkpoint}", "--tasks", ",".join(tasks),
                     "--data-root", bench_root, "-o", path(name), "--skip-missing", *flags,
                     *(word for option in options for word in ("--option", option))]
            add(Step(name, "probe", {"model": f"{run.name}={checkpoint}", "tasks": list(tasks),
                                     "data_root": str(bench_root), "out": path(name), "flags": list(flags),
                                     "options": options}, (run_name,), run.tables, cost, _join(words)))
    return _topological(list(steps.values()))


def _labels_step(name: str, manifest: str, scale: StudyScale, study: Path, tables: tuple[str, ...]) -> Step:
    """labels/music-mfcc39-k500, labels/speech-mfcc39-k2000, labels/music-iter2-k2000 (a layer of
    the MFCC k = 2000 run)."""
    corpus, features, k_text = name.split("/", 1)[1].split("-")
    k = int(k_text[1:])
    common = ["--data", str(study / manifest), "--out", str(study / name), "--k", str(k),
              "--fit-fraction", f"{scale.fit_fraction:g}", "--seed", "0"]
    args = {"data": str(study / manifest), "out": str(study / name), "k": k, "fit_fraction": scale.fit_fraction}
    if features == "iter2":
        source = f"runs/musichubert-k{k}-mfcc39"
        model = str(study / source / "checkpoints" / checkpoint_name(scale.hubert_steps))
        return Step(name, "labels_layer", {**args, "model": model, "layer": scale.iter2_layer},
                    (manifest, source), tables, scale.cost["labels_layer"],
                    _join(["musicssl", "labels", "layer", "--model", model, "--layer", str(scale.iter2_layer),
                           *common]))
    dims = int(features.removeprefix("mfcc"))
    return Step(name, "labels_mfcc", {**args, "dims": dims}, (manifest,), tables, scale.cost["labels_mfcc"],
                _join(["musicssl", "labels", "mfcc", "--dims", str(dims), *common]))


def _topological(steps: list[Step]) -> list[Step]:
    """Dependencies first; otherwise the order steps were added in (stable)."""
    by_name = {step.name: step for step in steps}
    ordered: list[Step] = []
    seen: set[str] = set()

    def visit(step: Step) -> None:
        if step.name in seen:
            return
        seen.add(step.name)
        for need in step.needs:
            if need in by_name:  # the iter2 labels' source run is added after them; a missing
                visit(by_name[need])  # need would be a planner bug the tests catch
        ordered.append(step)

    for step in steps:
        visit(step)
    return ordered


def shard_of(plan: list[Step], shard: int, num_shards: int) -> list[Step]:
    """The steps of shard `shard` (0-based) of `num_shards`, in plan order (the module's rule)."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"--shard {shard} --num-shards {num_shards}: expected 0 <= shard < num-shards")
    assignment = assign_shards(plan, num_shards)
    return [step for step in plan if assignment[step.name] == shard]


def assign_shards(plan: list[Step], num_shards: int) -> dict[str, int]:
    parent = {step.name: step.name for step in plan}

    def root(name: str) -> str:
        while parent[name] != name:
            name = parent[name]
        return name

    for step in plan:
        for need in step.needs:
            if step.kind != "manifest" and need in parent and not need.startswith("data/"):
                parent[root(step.name)] = root(need)
    units: dict[str, list[Step]] = {}
    for step in plan:
        units.setdefault(root(step.name), []).append(step)
    loads = [0.0] * num_shards
    assignment: dict[str, int] = {}
    for unit in sorted(units.values(), key=lambda members: (-sum(s.cost for s in members), members[0].name)):
        target = min(range(num_shards), key=lambda index: (loads[index], index))
        loads[target] += sum(step.cost for step in unit)
        assignment.update({step.name: target for step in unit})
    return assignment


def is_done(step: Step, study: str | Path) -> bool:
    """The completion markers the steps write: the manifest's tsv files, the label files, the
    final checkpoint (a run with earlier ones resumes), the probe's results.json."""
    out = step.out(study)
    if step.kind == "manifest":
        return (out / "train.tsv").is_file() and (out / "valid.tsv").is_file()
    if step.kind in ("labels_mfcc", "labels_layer"):
        return (out / "train.km").is_file() and (out / "valid.km").is_file()
    if step.kind == "pretrain":
        return (out / "checkpoints" / checkpoint_name(step.args["steps"])).is_dir()
    return (out / "results.json").is_file()


def step_status(step: Step, study: str | Path, plan: list[Step]) -> str:
    """done | ready (every input there) | waiting (an input step is not done)."""
    if is_done(step, study):
        return "done"
    by_name = {other.name: other for other in plan}
    missing = [need for need in step.needs if need in by_name and not is_done(by_name[need], study)]
    return "waiting" if missing else "ready"


def total_cost(steps: list[Step]) -> float:
    return sum(step.cost for step in steps)
