"""What extraction reports: the importance summary kept with the result, and `describe`, the
human-readable account `brewer extract` and dry runs print."""

from __future__ import annotations

from typing import Any

import torch

from brewer_cli.extract.plan import ExtractPlan, ExtractResult, Sizes
from brewer_cli.extract.scoring import Scores
from brewer_cli.extract.sizing import shape_dict_text
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
        # `activation` ranks hidden channels by activation too, whatever hidden_scoring says.
        "hidden_scoring": "activation" if plan.strategy == "activation" else plan.hidden_scoring,
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
    if "key_value_heads" in teacher:  # grouped-query attention
        lines.insert(
            4, f"  key/value:    {student['key_value_heads']} groups of {teacher['key_value_heads']} (whole heads and groups)"
        )
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
        for layer, groups in zip(kept["layers"], kept.get("key_value_groups", [])):
            lines.append(f"    layer {layer} key/value groups: {' '.join(map(str, groups))}")
    if kept.get("budget") is not None:
        lines.extend(describe_budget(kept["budget"]))
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


def _flops(count: float) -> str:
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            return f"{count / scale:.3g}{unit}"
    return f"{count:.3g}"


def _parameters(count: float) -> str:
    return f"{count / 1e6:.2f}M" if count >= 1_000_000 else f"{int(count):,}"


def describe_budget(budget: dict[str, Any]) -> list[str]:
    """The lines for an extraction to a target (extract/budget.py): the target, the chosen shape,
    its size against the target and the teacher, the share of importance kept, the alternatives."""
    target, teacher, chosen = budget["target"], budget["teacher"], budget["chosen"]
    key = next(name for name in target if name != "seq_len")
    if key == "parameters":
        asked = f"parameters ≤ {_parameters(target[key])}"
    elif key == "size_of":
        asked = f"size of {target[key]} ≤ {_parameters(budget['size_of_parameters'])} parameters as a student of this teacher"
    else:
        asked = f"{key} {target[key]:g} (FLOPs ≤ {_flops(budget['limit'])} at {teacher['seq_len']} tokens)"
        if key == "latency_fewer_by":
            asked += ", FLOPs as the proxy of latency"
    limit_share = (chosen["parameters"] if budget["measure"] == "parameters" else chosen["flops"]) / budget["limit"]
    lines = [
        f"  target:       {asked}",
        f"  choice:       {budget['rule']}",
        f"  chosen:       {shape_dict_text(chosen)} — teacher layers {', '.join(map(str, chosen['kept_layers']))}",
        f"  size:         {_parameters(chosen['parameters'])} parameters ({chosen['parameters_share_of_teacher']:.1%} of the "
        f"teacher's {_parameters(teacher['parameters'])}), {_flops(chosen['flops'])} FLOPs at {teacher['seq_len']} tokens "
        f"({chosen['flops_fewer_by']:.2f}× fewer than the teacher's {_flops(teacher['flops'])}); "
        f"{limit_share:.1%} of the target's {'parameters' if budget['measure'] == 'parameters' else 'FLOPs'}",
    ]
    if chosen["importance_kept"] is not None:
        lines.append(f"  importance kept (share of the teacher's): {_shares(chosen['importance_kept'])}")
    lines.append(f"  alternatives ({budget['meeting_target']:,} shapes meet the target, of {budget['candidates']:,} considered):")
    rows = [("", entry) for entry in budget["alternatives"]]
    if budget.get("uniform") is not None:
        rows.append(("uniform shape: ", budget["uniform"]))
    for label, entry in rows:
        importance = entry["importance_kept"]
        lines.append(
            f"    {label}{shape_dict_text(entry)}: {_parameters(entry['parameters'])} parameters, {_flops(entry['flops'])} FLOPs"
            + (f", importance kept {importance['total']:.1%}" if importance is not None else "")
            + ("" if entry["meets_target"] else " — misses the target")
        )
    return lines


def _shares(shares: dict[str, float]) -> str:
    parts = ", ".join(f"{name} {shares[name]:.1%}" for name in ("hidden", "attention", "ffn", "layers"))
    return f"total {shares['total']:.1%} — {parts}"
