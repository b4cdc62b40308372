"""The torch-free manifest of names (brewer_cli.recipe.names) is the live registries exactly: the
recipe layer validates names against it and `brewer catalog` prints it, so an entry registered
without its manifest line would be refused in recipes and missing from the catalog."""

from __future__ import annotations

import pytest

from brewer_cli.catalog import sections
from brewer_cli.recipe import names
from brewer_cli.registry import Registry


def live_registries() -> dict[str, tuple[Registry, Registry]]:
    from brewer_cli.distillers import DISTILLERS
    from brewer_cli.families import FAMILIES
    from brewer_cli.losses import KD_LOSSES, MATCH_LOSSES
    from brewer_cli.matches import PRESETS
    from brewer_cli.projections import PROJECTIONS
    from brewer_cli.schedulers import TEMPERATURE_SCHEDULES, WEIGHT_SCHEDULES
    from brewer_cli.synthetic import GENERATORS
    from brewer_cli.tasks import TASKS

    return {
        "TASK_NAMES": (names.TASK_NAMES, TASKS),
        "DISTILLER_NAMES": (names.DISTILLER_NAMES, DISTILLERS),
        "KD_LOSS_NAMES": (names.KD_LOSS_NAMES, KD_LOSSES),
        "MATCH_LOSS_NAMES": (names.MATCH_LOSS_NAMES, MATCH_LOSSES),
        "TEMPERATURE_SCHEDULE_NAMES": (names.TEMPERATURE_SCHEDULE_NAMES, TEMPERATURE_SCHEDULES),
        "WEIGHT_SCHEDULE_NAMES": (names.WEIGHT_SCHEDULE_NAMES, WEIGHT_SCHEDULES),
        "PROJECTION_NAMES": (names.PROJECTION_NAMES, PROJECTIONS),
        "SYNTHETIC_DATASET_NAMES": (names.SYNTHETIC_DATASET_NAMES, GENERATORS),
        "FAMILY_NAMES": (names.FAMILY_NAMES, FAMILIES),
        "preset_names()": (names.preset_names(), PRESETS),
    }


def _described(registry: Registry) -> dict[str, tuple]:
    """name → (description, aliases, model types, formula) of every entry."""
    return {
        entry.name: (
            entry.description,
            tuple(registry.aliases_of(entry.name)),
            tuple(getattr(entry.value, "model_types", ())),
            getattr(entry.value, "formula", ""),
        )
        for entry in registry
    }


def _line(name: str, description: str, aliases: tuple, model_types: tuple, formula: str) -> str:
    """The manifest line for a live entry, for the failure message."""
    named = f"Named(model_types={model_types!r})" if model_types else f"Named(formula={formula!r})" if formula else "Named()"
    return f"({name!r}, {description!r}, {named}" + (f", {aliases!r})" if aliases else ")")


@pytest.mark.parametrize("manifest_name", list(live_registries()))
def test_the_manifest_is_the_live_registry(manifest_name):
    manifest, live = live_registries()[manifest_name]
    assert manifest.what == live.what
    expected, found = _described(live), _described(manifest)
    wrong = [_line(name, *entry) for name, entry in expected.items() if found.get(name) != entry]
    extra = sorted(set(found) - set(expected))
    assert not wrong and not extra, (
        f"brewer_cli/recipe/names.py, {manifest_name}: the recipe layer's names differ from the live registry — "
        f"{'write (or correct) these entries: ' + '; '.join(wrong) if wrong else ''}"
        f"{' remove: ' + ', '.join(extra) if extra else ''}"
    )


def test_every_task_says_which_columns_it_reads():
    from brewer_cli.tasks import TASKS

    for entry in TASKS:
        named = names.TASK_NAMES.get(entry.name)
        assert named.columns, f"{entry.name}: declare its data columns in brewer_cli/recipe/names.py"


def test_squad_rows_have_the_columns_the_check_expects(tmp_path):
    from brewer_cli.recipe.inputs import SQUAD_COLUMNS
    from brewer_cli.tasks.formats import squad_rows

    document = {"data": [{"title": "t", "paragraphs": [{"context": "c", "qas": [{"id": "1", "question": "q", "answers": []}]}]}]}
    [row] = squad_rows(document, tmp_path / "squad.json", "here")
    assert tuple(row) == SQUAD_COLUMNS


def test_the_catalog_lists_every_name_with_its_field():
    listed = {title: (field, dict(rows)) for title, field, rows in sections()}
    assert listed["KD losses"][0] == "distillation.kd_loss"
    assert listed["match losses"][1]["fsp (alias gram)"].startswith("G = X₀ᵀX₁")
    assert listed["model families"][1]["roberta"].endswith("[model_type: roberta, camembert]")
    assert set(listed["match presets"][1]) == set(names.preset_names().names())
    for title, (_, rows) in listed.items():
        assert rows and all(description for description in rows.values()), title
