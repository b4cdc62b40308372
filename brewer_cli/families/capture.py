"""Capturing the query/key/value projections with forward hooks, so that attention losses get
pre-softmax scores while the model keeps its fast SDPA kernel. A fused projection (GPT-2's c_attn,
whose output is q|k|v side by side) is hooked once per layer and its output split in thirds."""

from __future__ import annotations

import math

import torch
from torch import nn

from brewer_cli.features import AttentionInputs


class AttentionCapture:
    """Forward hooks on the query/key(/value) projections, recording each call in order.

    A module used by several layers (ALBERT) is called once per layer, so per-module call lists
    rebuild the per-layer order without knowing anything about sharing.
    """

    def __init__(self, projections: list[tuple[nn.Module, nn.Module, nn.Module]], with_values: bool, fused: bool = False):
        self.projections = projections
        self.with_values = with_values
        # One module per layer writes q|k|v: each triple is that module three times.
        self.fused = fused
        self.calls: dict[int, list[torch.Tensor]] = {}
        self.handles = []
        seen: set[int] = set()
        for query, key, value in projections:
            for module in (query, key, value) if with_values and not fused else (query, key):
                if id(module) in seen:
                    continue
                seen.add(id(module))
                self.calls[id(module)] = []
                self.handles.append(module.register_forward_hook(self._hook(id(module))))

    def _hook(self, module_id: int):
        def record(_module, _inputs, output):
            self.calls[module_id].append(output)

        return record

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def attention_inputs(self, heads: int) -> tuple[AttentionInputs, ...]:
        """Per layer, the recorded projections of a model with `heads` attention heads."""
        used: dict[int, int] = {}
        result = []

        def take(module: nn.Module) -> torch.Tensor:
            index = used.get(id(module), 0)
            used[id(module)] = index + 1
            return self.calls[id(module)][index]

        for query, key, value in self.projections:
            if self.fused:
                fused_query, fused_key, fused_value = take(query).chunk(3, dim=-1)
                result.append(
                    AttentionInputs(
                        query=fused_query,
                        key=fused_key,
                        value=fused_value if self.with_values else None,
                        num_heads=heads,
                    )
                )
                continue
            result.append(
                AttentionInputs(
                    query=take(query),
                    key=take(key),
                    value=take(value) if self.with_values else None,
                    num_heads=heads,
                )
            )
        return tuple(result)


def split_heads(tensor: torch.Tensor, num_heads: int) -> torch.Tensor:
    batch, length, width = tensor.shape
    return tensor.view(batch, length, num_heads, width // num_heads).transpose(1, 2)


def attention_scores(inputs: AttentionInputs) -> torch.Tensor:
    """Pre-softmax scores QKᵀ/√d_k, (B, h, L, L), in fp32, without the additive mask.

    Under mixed precision the recorded projections are bf16/fp16, and a matmul inside the
    autocast region would round the scores to that precision too (a relative error of ~5e-3 in
    bf16). The losses promise fp32, so the projections are upcast and the matmul runs with
    autocast disabled: the scores are then exact for the projections the model itself used.
    """
    with torch.autocast(device_type=inputs.query.device.type, enabled=False):
        query = split_heads(inputs.query.float(), inputs.num_heads)
        key = split_heads(inputs.key.float(), inputs.num_heads)
        return query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])
