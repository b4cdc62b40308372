"""`brewer catalog`: every registered name a recipe can use, with a one-line description.

Printed from the recipe layer's manifest of names (brewer_cli.recipe.names), which a test holds
equal to the live registries: listing names needs neither torch nor transformers, so the catalog
prints in well under a second."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from brewer_cli.recipe.names import (
    DISTILLER_NAMES,
    FAMILY_NAMES,
    KD_LOSS_NAMES,
    MATCH_LOSS_NAMES,
    PROJECTION_NAMES,
    SYNTHETIC_DATASET_NAMES,
    TASK_NAMES,
    TEMPERATURE_SCHEDULE_NAMES,
    WEIGHT_SCHEDULE_NAMES,
    preset_names,
)


def sections() -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(title, recipe field, [(name, description)]) for each registry."""

    def rows(registry, describe=None) -> list[tuple[str, str]]:
        result = []
        for entry in registry:
            aliases = registry.aliases_of(entry.name)
            name = entry.name + (f" (alias {', '.join(aliases)})" if aliases else "")
            result.append((name, describe(entry) if describe else entry.description))
        return result

    def family_row(entry) -> str:
        return f"{entry.description} [model_type: {', '.join(entry.value.model_types)}]"

    def match_row(entry) -> str:
        return entry.value.formula or entry.description

    return [
        ("model families", "teacher / student checkpoints and configs", rows(FAMILY_NAMES, family_row)),
        ("tasks", "task.kind", rows(TASK_NAMES)),
        ("distillers", "distillation.kind", rows(DISTILLER_NAMES)),
        ("KD losses", "distillation.kd_loss", rows(KD_LOSS_NAMES)),
        ("match losses", "distillation.matches[].loss", rows(MATCH_LOSS_NAMES, match_row)),
        ("temperature schedules", "distillation.temperature_schedule.kind", rows(TEMPERATURE_SCHEDULE_NAMES)),
        ("weight schedules", "distillation.kd_weight_schedule / hard_label_weight_schedule", rows(WEIGHT_SCHEDULE_NAMES)),
        ("projections", "distillation.matches[].projection", rows(PROJECTION_NAMES)),
        ("synthetic datasets", "data.train.synthetic", rows(SYNTHETIC_DATASET_NAMES)),
        ("match presets", "distillation.matches[] (by name)", rows(preset_names())),
    ]


def print_catalog(console: Any) -> None:
    for title, field, entries in sections():
        table = Table(title=escape(f"{title} — {field}"), title_justify="left", show_header=False, expand=False)
        table.add_column("name", style="bold", no_wrap=True)
        table.add_column("description")
        for name, description in entries:
            # Descriptions hold brackets (`[model_type: bert]`, `h_S[:,0]`): printed as written, not as markup.
            table.add_row(escape(name), escape(description))
        console.print(table)
