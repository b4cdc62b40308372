"""The `brewer` command line. Each command parses its arguments, calls one library function and
turns a `BrewerError` into one clear paragraph and its exit code (2; 130/143 for a run stopped by a
signal). Heavy imports (torch, transformers) happen inside the command bodies so that
`brewer --help` is instant."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    help="brewer: knowledge distillation for NLP models, driven by one recipe file.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Help text is read as rich markup: a literal `[` in it is written `\\[` (brewer\\[plot]).
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        typer.echo(f"brewer {version('brewer')}")
    except PackageNotFoundError:
        typer.echo("brewer: version unknown (the package is not installed; run `pip install -e .`)")
    raise typer.Exit()


@app.callback()
def main_options(
    show_version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="print brewer's version and exit"
    ),
) -> None:
    """brewer: knowledge distillation for NLP models, driven by one recipe file."""


RecipeArgument = typer.Argument(..., help="recipe file (.yaml or .json)", show_default=False)
SetOption = typer.Option(None, "--set", help="override a recipe field: --set training.epochs=3 (repeatable)")
OutputOption = typer.Option(Path("runs"), "--output-dir", help="parent of the run directory")
ResumeOption = typer.Option(False, "--resume", help="continue from the newest complete checkpoint")
DryRunOption = typer.Option(False, "--dry-run", help="validate, build models and data, print the plan, train nothing")


def _console():
    from rich.console import Console

    return Console(stderr=False, highlight=False)


def _run(action: Callable[[], object]) -> None:
    from brewer_cli.errors import BrewerError

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        # OpenMP threads spin while they wait (GNU OpenMP, which torch's Linux wheels use: 300,000
        # spins before sleeping), taking the cores of every other job on the machine: two brewer jobs
        # on 2 cores ran 2.35× longer together than one after the other. 10,000 spins: 0.93×, for
        # 6% on the quickstart alone (fully passive waits: 0.71×, but 50% slower alone) —
        # benchmarks/threads.py, RESULTS.md. Read when torch loads, after this line; a user's
        # setting (OMP_WAIT_POLICY=ACTIVE on a machine of one's own) is kept.
        os.environ["GOMP_SPINCOUNT"] = "10000"
    # Per-file progress bars of transformers ("Loading weights", "Writing model shards") would
    # drown brewer's own progress bar and tables. transformers reads this when it is first
    # imported — after the recipe is checked, which must not wait 1–2 s for that import.
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None:
        hf_logging.disable_progress_bar()
    try:
        action()
        _leave_process_group(wait=True)
    except BrewerError as error:
        _leave_process_group(wait=False)
        from rich.console import Console
        from rich.text import Text

        # The message is printed as plain text: paths, data and recipe values may contain `[/b]`
        # (rich markup, which would crash the printer) or `:x:` (an emoji code).
        message = Text.assemble(("error", "bold red"), f" ({error.kind}): {error.message}")
        Console(stderr=True, highlight=False, soft_wrap=True, emoji=False, markup=False).print(message)
        raise typer.Exit(code=error.exit_code) from None


def _leave_process_group(wait: bool) -> None:
    """Under torchrun / accelerate launch: leave the process group before the interpreter exits.
    Left to interpreter teardown, gloo's threads were sometimes destroyed while still joinable
    ("terminate called without an active exception", exit −6) after a run that had finished.
    `wait`: after a success every process gets here, so they first wait for each other; after a
    refusal one may not, and a barrier could hang."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return
    if wait:
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _load(recipe: Path, overrides: Optional[list[str]]):
    from brewer_cli.recipe import load_recipe

    return load_recipe(recipe, overrides or [])


@app.command()
def distill(
    recipe: Path = RecipeArgument,
    set_: Optional[list[str]] = SetOption,
    output_dir: Path = OutputOption,
    resume: bool = ResumeOption,
    dry_run: bool = DryRunOption,
    retrain_teacher: bool = typer.Option(
        False,
        "--retrain-teacher",
        help="train each teacher with a `train` section again, into a fresh run: an earlier run of it is moved "
        "aside to <name>.replaced-<date-time>, never deleted (not with --resume)",
    ),
) -> None:
    """Distill the recipe's teacher into its student (training the teacher first when the recipe says how)."""

    def action():
        # The recipe is checked before torch is imported: its problems are reported at once.
        loaded = _load(recipe, set_)
        from brewer_cli.commands import distill as run_distill

        run_distill(loaded, output_dir, resume=resume, dry_run=dry_run, console=_console(), retrain_teacher=retrain_teacher)

    _run(action)


