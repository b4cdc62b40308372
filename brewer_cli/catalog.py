"""`brewer catalog`: every registered name a recipe can use, with a one-line description."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from brewer_cli.distillers import DISTILLERS
from brewer_cli.families import FAMILIES
from brewer_cli.losses import KD_LOSSES, MATCH_LOSSES
from brewer_cli.matches import PRESETS
from brewer_cli.projections import PROJECTIONS
from brewer_cli.schedulers import TEMPERATURE_SCHEDULES, WEIGHT_SCHEDULES
from brewer_cli.synthetic import GENERATORS
from brewer_cli.tasks import TASKS


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
        return getattr(entry.value, "formula", "") or entry.description

    result = [
        ("model families", "teacher / student checkpoints and configs", rows(FAMILIES, family_row)),
        ("tasks", "task.kind", rows(TASKS)),
        ("distillers", "distillation.kind", rows(DISTILLERS)),
        ("KD losses", "distillation.kd_loss", rows(KD_LOSSES)),
        ("match losses", "distillation.matches[].loss", rows(MATCH_LOSSES, match_row)),
        ("temperature schedules", "distillation.temperature_schedule.kind", rows(TEMPERATURE_SCHEDULES)),
        ("weight schedules", "distillation.kd_weight_schedule / hard_label_weight_schedule", rows(WEIGHT_SCHEDULES)),
        ("projections", "distillation.matches[].projection", rows(PROJECTIONS)),
        ("synthetic datasets", "data.train.synthetic", rows(GENERATORS)),
        ("match presets", "distillation.matches[] (by name)", rows(PRESETS)),
    ]
    return result


def print_catalog(console: Any) -> None:
    for title, field, entries in sections():
        table = Table(title=f"{title} — {field}", title_justify="left", show_header=False, expand=False)
        table.add_column("name", style="bold", no_wrap=True)
        table.add_column("description")
        for name, description in entries:
            table.add_row(name, description)
        console.print(table)
