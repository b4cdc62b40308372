"""The rows of the results table (benchmarks/results_table.py) and the runs they make: which
recipe, which seeds, which teacher run, the --set overrides the driver adds, the estimated cost,
and whether a run is finished, started or not started."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brewer_cli.recipe import load_recipe
from brewer_cli.run_directory import run_started

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = ROOT / "benchmarks" / "work" / "results"
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
# The records kept in the repository (--record): a sitting's machine may be a fresh one, and a row
# recorded here is not run again on it (results_table.main).
RECORDS = ROOT / "benchmarks" / "results.json"
README = ROOT / "README.md"
START_MARKER = "<!-- results-table:start -->"
END_MARKER = "<!-- results-table:end -->"
DEFAULT_SEEDS = (42, 43, 44)
# Over this share of the machine's CPU time used by other processes, a run had company.
OTHERS_THRESHOLD = 0.05


@dataclass(frozen=True)
class Dataset:
    name: str
    train: int
    eval: int
    unit: str
    # What one epoch's steps count: examples, or QA windows (a long context gives several).
    train_steps_examples: int
    # Trained on data.augment's file: the driver counts its records once it exists.
    augmented: bool = False


DATASETS = {
    "sst2": Dataset("SST-2", 67_349, 872, "sentences", 67_349),
    "rte": Dataset("RTE", 2_490, 277, "pairs", 2_490),
    # 2,490 pairs and up to 20 variants each; the driver counts the augmented file once it exists.
    "rte-augmented": Dataset("RTE, augmented", 52_290, 277, "pairs", 52_290, augmented=True),
    # About 1.07 windows of 384 tokens per question (a dry run over the first 300 questions: 320).
    "squad-articles": Dataset("SQuAD v1.1, articles 0-37 / 38-47", 8_582, 1_988, "questions", 9_150),
    "glue-sst2": Dataset("GLUE SST-2", 67_349, 872, "sentences", 67_349),
    "glue-mrpc": Dataset("GLUE MRPC", 3_668, 408, "pairs", 3_668),
    "squad": Dataset("SQuAD v1.1", 87_599, 10_570, "questions", 88_600),
}


@dataclass(frozen=True)
class Row:
    """One line of the table: a recipe, run once (or once per seed when `seeded`)."""

    id: str
    dataset: str
    recipe: str
    method: str
    # The plan's cost estimate. CPU rows: train_time_s / steps of the recorded run (results.json) on
    # the 2-core machine, rounded up; extra_minutes: evaluation, importance scoring, augmentation.
    seconds_per_step: float
    extra_minutes: float = 0.0
    scale: str = "cpu"
    seeded: bool = False
    teacher_row: str | None = None
    # Recipe fields that name the teacher row's final/ directory.
    teacher_fields: tuple[str, ...] = ("teacher.checkpoint",)
    seed_fields: tuple[str, ...] = ("training.seed",)
    # The random-init run that the steps-to-reach figure measures the other students against.
    reference_row: str | None = None
    # The row this one differs from in a single setting (the same recipe without augmentation):
    # the notes set their best and final figures side by side.
    compared_with: str | None = None


ROWS: tuple[Row, ...] = (
    Row("sst2-teacher", "sst2", "recipes/sst2/minilm-teacher-full-local.yaml", "teacher: MiniLM-L6-H384 fine-tuned", 0.40, 5),
    Row(
        "sst2-a",
        "sst2",
        "recipes/sst2/minilm_l3-h384-labels-only-local.yaml",
        "(a) labels only, no teacher",
        0.20,
        2,
    ),
    Row(
        "sst2-b",
        "sst2",
        "recipes/sst2/minilm_to_l3-h384-random-local.yaml",
        "(b) random init + basic KD",
        0.23,
        3,
        seeded=True,
        teacher_row="sst2-teacher",
    ),
    Row(
        "sst2-c",
        "sst2",
        "recipes/sst2/minilm_to_l3-h384-etd-rand-local.yaml",
        "(c) ETD-Rand + basic KD",
        0.20,
        3,
        seeded=True,
        teacher_row="sst2-teacher",
        seed_fields=("training.seed", "student.init.extract.seed"),
        reference_row="sst2-b",
    ),
    Row(
        "sst2-d",
        "sst2",
        "recipes/sst2/minilm_to_l3-h384-etd-impt-local.yaml",
        "(d) ETD-Impt + basic KD",
        0.20,
        5,
        seeded=True,
        teacher_row="sst2-teacher",
        reference_row="sst2-b",
    ),
    Row(
        "sst2-e",
        "sst2",
        "recipes/sst2/minilm_to_l3-h384-etd-impt-general-local.yaml",
        "(e) ETD-Impt + general KD (hidden + attention)",
        0.23,
        5,
        seeded=True,
        teacher_row="sst2-teacher",
        reference_row="sst2-b",
    ),
    Row(
        "sst2-f",
        "sst2",
        "recipes/sst2/minilm_to_t4-tiny-etd-impt-general-local.yaml",
        "(f) 4 × 312 TinyBERT shape, ETD-Impt + general KD",
        0.27,
        5,
        teacher_row="sst2-teacher",
    ),
    Row("rte-teacher", "rte", "recipes/rte/minilm-teacher-local.yaml", "teacher: MiniLM-L6-H384 fine-tuned", 1.0, 3),
    Row(
        "rte-student",
        "rte",
        "recipes/rte/minilm_to_l3-h384-etd-impt-general-local.yaml",
        "(e) ETD-Impt + general KD",
        0.5,
        3,
        teacher_row="rte-teacher",
    ),
    Row(
        "rte-student-augmented",
        "rte-augmented",
        "recipes/rte/minilm_to_l3-h384-etd-impt-general-augment-local.yaml",
        "(e) + TinyBERT augmentation",
        0.21,
        15,
        teacher_row="rte-teacher",
        compared_with="rte-student",
    ),
    Row(
        "squad-teacher",
        "squad-articles",
        "recipes/squad/minilm-teacher-384-local.yaml",
        "teacher: MiniLM-L6-H384 fine-tuned",
        3.2,
        12,
    ),
    Row(
        "squad-student",
        "squad-articles",
        "recipes/squad/minilm_to_l3-h384-etd-impt-local.yaml",
        "ETD-Impt 3 × 384 + basic KD",
        1.3,
        12,
        teacher_row="squad-teacher",
    ),
    # Paper scale: a GPU and the hub (estimates for one recent data-centre GPU, bf16).
    Row(
        "full-sst2-teacher", "glue-sst2", "recipes/sst2/bert-base-teacher.yaml", "teacher: BERT-base fine-tuned", 0.05, 2, "full"
    ),
    Row(
        "full-sst2-t6",
        "glue-sst2",
        "recipes/sst2/bert-base_to_t6-general.yaml",
        "T6 general KD",
        0.05,
        5,
        "full",
        teacher_row="full-sst2-teacher",
    ),
    Row(
        "full-sst2-t4-tiny",
        "glue-sst2",
        "recipes/sst2/bert-base_to_t4-tiny-general.yaml",
        "T4-tiny general KD",
        0.04,
        5,
        "full",
        teacher_row="full-sst2-teacher",
    ),
    Row("full-mrpc-teacher", "glue-mrpc", "recipes/mrpc/bert-base-teacher.yaml", "teacher: BERT-base fine-tuned", 0.1, 1, "full"),
    Row(
        "full-mrpc-t6",
        "glue-mrpc",
        "recipes/mrpc/bert-base_to_t6-general.yaml",
        "T6 general KD",
        0.1,
        3,
        "full",
        teacher_row="full-mrpc-teacher",
    ),
    Row(
        "full-mrpc-t4-tiny",
        "glue-mrpc",
        "recipes/mrpc/bert-base_to_t4-tiny-general.yaml",
        "T4-tiny general KD",
        0.08,
        3,
        "full",
        teacher_row="full-mrpc-teacher",
    ),
    Row("full-squad-teacher", "squad", "recipes/squad/bert-base-teacher.yaml", "teacher: BERT-base fine-tuned", 0.25, 5, "full"),
    Row(
        "full-squad-t6",
        "squad",
        "recipes/squad/bert-base_to_t6-general.yaml",
        "T6 general KD",
        0.2,
        15,
        "full",
        teacher_row="full-squad-teacher",
    ),
    Row(
        "full-squad-t4-tiny",
        "squad",
        "recipes/squad/bert-base_to_t4-tiny-basic.yaml",
        "T4-tiny basic KD",
        0.12,
        15,
        "full",
        teacher_row="full-squad-teacher",
    ),
)


# ============================================================================= the plan


@dataclass(frozen=True)
class Settings:
    output: Path
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    device: str | None = None
    precision: str | None = None

    @property
    def runs_dir(self) -> Path:
        return self.output / "runs"


@dataclass(frozen=True)
class PlannedRun:
    row: Row
    seed: int | None
    name: str
    run_dir: Path
    overrides: tuple[str, ...]
    teacher_dir: Path | None
    steps: int
    training_seed: int

    def command(self, *extra: str) -> list[str]:
        sets = [part for override in self.overrides for part in ("--set", override)]
        return ["brewer", "distill", self.row.recipe, "--output-dir", str(self.run_dir.parent), *sets, *extra]


def catalogue(scale: str, rows: Sequence[Row] = ROWS) -> dict[str, Row]:
    return {row.id: row for row in rows if row.scale == scale}


def select(catalog: dict[str, Row], wanted: str | None) -> list[Row]:
    """The rows asked for (all of the scale when none), each after the teacher row it needs."""
    if not wanted:
        chosen = list(catalog.values())
    else:
        ids = [part.strip() for part in wanted.split(",") if part.strip()]
        unknown = [row_id for row_id in ids if row_id not in catalog]
        if unknown:
            raise SystemExit(f"--rows: unknown row(s) {', '.join(unknown)} — choose among {', '.join(catalog)} (see --list)")
        chosen = [catalog[row_id] for row_id in ids]
    ordered: list[Row] = []
    for row in chosen:
        teacher = catalog.get(row.teacher_row) if row.teacher_row else None
        if teacher is not None and teacher not in ordered:
            ordered.append(teacher)
        if row not in ordered:
            ordered.append(row)
    return ordered


def _load(row: Row, overrides: Sequence[str] = ()) -> Any:
    return load_recipe(ROOT / row.recipe, list(overrides))


def plan_runs(rows: Sequence[Row], settings: Settings, catalog: dict[str, Row]) -> list[PlannedRun]:
    """Every run of the selected rows: name, directory and the --set overrides the driver adds."""
    names: dict[str, str] = {}
    planned = []
    for row in rows:
        recipe = _load(row)
        names[row.id] = recipe.name
        seeds: list[int | None] = list(settings.seeds) if row.seeded else [None]
        for seed in seeds:
            name = f"{recipe.name}-seed{seed}" if seed is not None else recipe.name
            overrides: list[str] = []
            if seed is not None:
                overrides.append(f"name={name}")
                overrides += [f"{path}={seed}" for path in row.seed_fields]
            teacher_dir = None
            if row.teacher_row:
                teacher_name = names.get(row.teacher_row) or _load(catalog[row.teacher_row]).name
                teacher_dir = settings.runs_dir / teacher_name
                overrides += [f"{path}={teacher_dir / 'final'}" for path in row.teacher_fields]
            if settings.precision:
                overrides.append(f"training.precision={settings.precision}")
                if recipe.teacher is not None and recipe.teacher.train is not None:
                    # The teacher this row would train when missing learns in the same precision as its row.
                    overrides.append(f"teacher.train.training.precision={settings.precision}")
            resolved = _load(row, overrides)
            planned.append(
                PlannedRun(
                    row=row,
                    seed=seed,
                    name=name,
                    run_dir=settings.runs_dir / name,
                    overrides=tuple(overrides),
                    teacher_dir=teacher_dir,
                    steps=estimated_steps(row, resolved.training),
                    training_seed=resolved.training.seed,
                )
            )
    return planned


def estimated_steps(row: Row, training: Any) -> int:
    if training.max_steps:
        return training.max_steps
    per_epoch = math.ceil(DATASETS[row.dataset].train_steps_examples / (training.batch_size * training.gradient_accumulation))
    return math.ceil(training.epochs * per_epoch)


def estimated_hours(run: PlannedRun) -> float:
    return (run.steps * run.row.seconds_per_step + run.row.extra_minutes * 60) / 3600


def decide(run_dir: Path) -> str:
    """'skip' a finished run (summary.json), 'resume' a started one (a complete checkpoint, here or
    in a stage), else 'fresh'."""
    if (run_dir / "summary.json").is_file():
        return "skip"
    stages = [path for path in run_dir.glob("stage-*") if path.is_dir()]
    if run_dir.is_dir() and (run_started(run_dir) or any(run_started(stage) for stage in stages)):
        return "resume"
    return "fresh"
