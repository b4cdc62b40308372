"""Which number form the teacher-output cache can keep hidden states in (issue 18, point 3): fp16
(what it kept first), bf16, and int8 with one scale per row (per token: absmax / 127; what it keeps now), measured
against the tolerance the cache is held to: the training loss of every step within 2e-3
(relative) of the run without a cache (tests/test_teacher_cache.py). How far the final weights end
from the reference is reported beside it, as a share of how far training moved them.

A cache changes nothing but the teacher's features, which it returns rounded through its form.
So each form is measured exactly by a run without a cache whose teacher features are rounded
through that form on their way to the losses: the `general` run of vs_finetuning.py (MiniLM SST-2
teacher → 3 × 192 student, KD ce + hidden_mse on 4 layers + nst on 3, the first 256 SST-2
sentences, batch 16, 3 epochs, seed 42), once per form, one after the other in this process.

The report goes to benchmarks/work/reports/; `--record` also writes it into benchmarks/RESULTS.md.

    python benchmarks/cache_forms.py [--examples 256 --epochs 3] [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from common import write_section
from speed_common import WORK, brewer_recipe, prepare_inputs, sst2_job


def round_trip(tensor: torch.Tensor, form: str) -> torch.Tensor:
    """`tensor` as it comes back from a cache that keeps it in `form`."""
    if form.startswith("fp32"):
        return tensor
    if form in ("fp16", "bf16"):
        return tensor.to(torch.float16 if form == "fp16" else torch.bfloat16).to(tensor.dtype)
    # int8 per row: each token's vector scaled by its largest magnitude, rounded to −127…127.
    scale = tensor.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / 127
    return (tensor / scale).round().clamp(-127, 127) * scale


def run(
    form: str, name: str, inputs: dict[str, Path], directory: Path, arguments: Any
) -> tuple[list[float], dict[str, torch.Tensor]]:
    from rich.console import Console

    import brewer_cli.distillers.base as base
    from brewer_cli.commands import distill
    from brewer_cli.features import Features
    from brewer_cli.recipe import validate_recipe

    original = base.teacher_features

    def rounded(*args: Any, **kwargs: Any) -> Features:
        features = original(*args, **kwargs)
        if features.hidden_states is not None:
            features.hidden_states = tuple(round_trip(state, form) for state in features.hidden_states)
        return features

    base.teacher_features = rounded
    try:
        raw = brewer_recipe(sst2_job(name, "general", "off", inputs, arguments.epochs))
        recipe = validate_recipe(raw, directory / f"{name}.yaml")
        distill(recipe, directory, console=Console(file=open(os.devnull, "w")))
    finally:
        base.teacher_features = original
    run_dir = directory / name
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [record["loss"] for record in records if "loss" in record]
    from safetensors.torch import load_file

    return losses, load_file(run_dir / "final" / "model.safetensors")


def element_errors(inputs: dict[str, Path]) -> dict[str, float]:
    """Each form's error on the teacher's hidden states of the first 64 sentences, relative to
    the states' root mean square."""
    from speed_common import TEACHER, read_tsv
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    teacher = AutoModelForSequenceClassification.from_pretrained(TEACHER).eval()
    tokenizer = AutoTokenizer.from_pretrained(TEACHER)
    texts = [text for text, _ in read_tsv(inputs["sst2"])[:64]]
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.inference_mode():
        states = teacher(**encoded, output_hidden_states=True).hidden_states
    valid = encoded["attention_mask"].bool()
    values = torch.cat([states[layer][valid] for layer in (0, 2, 4, 6)])
    rms = values.pow(2).mean().sqrt()
    return {form: float((round_trip(values, form) - values).pow(2).mean().sqrt() / rms) for form in ("fp16", "bf16", "int8-row")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--record",
        action="store_true",
        help="also write the section into benchmarks/RESULTS.md (replacing one of the same title)",
    )
    arguments = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    directory = WORK / "cache_forms"
    if directory.exists():
        shutil.rmtree(directory)
    inputs = prepare_inputs(directory, arguments.examples)
    reference_losses, reference_weights = run("fp32", "general-fp32", inputs, directory, arguments)
    errors = element_errors(inputs)
    rows = []
    verdicts = {}
    from safetensors.torch import load_file

    initial = load_file(inputs["student"] / "model.safetensors")
    # How far training moved the weights: the yardstick for how far a form moves them from the reference.
    moved = sum(float((reference_weights[name] - initial[name]).pow(2).sum()) for name in reference_weights) ** 0.5
    errors["fp32, again"] = 0.0
    # fp32 again: the floor — two identical runs in one process should agree exactly.
    for form, label in (("fp32", "fp32, again"), ("fp16", "fp16"), ("bf16", "bf16"), ("int8", "int8-row")):
        losses, weights = run(form, f"general-{label.replace(', ', '-')}", inputs, directory, arguments)
        loss_error = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses, reference_losses))
        apart = sum(float((weights[name] - tensor).pow(2).sum()) for name, tensor in reference_weights.items()) ** 0.5
        within = loss_error <= 2e-3
        verdicts[label] = within
        rows.append(f"| {label} | {errors[label]:.2e} | {loss_error:.2e} | {apart / moved:.2e} | {'yes' if within else 'no'} |")
        print(rows[-1], flush=True)
    smallest = next((label for label in ("int8-row", "bf16", "fp16") if verdicts[label]), "none")
    record = " --record" if arguments.record else ""
    body = f"""
Command: `python benchmarks/cache_forms.py --examples {arguments.examples} --epochs {arguments.epochs}{record}`. CPU, fp32
training; the `general` run of vs_finetuning.py (teacher MiniLM-L6-H384 fine-tuned on SST-2, student 3 × 192 from one
saved initialization, KD ce T = 8, hidden_mse with a linear projection on 4 layers and nst on 3; the first
{arguments.examples} SST-2 training sentences, batch 16, {arguments.epochs} epochs = {len(reference_losses)} steps, seed
42). Each form is a run without a cache whose teacher hidden states are rounded through the form on their way to the
losses — exactly what a cache in that form returns — against the same run unrounded. "Element error": RMS error of
the teacher's hidden states (layers 0, 2, 4, 6, real tokens of 64 sentences) over their RMS. The tolerance is the
cache's own (tests/test_teacher_cache.py): every step's loss within 2e-3 relative. "Weights apart": the distance of
the final weights from the reference run's, over the distance the reference run moved them from their
initialization (all tensors, L2).

| form | element error | largest step-loss error | weights apart / weights moved | within the loss tolerance |
|---|---:|---:|---:|---|
{chr(10).join(rows)}

Smallest form within the tolerance: **{smallest}**.
"""
    print(body)
    write_section("Teacher-output cache: the number form of cached hidden states", body, arguments.record)


if __name__ == "__main__":
    main()
