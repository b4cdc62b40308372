"""`brewer push` and a recipe's `hub:` section. The Hub is replaced only at huggingface_hub's
boundary (HfApi.whoami / create_repo / create_branch / upload_folder), so the tests see the exact
repository, branch, folder, files and card that would be sent; offline mode and a missing token go
through huggingface_hub's real code. A failed push exits 2 with one paragraph and leaves the run
directory exactly as it was."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import huggingface_hub
import pytest
import yaml
from huggingface_hub import HfApi, ModelCard
from typer.testing import CliRunner

from brewer_cli.cli import app
from brewer_cli.recipe import load_recipe, stage_recipes, teacher_training_recipe
from brewer_cli.run_directory import resume_changes
from tests.conftest import TINY_BERT, distill_recipe, save_tiny_model, write_recipe
from tests.test_model_card import SHORT, finished_run

runner = CliRunner()
FILES = ["README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tokenizer_dir) -> Path:
    return finished_run(tmp_path_factory.mktemp("push"), tokenizer_dir)


@pytest.fixture
def hub(monkeypatch) -> dict[str, Any]:
    """A logged-in user and a Hub that records what it is sent (folder contents read at upload time)."""
    sent: dict[str, Any] = {"calls": []}
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    # The recording Hub below stands for a reachable one (tests/conftest.py turns offline mode on).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def whoami(self, token=None, **kwargs):
        sent["calls"].append("whoami")
        return {"name": "me"}

    def create_repo(self, repo_id, **kwargs):
        sent["calls"].append("create_repo")
        sent["create_repo"] = {"repo_id": repo_id, **kwargs}
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **kwargs):
        sent["calls"].append("create_branch")
        sent["create_branch"] = {"repo_id": repo_id, **kwargs}

    def upload_folder(self, **kwargs):
        sent["calls"].append("upload_folder")
        folder = Path(kwargs["folder_path"])
        sent["upload_folder"] = kwargs
        sent["files"] = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())
        sent["card"] = (folder / "README.md").read_text()
        # What the run directory held when the upload began.
        sent["run_files"] = sorted(path.name for path in folder.parent.iterdir())
        return SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/abc")

    for name, function in (
        ("whoami", whoami),
        ("create_repo", create_repo),
        ("create_branch", create_branch),
        ("upload_folder", upload_folder),
    ):
        monkeypatch.setattr(HfApi, name, function)
    return sent


def listing(directory: Path) -> dict[str, int]:
    return {str(path.relative_to(directory)): path.stat().st_mtime_ns for path in sorted(directory.rglob("*")) if path.is_file()}


def flat(output: str) -> str:
    return " ".join(output.split())


def test_push_uploads_final_with_model_tokenizer_and_card(run, hub):
    result = runner.invoke(app, ["push", str(run), "--repo-id", "me/tiny-student", "--private", "--revision", "v1"])
    assert result.exit_code == 0, result.output
    assert hub["calls"] == ["whoami", "create_repo", "create_branch", "upload_folder"]
    assert hub["create_repo"] == {"repo_id": "me/tiny-student", "private": True, "exist_ok": True}
    assert hub["create_branch"] == {"repo_id": "me/tiny-student", "branch": "v1", "exist_ok": True}
    upload = hub["upload_folder"]
    assert (upload["repo_id"], Path(upload["folder_path"]), upload["revision"]) == (
        "me/tiny-student",
        (run / "final").resolve(),
        "v1",
    )
    assert upload["commit_message"] == "brewer push: tiny"
    assert hub["files"] == FILES
    assert hub["card"] == (run / "final" / "README.md").read_text()
    card = ModelCard(hub["card"])
    assert card.data.library_name == "transformers" and card.data.tags == ["distillation", "brewer"]
    assert "https://huggingface.co/me/tiny-student/commit/abc" in flat(result.output)


def test_push_of_a_model_directory_sends_that_directory_on_main(run, hub):
    result = runner.invoke(app, ["push", str(run / "best"), "--repo-id", "me/tiny-best"])
    assert result.exit_code == 0, result.output
    assert "create_branch" not in hub["calls"]
    assert hub["create_repo"]["private"] is False
    assert Path(hub["upload_folder"]["folder_path"]) == (run / "best").resolve() and hub["upload_folder"]["revision"] is None
    assert hub["files"] == FILES


def test_push_writes_a_missing_card_first(run, hub, tmp_path):
    import shutil

    copied = tmp_path / "old-run"
    shutil.copytree(run, copied)
    (copied / "final" / "README.md").unlink()
    (copied / "best" / "README.md").unlink()
    result = runner.invoke(app, ["push", str(copied), "--repo-id", "me/old-run"])
    assert result.exit_code == 0, result.output
    assert hub["files"] == FILES
    assert ModelCard(hub["card"]).data.pipeline_tag == "text-classification"


def test_offline_push_is_one_clear_error_and_changes_nothing(run, monkeypatch):
    """HF_HUB_OFFLINE=1 (tests/conftest.py sets it before huggingface_hub is imported) through the
    real huggingface_hub code: its first request refuses."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    before = listing(run)
    result = runner.invoke(app, ["push", str(run), "--repo-id", "me/tiny-student"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert (
        f"error (hub): pushing {(run / 'final').resolve()} to the Hub repository me/tiny-student failed: the Hub cannot be "
        f"reached, offline mode is on (HF_HUB_OFFLINE=1) — unset HF_HUB_OFFLINE where the network reaches "
        f"huggingface.co, and push again"
    ) in flat(result.output)
    assert listing(run) == before


def test_push_without_a_token_says_how_to_log_in(run, monkeypatch, tmp_path):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert huggingface_hub.get_token() is None
    before = listing(run)
    result = runner.invoke(app, ["push", str(run), "--repo-id", "me/tiny-student"])
    assert result.exit_code == 2, result.output
    assert (
        "failed: not logged in to the Hugging Face Hub — no token in HF_TOKEN and none stored by `hf auth login`; "
        "log in with `hf auth login` (a token with write access) or set HF_TOKEN, and push again"
    ) in flat(result.output)
    assert listing(run) == before


def test_push_of_something_that_is_not_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["push", str(tmp_path / "empty"), "--repo-id", "me/x"])
    assert result.exit_code == 2
    assert f"{tmp_path / 'empty'}: not a run directory with a final/ model, nor a model directory (no config.json)" in flat(
        result.output
    )


# ----------------------------------------------------------------------------- the recipe's `hub:`


def hub_recipe(tmp_path: Path, tokenizer_dir: Path, **hub: Any) -> Path:
    teacher = save_tiny_model(tmp_path / "teacher", tokenizer_dir)
    return write_recipe(tmp_path, distill_recipe(teacher, training=dict(SHORT), hub={"repo_id": "me/tiny-student", **hub}))


def test_distill_pushes_at_the_end_after_summary_and_cards(tmp_path, tokenizer_dir, hub):
    path = hub_recipe(tmp_path, tokenizer_dir, private=True)
    result = runner.invoke(app, ["distill", str(path), "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "tiny"
    assert hub["create_repo"] == {"repo_id": "me/tiny-student", "private": True, "exist_ok": True}
    assert Path(hub["upload_folder"]["folder_path"]) == (run_dir / "final").resolve()
    assert hub["files"] == FILES
    assert {"summary.json", "best", "final", "recipe.yaml"} <= set(hub["run_files"])
    summary = json.loads((run_dir / "summary.json").read_text())
    student = {r.metric_type: r.metric_value for r in ModelCard(hub["card"]).data.eval_results if r.metric_name == r.metric_type}
    assert student == summary["student"]["metrics"]


def test_a_push_that_cannot_happen_is_refused_before_training(tmp_path, tokenizer_dir, monkeypatch):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    path = hub_recipe(tmp_path, tokenizer_dir)
    result = runner.invoke(app, ["distill", str(path), "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert (
        f"error (hub): {path}: hub.repo_id: the run would push to me/tiny-student when it ends, but brewer is not "
        f"logged in to the Hugging Face Hub (no token in HF_TOKEN and none stored by `hf auth login`)"
    ) in flat(result.output)
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    result = runner.invoke(app, ["distill", str(path), "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "offline mode is on (HF_HUB_OFFLINE is set)" in flat(result.output)
    assert not (tmp_path / "runs").exists()


def test_a_failed_push_at_the_end_keeps_the_run_and_says_how_to_retry(tmp_path, tokenizer_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def no_network(self, *arguments, **options):
        # The network boundary: huggingface_hub's HTTP client could not connect.
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", no_network)
    path = hub_recipe(tmp_path, tokenizer_dir, revision="v1")
    result = runner.invoke(app, ["distill", str(path), "--output-dir", str(tmp_path / "runs")])
    run_dir = tmp_path / "runs" / "tiny"
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert (
        f"error (hub): {path}: hub.repo_id: pushing {(run_dir / 'final').resolve()} to the Hub repository me/tiny-student failed"
        in text
    )
    assert (
        f"The run itself is complete locally in {run_dir} (final/, best/, summary.json, model cards), and nothing was "
        f"deleted — push it later with `brewer push {run_dir} --repo-id me/tiny-student --revision v1`"
    ) in text
    for name in ("summary.json", "final/README.md", "final/model.safetensors", "best/README.md", "final/tokenizer.json"):
        assert (run_dir / name).is_file(), name


def test_hub_section_is_validated_and_left_out_of_derived_runs(tmp_path, tokenizer_dir):
    bad = write_recipe(tmp_path, distill_recipe("unused", hub={"repo_id": "me/bad--name", "privat": True}), "bad.yaml")
    result = runner.invoke(app, ["distill", str(bad)])
    assert result.exit_code == 2
    text = flat(result.output)
    assert f"{bad}: hub.repo_id: 'me/bad--name' is not a Hub repository id — write NAMESPACE/NAME" in text
    assert f"{bad}: hub.privat: unknown key (did you mean 'private'?)" in text

    raw = distill_recipe("runs/tiny-teacher/final", hub={"repo_id": "me/tiny-student"})
    raw["teacher"]["train"] = {"model": {"config": dict(TINY_BERT)}, "training": dict(SHORT)}
    recipe = load_recipe(write_recipe(tmp_path, raw))
    assert recipe.hub.repo_id == "me/tiny-student" and recipe.hub.private is False and recipe.hub.revision is None
    # The teacher's run is a step of this one: it is never pushed.
    assert teacher_training_recipe(recipe).hub is None
    staged = dict(raw)
    staged["stages"] = [{"distillation": raw["distillation"]}, {"distillation": raw["distillation"]}]
    del staged["distillation"]
    staged_recipe = load_recipe(write_recipe(tmp_path, staged, "staged.yaml"))
    assert staged_recipe.hub is not None
    assert all(stage.hub is None for _, stage in stage_recipes(staged_recipe, tmp_path / "runs" / "tiny"))


def test_adding_hub_on_resume_is_allowed(run):
    raw = yaml.safe_load((run / "recipe.yaml").read_text())
    raw["hub"] = {"repo_id": "me/tiny-student"}
    recipe = load_recipe(write_recipe(run.parent.parent, raw, "resumed.yaml"))
    changes = resume_changes(run, recipe)
    assert set(changes) == {"hub.repo_id", "hub.private"}  # resolved recipes leave out unset fields