@app.command("train-teacher")
def train_teacher(
    recipe: Path = RecipeArgument,
    set_: Optional[list[str]] = SetOption,
    output_dir: Path = OutputOption,
    resume: bool = ResumeOption,
    dry_run: bool = DryRunOption,
) -> None:
    """Fine-tune a teacher: a `kind: trainer` recipe, or a distillation recipe's `teacher.train`."""

    def action():
        loaded = _load(recipe, set_)  # before torch is imported
        from brewer_cli.commands import train_teacher as run_train

        run_train(loaded, output_dir, resume=resume, dry_run=dry_run, console=_console())

    _run(action)


@app.command("eval")
def evaluate(
    target: str = typer.Argument(
        ...,
        help="run directory (runs/<name>), model directory, python-package:NAME or hub id",
        show_default=False,
    ),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="recipe giving the task and data (default: the run's own)"),
    data: Optional[str] = typer.Option(None, "--data", help="evaluate on this file instead of the recipe's eval split"),
    data_format: Optional[str] = typer.Option(
        None, "--format", help="--data's format: csv, tsv, json, jsonl, conll, squad, disk or auto (default: from its name)"
    ),
    quoting: Optional[bool] = typer.Option(None, "--quoting/--no-quoting", help="--data TSV: honour CSV quoting"),
    text: Optional[str] = typer.Option(None, "--text", help="--data's text column (default: the recipe's data.text)"),
    text_pair: Optional[str] = typer.Option(None, "--text-pair", help="--data's second text column of a pair task"),
    label: Optional[str] = typer.Option(None, "--label", help="--data's label column (default: the recipe's data.label)"),
    limit: Optional[int] = typer.Option(None, "--limit", help="evaluate on the first N examples of --data"),
    articles: Optional[str] = typer.Option(None, "--articles", help="--data SQuAD: the articles START:END"),
    against: Optional[str] = typer.Option(None, "--against", help="also evaluate this teacher (same kinds of model) and compare"),
    output: Optional[Path] = typer.Option(
        None, "--output", help="the eval file (default: eval[-CHECKPOINT][-DATA].json beside the run)"
    ),
    set_: Optional[list[str]] = SetOption,
) -> None:
    """Evaluate a model on its run's eval split (or --data), print a table, write eval.json beside the run."""

    def action():
        from brewer_cli.evaluate_command import evaluate as run_evaluate

        options = {
            "format": data_format,
            "quoting": quoting,
            "text": text,
            "text_pair": text_pair,
            "label": label,
            "limit": limit,
            "articles": articles,
        }
        run_evaluate(
            target,
            str(recipe) if recipe else None,
            data,
            options,
            against,
            set_ or [],
            _console(),
            str(output) if output else None,
        )

    _run(action)


