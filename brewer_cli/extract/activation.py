"""Activation-magnitude scores (`strategy: activation`), as Minitron ranks structures for pruning
(Muralidharan et al., 2024, "Compact Language Models via Pruning and Knowledge Distillation"):
forward passes only, no gradients, every score a mean over the valid tokens of the calibration
batches.

- a head: the L2 norm of its slice of the attention output (the input of the attention output
  projection, i.e. softmax(QKᵀ/√d)·V of that head), mean over tokens;
- a value neuron: the mean |value| of that channel of the attention output;
- a query/key neuron: mean |q| + mean |k| of that channel (the q and k blocks of a fused projection);
- an FFN neuron: the mean |activation| of the neuron as the output projection reads it
  (act(gate)·up for a gated block);
- a hidden channel: the mean |output| of that channel of every norm over the hidden width,
  summed over the norms (Minitron's LayerNorm-output score for embedding channels).

The modules are found through the family's declared slots, so any family extraction covers gets
these scores. Unlike Taylor scores, these measure how much a structure is used, not what removing
it costs the loss; they need no labels and no backward pass.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from brewer_cli.extract.plan import Sizes
from brewer_cli.extract.scoring import Scores
from brewer_cli.extract.scoring import _model_inputs as model_inputs
from brewer_cli.extract.slicing import width_size
from brewer_cli.families import Family
from brewer_cli.families.layout import FFN, HIDDEN, QUERY_KEY, VALUE, Norm, blocks, find_path, get_path


class _Sums:
    """Per-channel sums of |x| (or per-head norms) over valid tokens, for one kind of structure."""

    def __init__(self):
        self.values: dict[Any, torch.Tensor] = {}

    def add(self, key: Any, value: torch.Tensor) -> None:
        value = value.detach().double().cpu()
        self.values[key] = self.values[key] + value if key in self.values else value


def activation_scores(model: nn.Module, family: Family, sizes: Sizes, batches: list[dict[str, Any]]) -> Scores:
    """Activation scores of every structure of `model` (see the module docstring)."""
    device = next(model.parameters()).device
    sums = _Sums()
    mask_holder: dict[str, torch.Tensor] = {}

    def valid(tensor: torch.Tensor) -> torch.Tensor:
        """(tokens, width) of the valid positions of a (B, L, width) activation."""
        mask = mask_holder.get("mask")
        flat = tensor.reshape(-1, tensor.shape[-1])
        return flat[mask.reshape(-1).bool()] if mask is not None else flat

    def output_hook(key: Any, block_of: tuple | None = None):
        def record(_module, _inputs, output):
            values = valid(output).abs().sum(dim=0)
            if block_of is not None:  # a fused q|k|v output: the query/key blocks
                values = _blocks(values, block_of, QUERY_KEY, sizes)
            sums.add(key, values)

        return record

    def input_hook(key: Any, heads: bool = False):
        def record(_module, inputs):
            tokens = valid(inputs[0])
            sums.add(key, tokens.abs().sum(dim=0))
            if heads:
                norms = tokens.view(tokens.shape[0], sizes.heads, sizes.head_dim).norm(dim=-1)
                sums.add((key[0], "heads"), norms.sum(dim=0))

        return record

    handles = []
    layers = family.layer_modules(model)
    for index, layer in enumerate(layers):
        for slot in family.layer.slots():
            module = get_path(layer, slot.path)
            if QUERY_KEY in blocks(slot.writes):
                fused = slot.writes if isinstance(slot.writes, tuple) else None
                handles.append(module.register_forward_hook(output_hook((index, "query_key", slot.path), fused)))
            if slot.reads == VALUE:
                handles.append(module.register_forward_pre_hook(input_hook((index, "value"), heads=True)))
            if slot.reads == FFN:
                handles.append(module.register_forward_pre_hook(input_hook((index, "ffn"))))
            if isinstance(slot, Norm) and slot.width == HIDDEN:
                handles.append(module.register_forward_hook(output_hook(("hidden", index, slot.path))))
    base = family.base_module(model)
    for slot in family.base_slots():
        module = find_path(base, slot.path)
        hidden_wide = slot.width == HIDDEN or sizes.embedding_tied
        if isinstance(slot, Norm) and module is not None and hidden_wide:
            handles.append(module.register_forward_hook(output_hook(("hidden", None, slot.path))))

    tokens = 0
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                inputs = model_inputs(model, batch, device)
                mask = inputs.get("attention_mask")
                mask_holder["mask"] = mask
                model(**inputs)
                tokens += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training
    tokens = max(tokens, 1)

    def mean(key: Any, size: int) -> torch.Tensor:
        return sums.values[key] / tokens if key in sums.values else torch.zeros(size, dtype=torch.float64)

    attention = sizes.heads * sizes.head_dim
    query_key = []
    for index in range(sizes.layers):
        layer_sum = torch.zeros(attention, dtype=torch.float64)
        for key, value in sums.values.items():
            if key[0] == index and key[1] == "query_key" and value.numel() == attention:
                layer_sum += value / tokens
        query_key.append(layer_sum)
    hidden = torch.zeros(sizes.hidden, dtype=torch.float64)
    for key, value in sums.values.items():
        if key[0] == "hidden" and value.numel() == sizes.hidden:
            hidden += value / tokens
    return Scores(
        heads=[mean((index, "heads"), sizes.heads) for index in range(sizes.layers)],
        query_key=query_key,
        value=[mean((index, "value"), attention) for index in range(sizes.layers)],
        ffn=[mean((index, "ffn"), sizes.intermediate) for index in range(sizes.layers)],
        hidden=hidden,
        examples=sum(int(batch["input_ids"].shape[0]) for batch in batches),
        losses={"mean |activation| (Minitron)"},
        objectives={"activation"},
    )


def _blocks(values: torch.Tensor, fused: tuple, width: str, sizes: Sizes) -> torch.Tensor:
    """The sum of the blocks of `width` in a fused dimension."""
    total, offset = None, 0
    for block in fused:
        size = width_size(block, sizes)
        if block == width:
            piece = values[offset : offset + size]
            total = piece if total is None else total + piece
        offset += size
    return total
