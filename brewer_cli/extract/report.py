"""What extraction reports: the importance summary kept with the result, and `describe`, the
human-readable account `brewer extract` and dry runs print."""

from __future__ import annotations

from typing import Any

import torch

from brewer_cli.extract.plan import ExtractPlan, ExtractResult, Sizes
from brewer_cli.extract.scoring import Scores
from brewer_cli.extract.slicing import IndexSets


def _share(scores: torch.Tensor, kept: torch.Tensor) -> float:
    total = float(scores.sum())
    return float(scores[kept].sum()) / total if total > 0 else 1.0


def importance_summary(
    scores: Scores,
    in_teacher: IndexSets,
    kept_layers: list[int],
    teacher: Sizes,
    target: Sizes,
    plan: ExtractPlan,
) -> dict[str, Any]:
    """JSON-friendly figures from the teacher's (round-1) scores; shares count kept layers only."""
    layers = [layer - 1 for layer in kept_layers]

    def retained(per_layer_scores: list[torch.Tensor], per_layer_kept: list[torch.Tensor]) -> float:
        total = sum(float(per_layer_scores[layer].sum()) for layer in layers)
        kept = sum(float(per_layer_scores[layer][per_layer_kept[layer]].sum()) for layer in layers)
        return kept / total if total > 0 else 1.0

    order = torch.argsort(scores.hidden, descending=True, stable=True)[:10]
    summary: dict[str, Any] = {
        "loss": " + ".join(sorted(scores.losses)),
        "examples": scores.examples,
        "rounds": plan.rounds,
        "hidden_scoring": plan.hidden_scoring,
        "head_scores": [layer_scores.tolist() for layer_scores in scores.heads],
        "top_hidden_channels": [[int(index), float(scores.hidden[index])] for index in order],
        "retained": {
            "hidden": _share(scores.hidden, in_teacher.hidden),
            "heads": retained(scores.heads, in_teacher.heads),
            "ffn": retained(scores.ffn, in_teacher.ffn),
        },
    }
    if target.head_dim < teacher.head_dim:
        summary["retained"]["query_key_neurons"] = retained(scores.query_key, in_teacher.query_key)
        summary["retained"]["value_neurons"] = retained(scores.value, in_teacher.value)
    return summary


def describe(result: ExtractResult) -> str:
    """A multi-line, human-readable account of what was kept, for `brewer extract` and dry runs."""
    kept = result.kept
    teacher = kept["sizes"]["teacher"]
    student = kept["sizes"]["student"]
    layer_list = ", ".join(map(str, kept["layers"]))
    lines = [
        f"Extracted {kept['model_class']} student ({kept['strategy']}, seed {kept['seed']}"
        + (f", {kept['rounds']} rounds" if kept["rounds"] > 1 else "")
        + ")",
        f"  layers:       {student['layers']} of {teacher['layers']} — teacher layers {layer_list} ({kept['selection']})",
        f"  hidden:       {student['hidden']} of {teacher['hidden']} channels",
        f"  attention:    {student['heads']} heads × {student['head_dim']} (teacher {teacher['heads']} × {teacher['head_dim']})",
        f"  intermediate: {student['intermediate']} of {teacher['intermediate']} FFN neurons per layer",
    ]
    if student["embedding"] != student["hidden"] or teacher["embedding"] != teacher["hidden"]:
        lines.append(f"  embedding:    {student['embedding']} (teacher {teacher['embedding']})")
    share = student["parameters"] / teacher["parameters"] if teacher["parameters"] else 0.0
    in_millions = teacher["parameters"] >= 1_000_000  # one unit for both, so they compare at a glance
    lines.append(
        f"  parameters:   {_count(student['parameters'], in_millions)} of "
        f"{_count(teacher['parameters'], in_millions)} ({share:.0%})"
    )
    if student["heads"] < teacher["heads"]:
        lines.append("  heads kept (0-based, per kept layer):")
        for layer, heads in zip(kept["layers"], kept["heads"]):
            lines.append(f"    layer {layer}: {' '.join(map(str, heads))}")
    summary = result.importance_summary
    if summary is not None:
        lines.append(
            f"  importance:   {summary['loss']}, {summary['examples']} examples, hidden channels by {summary['hidden_scoring']}"
        )
        retained = ", ".join(f"{name} {value:.1%}" for name, value in summary["retained"].items())
        lines.append(f"  retained importance: {retained}")
        top = ", ".join(f"{index} ({score:.3g})" for index, score in summary["top_hidden_channels"][:5])
        lines.append(f"  top hidden channels: {top}")
        top_heads = []
        for layer in kept["layers"]:
            layer_scores = summary["head_scores"][layer - 1]
            best = max(range(len(layer_scores)), key=layer_scores.__getitem__)
            top_heads.append(f"L{layer} h{best} ({layer_scores[best]:.3g})")
        lines.append(f"  top head per kept layer: {', '.join(top_heads)}")
    return "\n".join(lines)


def _count(count: int, in_millions: bool) -> str:
    return f"{count / 1e6:.1f}M" if in_millions else f"{count:,}"