@app.command("size-report")
def size_report(
    target: str = typer.Argument(
        ..., help="run directory, checkpoint directory, python-package:NAME, hub id or config file", show_default=False
    ),
    against: Optional[str] = typer.Option(None, "--against", help="teacher to compare with (same kinds of target)"),
    also: Optional[list[str]] = typer.Option(None, "--also", help="another run to report and plot beside them (repeatable)"),
    seq_len: Optional[int] = typer.Option(
        None, "--seq-len", help="sequence length for FLOPs and latency (default: the run's data.max_length, else 128)"
    ),
    runs: int = typer.Option(10, "--runs", help="timed runs per batch size after warm-up (0: skip latency)"),
    batch_sizes: str = typer.Option("1,32", "--batch-sizes", help="comma-separated batch sizes for latency"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    markdown: bool = typer.Option(False, "--markdown", help="print a Markdown table"),
    plot: Optional[Path] = typer.Option(
        None, "--plot", help="draw the runs' metric against latency and parameters into this PNG (needs brewer\\[plot])"
    ),
) -> None:
    """Parameters, disk size, FLOPs, latency and throughput of a model beside its run's metric, and ratios against a teacher."""

    def action():
        from brewer_cli.errors import BrewerError
        from brewer_cli.size_report import run as run_report

        try:
            sizes = tuple(int(part) for part in batch_sizes.split(",") if part.strip())
        except ValueError:
            raise BrewerError(f"--batch-sizes {batch_sizes!r}: expected comma-separated whole numbers, e.g. 1,32") from None
        run_report(
            target,
            against=against,
            seq_len=seq_len,
            runs=runs,
            batch_sizes=sizes,
            device=device,
            as_json=as_json,
            markdown=markdown,
            plot_path=str(plot) if plot else None,
            console=_console(),
            also=tuple(also or ()),
        )

    _run(action)


@app.command()
def compare(
    run_dirs: list[Path] = typer.Argument(..., help="finished run directories (runs/<name>)", show_default=False, metavar="RUN"),
    markdown: bool = typer.Option(False, "--markdown", help="print a Markdown table"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="draw metric against latency into this PNG (needs brewer\\[plot])"),
    latency: bool = typer.Option(
        True,
        "--latency/--no-latency",
        help="measure each model's and its teacher's latency on CPU, once per architecture, the models interleaved",
    ),
    seq_len: Optional[int] = typer.Option(
        None, "--seq-len", help="sequence length for FLOPs and latency (default: each run's max_length)"
    ),
    runs: int = typer.Option(10, "--runs", help="timed passes per model and batch size after warm-up, in up to 5 rounds"),
) -> None:
    """Finished runs side by side: metric, share of the teacher, size, FLOPs, speed-up, steps and time."""

    def action():
        from brewer_cli.compare import run as run_compare

        run_compare(run_dirs, markdown=markdown, plot_path=plot, latency=latency, seq_len=seq_len, runs=runs, console=_console())

    _run(action)


@app.command()
def extract(
    recipe: Path = RecipeArgument,
    set_: Optional[list[str]] = SetOption,
    output: Optional[Path] = typer.Option(
        None, "--output", help="directory for the extracted student (default runs/<name>-extracted)"
    ),
) -> None:
    """ETD: cut the recipe's student out of its teacher, write it and print what was kept."""

    def action():
        loaded = _load(recipe, set_)  # before torch is imported
        from brewer_cli.commands import extract as run_extract

        run_extract(loaded, output, console=_console())

    _run(action)


@app.command()
def capture(
    recipe: Path = RecipeArgument,
    set_: Optional[list[str]] = SetOption,
    output: Optional[Path] = typer.Option(
        None, "--output", help="the store's directory (default runs/<name>-teacher-store-k<K>)"
    ),
    top_k: int = typer.Option(64, "--top-k", help="token ids kept per position, with the log of the remaining mass"),
    temperature: Optional[float] = typer.Option(
        None, "--temperature", help="capture temperature (default: the recipe's distillation.temperature)"
    ),
    log_prob_dtype: str = typer.Option("float16", "--log-prob-dtype", help="float16 or float32 log-probabilities"),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", help="teacher batch (default: training.eval_batch_size, else twice batch_size)"
    ),
) -> None:
    """Run a causal LM teacher once over the training data; store its top-k next-token log-probabilities for `teacher: {store: DIR}`."""

    def action():
        loaded = _load(recipe, set_)  # before torch is imported
        from brewer_cli.capture_command import capture as run_capture

        run_capture(loaded, output, top_k, temperature, log_prob_dtype, batch_size, console=_console())

    _run(action)


