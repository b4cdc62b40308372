"""Decoder KD, offline (issue 19 point 8): how much of a small GPT-2-shaped teacher's perplexity a
3-layer student recovers with each token-level KD method, against steps and wall time.

No pretrained decoder can be downloaded here, so the driver builds one small, from real English
text in ../shared/data:

- `--prepare` (run first, and by every other command when the corpus is missing): SQuAD v1.1 dev
  contexts, one paragraph per line, split by article (articles 0-39 train, 40-47 eval, so no eval
  paragraph shares an article with a trained one), and the SST-2 sentences (train.tsv → train,
  dev.tsv → eval) into OUTPUT/corpus/{train,eval}.txt. Deterministic; prints lines and words.
- the rows: the teacher (recipes/causal_lm/decoder-kd-teacher.yaml: 4 × 192 trained from scratch for 3
  epochs with `kind: trainer`, WordPiece vocabulary of 4,000 trained on the train split, blocks of 128
  tokens), then 2 × 192 students (FFN 384) with the same data and 150 steps: CE only (no teacher), forward KL,
  reverse KL, JSD(0.5), forward KL from the sparse store at k = 8, 64 and 512 (a `brewer capture`
  per k, run once, before the row that reads it) and ETD-Impt-extracted init + forward KL. Student
  rows run once per seed (`--seeds`, default 42,43,44); each evaluates perplexity every 25 steps,
  so metrics.jsonl holds perplexity against steps and (its `time`) wall time.

The shapes are the issue's example (a 6 × 384 teacher, 3-layer students) scaled down to what two CPU
cores run in one sitting: measured alone, a 6 × 384 teacher step (batch 32 × 128 tokens, vocabulary
8,000) took 4.1 s, which puts the whole table at about 28 hours; at 4 × 192 and a 4,000-token
vocabulary a teacher step takes about a second and the table about two hours.

Running is benchmarks/results_table.py's: one `brewer` subprocess at a time (`run_brewer`), its
load watched (`LoadWatch`: did other jobs share the machine), a finished run (summary.json, or a
store's manifest.json) skipped, a started one resumed with `--resume` (`decide`). After each run
OUTPUT/results.json and OUTPUT/results.md are rewritten (benchmarks/decoder_kd_report.py);
`--record` writes the table into benchmarks/RESULTS.md between `<!-- decoder-kd:start -->` and
`<!-- decoder-kd:end -->`.

`--scale tiny` is the smoke test: a few hundred corpus lines, 1-layer models of width 32, blocks of
32 tokens, a handful of steps, every row and capture — about three minutes on 2 shared CPU cores, in
benchmarks/work/decoder-tiny. Estimated hours (`--list`) assume the machine alone: FLOPs per step
(6 × parameters per trained token, 2 × per teacher token, attention included) at about 45 GFLOP/s,
the rate benchmarks/results_table.py measured on this 2-core machine, plus evaluations.

    python benchmarks/decoder_kd.py --prepare
    python benchmarks/decoder_kd.py --list
    python benchmarks/decoder_kd.py --dry-run          # brewer distill --dry-run per run whose teacher / store exists
    python benchmarks/decoder_kd.py                    # everything, resumable: run it again after a stop
    python benchmarks/decoder_kd.py --rows teacher,ce-only,forward-kl --seeds 42
    python benchmarks/decoder_kd.py --record           # also write the table into benchmarks/RESULTS.md
    python benchmarks/decoder_kd.py --scale tiny       # the smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from decoder_kd_report import load_results, record_for, record_section, results_markdown, save_results
from results_rows import ROOT, decide
from results_table import machine, run_brewer

DEFAULT_SEEDS = (42, 43, 44)
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
DATA = ROOT.parent / "shared" / "data"
TRAIN_ARTICLES = range(0, 40)
EVAL_ARTICLES = range(40, 48)
# FLOP/s of this 2-core machine on brewer's training steps (benchmarks/results_table.py's docstring).
FLOPS_PER_SECOND = 45e9
# WordPiece tokens per whitespace word of the training split (8,000-token vocabulary; a dry run
# counts 9,254 blocks of 128), + 1 EOS per line.
TOKENS_PER_WORD = 1.32


# ============================================================================= the corpus


def corpus_lines(data: Path = DATA, scale: str = "full") -> dict[str, list[str]]:
    """{"train": [...], "eval": [...]}: SQuAD dev paragraphs split by article, then SST-2 sentences.
    Whitespace is collapsed so that one line is one document. `tiny` keeps the first lines of each."""
    squad = json.loads((data / "squad" / "dev-v1.1.json").read_text(encoding="utf-8"))["data"]

    def paragraphs(articles: range) -> list[str]:
        return [" ".join(p["context"].split()) for index in articles for p in squad[index]["paragraphs"]]

    def sentences(name: str) -> list[str]:
        # GLUE's TSV: a header `sentence\tlabel`, no quoting (a quote is a character of the sentence).
        lines = (data / "sst2" / name).read_text(encoding="utf-8").splitlines()
        assert lines[0].split("\t")[0] == "sentence", f"{data / 'sst2' / name}: header {lines[0]!r}"
        return [" ".join(line.rsplit("\t", 1)[0].split()) for line in lines[1:] if line.strip()]

    split = {
        "train": (paragraphs(TRAIN_ARTICLES), sentences("train.tsv")),
        "eval": (paragraphs(EVAL_ARTICLES), sentences("dev.tsv")),
    }
    if scale == "tiny":
        keep = {"train": (150, 150), "eval": (25, 25)}
        split = {
            name: (squad_part[: keep[name][0]], sst2_part[: keep[name][1]]) for name, (squad_part, sst2_part) in split.items()
        }
    return {name: [line for line in (*squad_part, *sst2_part) if line] for name, (squad_part, sst2_part) in split.items()}


def prepare(output: Path, scale: str, data: Path = DATA) -> dict[str, Any]:
    """Write OUTPUT/corpus/{train,eval}.txt and corpus/stats.json; print their sizes."""
    corpus = output / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    stats: dict[str, Any] = {"squad_articles": {"train": "0-39", "eval": "40-47"}, "scale": scale}
    for name, lines in corpus_lines(data, scale).items():
        (corpus / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        words = sum(len(line.split()) for line in lines)
        stats[name] = {"lines": len(lines), "words": words}
        print(f"{corpus / (name + '.txt')}: {len(lines):,} lines, {words:,} words")
    (corpus / "stats.json").write_text(json.dumps(stats, indent=2), encoding="utf-8")
    return stats


def corpus_stats(output: Path) -> dict[str, Any]:
    path = output / "corpus" / "stats.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


# ============================================================================= the rows


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    ffn: int

    def parameters_per_token(self, vocabulary: int, length: int) -> float:
        """Forward FLOPs per token / 2: the matmuls, the LM head and the attention scores."""
        return (
            self.layers * (4 * self.hidden**2 + 2 * self.hidden * self.ffn + 2 * length * self.hidden) + self.hidden * vocabulary
        )


@dataclass(frozen=True)
class Scale:
    """What differs between the full runs and the smoke test: sizes, and the --set overrides."""

    name: str
    teacher: Shape
    student: Shape
    vocabulary: int
    length: int
    batch_size: int
    teacher_epochs: float
    student_steps: int
    eval_every: int
    overrides: tuple[str, ...] = ()  # every run
    teacher_overrides: tuple[str, ...] = ()
    student_overrides: tuple[str, ...] = ()  # runs whose student comes from a config
    extract_overrides: tuple[str, ...] = ()


SCALES = {
    "full": Scale("full", Shape(4, 192, 768), Shape(2, 192, 384), 4000, 128, 32, 3, 150, 25),
    "tiny": Scale(
        "tiny",
        Shape(1, 32, 64),
        Shape(1, 32, 32),
        1000,
        32,
        8,
        1,
        6,
        3,
        overrides=(
            "data.max_length=32",
            "training.max_steps=6",
            "training.batch_size=8",
            "training.eval_every=3",
            "training.save_every=3",
            "training.eval_batch_size=16",
        ),
        teacher_overrides=("model.config=CONFIGS/teacher.json", "model.tokenizer.train_wordpiece.vocab_size=1000"),
        student_overrides=("CONFIG=CONFIGS/student.json",),
        extract_overrides=(
            "student.init.extract.layers=1",
            "student.init.extract.intermediate=32",
            "student.init.extract.examples=8",
        ),
    ),
}
TINY_CONFIGS = {
    "teacher.json": {"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2, "n_inner": 64, "n_positions": 32},
    "student.json": {"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2, "n_inner": 32, "n_positions": 32},
}


@dataclass(frozen=True)
class Row:
    """One line of the table (kind teacher / student), or a capture step that writes a store."""

    id: str
    recipe: str
    method: str
    kind: str  # teacher | student | capture
    teacher: str = "live"  # student rows: live (runs the teacher), none (CE only), store (reads the store at `k`)
    k: int | None = None
    extracted: bool = False


ROWS: tuple[Row, ...] = (
    Row("teacher", "recipes/causal_lm/decoder-kd-teacher.yaml", "teacher: GPT-2 shape, trained from scratch", "teacher"),
    Row("ce-only", "recipes/causal_lm/decoder-kd-ce-only.yaml", "CE only, no teacher", "student", teacher="none"),
    Row("forward-kl", "recipes/causal_lm/decoder-kd-forward-kl.yaml", "forward KL", "student"),
    Row("reverse-kl", "recipes/causal_lm/decoder-kd-reverse-kl.yaml", "reverse KL", "student"),
    Row("jsd", "recipes/causal_lm/decoder-kd-jsd.yaml", "JSD(β = 0.5)", "student"),
    *(
        row
        for k in (8, 64, 512)
        for row in (
            Row(f"capture-k{k}", "recipes/causal_lm/decoder-kd-forward-kl.yaml", f"brewer capture --top-k {k}", "capture", k=k),
            Row(
                f"sparse-k{k}",
                f"recipes/causal_lm/decoder-kd-sparse-k{k}.yaml",
                f"forward KL, sparse store k = {k}",
                "student",
                "store",
                k,
            ),
        )
    ),
    Row(
        "etd-forward-kl",
        "recipes/causal_lm/decoder-kd-etd-forward-kl.yaml",
        "ETD-Impt init + forward KL",
        "student",
        extracted=True,
    ),
)


@dataclass(frozen=True)
class Settings:
    output: Path
    scale: Scale
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    device: str | None = None

    @property
    def runs_dir(self) -> Path:
        return self.output / "runs"

    def teacher_final(self) -> Path:
        return self.runs_dir / "decoder-kd-teacher" / "final"

    def store(self, k: int) -> Path:
        return self.runs_dir / f"decoder-kd-teacher-store-k{k}"


@dataclass(frozen=True)
class PlannedRun:
    row: Row
    seed: int | None
    name: str
    run_dir: Path  # a capture's: the store directory
    overrides: tuple[str, ...]

    def command(self, *extra: str) -> list[str]:
        sets = [part for override in self.overrides for part in ("--set", override)]
        if self.row.kind == "capture":
            return [
                "brewer",
                "capture",
                self.row.recipe,
                "--output",
                str(self.run_dir),
                "--top-k",
                str(self.row.k),
                *sets,
                *extra,
            ]
        return ["brewer", "distill", self.row.recipe, "--output-dir", str(self.run_dir.parent), *sets, *extra]

    def status(self) -> str:
        """skip (finished), resume (started) or fresh; a capture starts over when it did not finish."""
        if self.row.kind == "capture":
            return "skip" if (self.run_dir / "manifest.json").is_file() else "fresh"
        return decide(self.run_dir)


def select(wanted: str | None, rows: Sequence[Row] = ROWS) -> list[Row]:
    """The rows asked for (all when none), each after the rows it reads: the teacher, its capture."""
    catalog = {row.id: row for row in rows}
    if not wanted:
        return list(rows)
    ids = [part.strip() for part in wanted.split(",") if part.strip()]
    unknown = [row_id for row_id in ids if row_id not in catalog]
    if unknown:
        raise SystemExit(f"--rows: unknown row(s) {', '.join(unknown)} — choose among {', '.join(catalog)} (see --list)")
    needed = set(ids)
    for row_id in ids:
        row = catalog[row_id]
        if row.kind != "teacher":
            needed.add("teacher")
        if row.teacher == "store":
            needed.add(f"capture-k{row.k}")
    return [row for row in rows if row.id in needed]


def _scaled(overrides: Sequence[str], settings: Settings, config_field: str) -> list[str]:
    configs = str(settings.output / "configs")
    return [item.replace("CONFIGS", configs).replace("CONFIG=", f"{config_field}=") for item in overrides]


def plan_runs(rows: Sequence[Row], settings: Settings) -> list[PlannedRun]:
    """Every run: name, directory and the --set overrides (corpus, teacher, store, seed, scale)."""
    scale = settings.scale
    corpus = settings.output / "corpus"
    planned = []
    for row in rows:
        base = [f"data.train.path={corpus / 'train.txt'}", f"data.eval.path={corpus / 'eval.txt'}", *scale.overrides]
        if row.kind == "teacher":
            base += _scaled(scale.teacher_overrides, settings, "model.config")
        elif row.teacher == "none":
            base += [
                f"model.tokenizer.path={settings.teacher_final()}",
                *_scaled(scale.student_overrides, settings, "model.config"),
            ]
        elif row.teacher == "store":
            base += [f"teacher.store={settings.store(row.k)}", *_scaled(scale.student_overrides, settings, "student.config")]
        else:
            base.append(f"teacher.checkpoint={settings.teacher_final()}")
            if row.extracted:
                base += list(scale.extract_overrides)
            else:
                base += _scaled(scale.student_overrides, settings, "student.config")
        stem = Path(row.recipe).stem
        if row.kind == "capture":
            store = settings.store(row.k)
            planned.append(PlannedRun(row, None, store.name, store, tuple(base)))
            continue
        for seed in settings.seeds if row.kind == "student" else (None,):
            name = stem if seed is None else f"{stem}-seed{seed}"
            overrides = [*base, f"name={name}", f"training.seed={seed}"] if seed is not None else base
            planned.append(PlannedRun(row, seed, name, settings.runs_dir / name, tuple(overrides)))
    return planned


# ============================================================================= estimates


def training_tokens(settings: Settings) -> float:
    """Tokens in the packed training split: counted words × TOKENS_PER_WORD + one EOS per line."""
    train = corpus_stats(settings.output).get("train") or {"lines": 67_349 + 1_700, "words": 846_000}
    return train["words"] * TOKENS_PER_WORD + train["lines"]


def estimated_steps(run: PlannedRun, settings: Settings) -> int:
    scale = settings.scale
    if run.row.kind == "capture":
        return 0
    if any(item.startswith("training.max_steps=") for item in run.overrides):
        return int(next(item for item in run.overrides if item.startswith("training.max_steps=")).split("=")[1])
    if run.row.kind == "student":
        return scale.student_steps
    blocks = training_tokens(settings) / scale.length
    return math.ceil(scale.teacher_epochs * math.ceil(blocks / scale.batch_size))


def estimated_hours(run: PlannedRun, settings: Settings) -> float:
    scale = settings.scale
    teacher = 2 * scale.teacher.parameters_per_token(scale.vocabulary, scale.length)
    student = 2 * scale.student.parameters_per_token(scale.vocabulary, scale.length)
    eval_tokens = (corpus_stats(settings.output).get("eval") or {"words": 58_000})["words"] * TOKENS_PER_WORD
    if run.row.kind == "capture":
        return training_tokens(settings) * teacher / FLOPS_PER_SECOND / 3600
    trained, evaluated = (teacher, teacher) if run.row.kind == "teacher" else (student, student)
    per_token = 3 * trained + (teacher if run.row.teacher == "live" and run.row.kind == "student" else 0)
    steps = estimated_steps(run, settings)
    seconds = steps * scale.batch_size * scale.length * per_token / FLOPS_PER_SECOND
    seconds += (steps // scale.eval_every + 1) * eval_tokens * evaluated / FLOPS_PER_SECOND
    return seconds / 3600


def print_list(planned: Sequence[PlannedRun], settings: Settings) -> None:
    print(f"{'row':<16} {'run':<36} {'steps':>6} {'hours':>6}  {'status':<12} recipe")
    total = 0.0
    for run in planned:
        hours = estimated_hours(run, settings)
        total += hours
        status = {"skip": "finished", "resume": "started", "fresh": "not started"}[run.status()]
        print(f"{run.row.id:<16} {run.name:<36} {estimated_steps(run, settings):>6} {hours:>6.2f}  {status:<12} {run.row.recipe}")
    print(
        f"\n{len(planned)} runs, about {total:.1f} hours in all (2 CPU cores, the machine alone; estimates, see the docstring)."
    )


# ============================================================================= the command line


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepare", action="store_true", help="only write the corpus (OUTPUT/corpus) and print its size")
    parser.add_argument("--rows", help="comma-separated row ids (default: every row); see --list")
    parser.add_argument("--list", action="store_true", help="list the rows, their runs, estimated hours and status")
    parser.add_argument("--seeds", help="seeds of the student rows (default 42,43,44; --scale tiny: 42)")
    parser.add_argument("--scale", choices=tuple(SCALES), default="full", help="tiny: the smoke test (about three minutes)")
    parser.add_argument(
        "--output-dir", help="working folder (default benchmarks/work/decoder, or decoder-tiny with --scale tiny)"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), help="cpu: hide any GPU from the runs")
    parser.add_argument("--dry-run", action="store_true", help="brewer distill --dry-run per run that needs no missing output")
    parser.add_argument("--record", action="store_true", help="also write the table into benchmarks/RESULTS.md")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, rows: Sequence[Row] = ROWS, results_md: Path = RESULTS_MD, data: Path = DATA) -> int:
    args = parse(argv)
    # The smoke test runs every row once: the spread over seeds is the unit test's (a hand-made results.json).
    wanted = args.seeds or ("42" if args.scale == "tiny" else ",".join(map(str, DEFAULT_SEEDS)))
    try:
        seeds = tuple(int(part) for part in wanted.split(",") if part.strip())
    except ValueError:
        raise SystemExit(f"--seeds {args.seeds!r}: expected comma-separated whole numbers, e.g. 42,43,44") from None
    scale = SCALES[args.scale]
    default = ROOT / "benchmarks" / "work" / ("decoder" if args.scale == "full" else f"decoder-{args.scale}")
    settings = Settings(Path(args.output_dir or default).resolve(), scale, seeds, args.device)
    if args.record and args.scale != "full":
        raise SystemExit(f"--record writes benchmarks/RESULTS.md: not with --scale {args.scale} (a smoke test, not results)")
    if args.prepare or not (settings.output / "corpus" / "train.txt").is_file():
        prepare(settings.output, args.scale, data)
        if args.prepare:
            return 0
    if args.scale == "tiny":
        (settings.output / "configs").mkdir(parents=True, exist_ok=True)
        for name, config in TINY_CONFIGS.items():
            (settings.output / "configs" / name).write_text(json.dumps(config), encoding="utf-8")
    planned = plan_runs(select(args.rows, rows), settings)
    if args.list:
        print_list(planned, settings)
        return 0
    logs = settings.output / "logs"
    if args.dry_run:
        return dry_run(planned, logs, settings)
    results_path = settings.output / "results.json"
    records = load_results(results_path)
    machine_info = machine()
    for run in planned:
        status = run.status()
        if status == "skip":
            print(f"{run.name}: finished already — skipped")
            if run.name not in records:
                records[run.name] = record_for(run, settings, None, None, " ".join(run.command()))
        else:
            returncode, load, command = run_brewer(
                run.command(*(["--resume"] if status == "resume" else [])), logs / f"{run.name}.log", settings.device
            )
            if returncode != 0:
                save_results(results_path, records, planned, settings, corpus_stats(settings.output))
                again = "run the driver again to resume it" if returncode in (130, 143) else "fix it and run the driver again"
                raise SystemExit(
                    f"{run.name}: brewer exited with {returncode} — log: {logs / (run.name + '.log')}; {again} "
                    f"(finished runs are skipped, a started one resumes from its checkpoints)"
                )
            records[run.name] = record_for(run, settings, machine_info, load, command)
        save_results(results_path, records, planned, settings, corpus_stats(settings.output))
    payload = json.loads(results_path.read_text(encoding="utf-8")) if results_path.exists() else {"records": []}
    markdown = results_markdown(payload["records"], settings, payload.get("corpus") or {}, args.record)
    (settings.output / "results.md").write_text(markdown, encoding="utf-8")
    print(f"\n{markdown}\nwritten: {results_path} and {settings.output / 'results.md'}")
    if args.record:
        record_section(markdown, results_md)
    return 0


def dry_run(planned: Sequence[PlannedRun], logs: Path, settings: Settings) -> int:
    """Each distill run checked with --dry-run where what it reads exists (the teacher's final/, the
    store); the others are listed as waiting for it. Captures have no dry run."""
    failed, waiting = [], []
    for run in planned:
        needs = settings.store(run.row.k) / "manifest.json" if run.row.teacher == "store" else settings.teacher_final()
        if run.row.kind == "capture":
            continue  # brewer capture has no dry run: its recipe is the forward-KL row's, checked below
        if run.row.kind == "student" and not needs.exists():
            waiting.append(run.name)
            continue
        if run_brewer(run.command("--dry-run"), logs / f"{run.name}.dry-run.log", settings.device)[0] != 0:
            failed.append(run.name)
    checked = sum(run.row.kind != "capture" for run in planned) - len(waiting)
    print(f"\ndry run: {checked - len(failed)} of {checked} runs valid" + (f"; failed: {', '.join(failed)}" if failed else ""))
    if waiting:
        print(f"not checked (they read the teacher or a store not written yet): {', '.join(waiting)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
