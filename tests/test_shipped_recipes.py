"""The recipes brewer ships: each says in its first line whether it needs the Hugging Face Hub, every
hub recipe names an offline sibling that exists, and an offline recipe truly reads nothing from the
hub — no hub data source and no model named by a hub id (the reason the -local siblings exist)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from brewer_cli.synthetic import entity_sentences
from brewer_cli.tasks.token_classification import is_iob2

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))
OFFLINE = "# Offline"
NEEDS_HUB = "# Needs the Hugging Face Hub"
# Model references that need no network: an installed package, a run's output, a shipped config.
LOCAL_MODEL = re.compile(r"^(python-package:|embeddings:python-package:|runs/|configs/|\.\./)")


def _first_line(path: Path) -> str:
    return path.read_text(encoding="utf-8").splitlines()[0]


def _references(node, trail=()):
    """(dotted path, value) of every data source hub name and every model reference in a raw recipe."""
    if isinstance(node, dict):
        for key, value in node.items():
            path = (*trail, str(key))
            if key == "hub" and isinstance(value, str):
                yield ".".join(path), value
            elif key in ("checkpoint", "word_vectors") and isinstance(value, str):
                yield ".".join(path), value
            elif key == "model" and isinstance(value, str):  # data.augment.model
                yield ".".join(path), value
            elif key == "path" and trail and trail[-1] == "tokenizer" and isinstance(value, str):
                yield ".".join(path), value
            else:
                yield from _references(value, path)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _references(value, (*trail, str(index)))


@pytest.mark.parametrize("path", RECIPES, ids=lambda path: str(path.relative_to(ROOT / "recipes")))
def test_first_line_says_whether_the_recipe_needs_the_hub(path):
    first = _first_line(path)
    assert first.startswith((OFFLINE, NEEDS_HUB)), f"{path}: first line {first!r}"


@pytest.mark.parametrize("path", [path for path in RECIPES if _first_line(path).startswith(OFFLINE)], ids=lambda path: path.name)
def test_an_offline_recipe_reads_nothing_from_the_hub(path):
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    for field, value in _references(raw):
        assert not field.endswith(".hub"), f"{path}: {field} reads {value!r} from the hub"
        assert LOCAL_MODEL.match(value), f"{path}: {field} names {value!r}, not a local model"


@pytest.mark.parametrize(
    "path", [path for path in RECIPES if _first_line(path).startswith(NEEDS_HUB)], ids=lambda path: path.name
)
def test_a_hub_recipe_names_its_offline_sibling(path):
    found = re.search(r"Offline sibling: (recipes/\S+\.yaml)", _first_line(path))
    assert found, f"{path}: the first line names no offline sibling"
    sibling = ROOT / found.group(1)
    assert sibling.is_file() and _first_line(sibling).startswith(OFFLINE)


def test_generated_entity_sentences_are_iob2_and_need_context():
    rows = entity_sentences(400, seed=3)
    assert rows == entity_sentences(400, seed=3)  # seeded
    assert rows != entity_sentences(400, seed=4)
    assert all(len(row["tokens"]) == len(row["tags"]) for row in rows)
    tags = {tag for row in rows for tag in row["tags"]}
    assert tags == {"O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"}
    assert all(is_iob2(tag) for tag in tags)
    # An I- tag always continues an entity of its type: the sequences are well-formed IOB2.
    for row in rows:
        for previous, tag in zip(["O", *row["tags"]], row["tags"]):
            if tag.startswith("I-"):
                assert previous[2:] == tag[2:], row
    # The same word is a person in some sentences and a place in others.
    jordan = {tag for row in rows for word, tag in zip(row["tokens"], row["tags"]) if word == "jordan"}
    assert jordan == {"B-PER", "B-LOC"}


def _teacher_trainings():
    """(recipe file, teacher checkpoint, its teacher-training recipe) for every shipped recipe and
    stage that trains a teacher when it is missing."""
    from brewer_cli.build import teacher_slots
    from brewer_cli.recipe import load_recipe, stage_recipes, teacher_training_recipe

    for path in RECIPES:
        recipe = load_recipe(path, check_inputs=False)
        recipes = (
            [recipe] if recipe.stages is None else [staged for _, staged in stage_recipes(recipe, Path("runs") / recipe.name)]
        )
        for each in recipes:
            for slot in teacher_slots(each):
                if slot.spec.train is not None:
                    yield path, slot.spec.checkpoint, teacher_training_recipe(slot.recipe, slot.spec)


def test_recipes_that_share_a_teacher_train_it_alike(tmp_path):
    """brewer refuses to reuse a teacher trained with other settings than a recipe's `teacher.train`
    (brewer_cli.build.teachers): two shipped recipes naming one teacher checkpoint must train it alike,
    or running one after the other would stop with that refusal."""
    from brewer_cli.recipe import resolved_mapping
    from brewer_cli.run_directory import result_changes

    first: dict[str, tuple[Path, object]] = {}
    for path, checkpoint, trainer in _teacher_trainings():
        if checkpoint not in first:
            first[checkpoint] = (path, trainer)
            continue
        reference_path, reference = first[checkpoint]
        recorded = tmp_path / checkpoint.replace("/", "_")
        recorded.mkdir(exist_ok=True)
        (recorded / "recipe.yaml").write_text(yaml.safe_dump(resolved_mapping(reference), sort_keys=False))
        assert result_changes(recorded, trainer) == {}, f"{path} and {reference_path} train {checkpoint} differently"