@app.command()
def augment(
    target: str = typer.Argument(
        ..., help="recipe (its data.augment and training split) or data file (.tsv, .csv, .jsonl, .json)", show_default=False
    ),
    model: Optional[str] = typer.Option(
        None, "--model", help="masked LM with its MLM head (hub id, directory, python-package:NAME)"
    ),
    word_vectors: Optional[str] = typer.Option(
        None, "--word-vectors", help="word vectors in GloVe text format, for multi-piece words"
    ),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="splits words when there is no --model"),
    output: Optional[str] = typer.Option(
        None, "--output", help="the augmented file, .jsonl or .tsv (default: ~/.cache/brewer/augment/)"
    ),
    text: Optional[str] = typer.Option(None, "--text", help="data file: the text column (default: text)"),
    text_pair: Optional[str] = typer.Option(None, "--text-pair", help="data file: the second text column of a pair task"),
    limit: Optional[int] = typer.Option(None, "--limit", help="data file: augment only the first N examples"),
    variants: Optional[int] = typer.Option(None, "--variants", help="N_a: variants tried per example (default 20)"),
    probability: Optional[float] = typer.Option(None, "--probability", help="p: replacement probability per word (default 0.4)"),
    candidates: Optional[int] = typer.Option(None, "--candidates", help="K: MLM predictions / neighbours per word (default 15)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="random seed (default 0)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="masked-LM inference batch (default 64)"),
    set_: Optional[list[str]] = SetOption,
) -> None:
    """TinyBERT data augmentation: write a dataset with MLM / word-vector word replacements (cached)."""

    def action():
        from brewer_cli.augment import augment_command

        options = {
            "model": model,
            "word_vectors": word_vectors,
            "tokenizer": tokenizer,
            "output": output,
            "variants": variants,
            "probability": probability,
            "candidates": candidates,
            "seed": seed,
            "batch_size": batch_size,
        }
        augment_command(target, options, text, text_pair, limit, set_ or [], _console())

    _run(action)


@app.command()
def convert(
    directory: Path = typer.Argument(
        ..., help="checkpoint directory holding pytorch_model.bin (or its shards)", show_default=False
    ),
    output: Optional[Path] = typer.Option(
        None, "--output", help="directory for the converted checkpoint and its config (default: beside the .bin files)"
    ),
    remove_pickles: bool = typer.Option(
        False, "--remove-pickles", help="delete the .bin files once the safetensors are written and verified"
    ),
) -> None:
    """Convert a checkpoint's pickled weights to safetensors, once: brewer loads safetensors only."""

    def action():
        from brewer_cli.commands import convert as run_convert

        run_convert(directory, output, remove_pickles, _console())

    _run(action)


@app.command()
def push(
    target: Path = typer.Argument(
        ..., help="run directory (its final/ is pushed) or model directory (final/, best/, …)", show_default=False
    ),
    repo_id: str = typer.Option(
        ..., "--repo-id", help="the Hub model repository, e.g. your-name/sst2-student", show_default=False
    ),
    private: bool = typer.Option(False, "--private", help="create the repository private (an existing one keeps its visibility)"),
    revision: Optional[str] = typer.Option(None, "--revision", help="branch to push to, created when missing (default: main)"),
) -> None:
    """Upload a run's final/ (model, tokenizer, model card) to the Hugging Face Hub; the token is HF_TOKEN or `hf auth login`'s."""

    def action():
        from brewer_cli.hub import push as run_push

        run_push(target, repo_id, private=private, revision=revision, console=_console())

    _run(action)


@app.command()
def catalog() -> None:
    """List every registered family, task, distiller, loss, schedule, projection and match preset."""

    def action():
        from brewer_cli.catalog import print_catalog

        print_catalog(_console())

    _run(action)


cache_app = typer.Typer(
    help="What brewer keeps in its cache folder ($BREWER_CACHE, else ~/.cache/brewer): tokenized data, "
    "augmented files, teachers' completions.",
    no_args_is_help=True,
)
app.add_typer(cache_app, name="cache")
CachePartsArgument = typer.Argument(None, help="parts: tokenized, sources, augment, sequence_kd (default: all)")


@cache_app.command("list")
def cache_list(parts: Optional[list[str]] = CachePartsArgument) -> None:
    """List the cache's items, their sizes and when each was last used."""

    def action():
        from brewer_cli.cache_command import list_cache

        list_cache(parts, _console())

    _run(action)


@cache_app.command("clear")
def cache_clear(
    parts: Optional[list[str]] = CachePartsArgument,
    older_than: Optional[float] = typer.Option(None, "--older-than", help="only items last used more than DAYS days ago"),
) -> None:
    """Remove the cache's items (all of them, or of PARTS, or those unused for --older-than days)."""

    def action():
        from brewer_cli.cache_command import clear_cache

        clear_cache(parts, older_than, _console())

    _run(action)


def main() -> None:
    app(prog_name="brewer")


if __name__ == "__main__":
    sys.exit(main())
