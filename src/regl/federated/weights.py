"""Model weights as plain lists of tensors, and the server's float64 arithmetic on them.

A model's *weights* are all its state entries in ``state_dict`` order: the trainable parameters and the
buffers (BatchNorm running statistics, float, and its ``num_batches_tracked`` counter, integer). The server
computes in float64 and rounds once to each entry's dtype (integers to the nearest integer), so an algorithm
that reduces to FedAvg (FedAvgM with momentum 0, FedNova with equal steps) gives FedAvg's weights bit for
bit, not just within rounding. ``parameter_mask`` tells which entries are trainable parameters: the server
rules of docs/algorithms.md apply to those only; buffers are averaged with the clients' aggregation weights.
"""

from __future__ import annotations

import torch
from torch import nn

Weights = list[torch.Tensor]


def state_keys(model: nn.Module) -> list[str]:
    return list(model.state_dict())


def get_weights(model: nn.Module) -> Weights:
    """A detached copy of the model's state (parameters and buffers), in state_dict order."""
    return [v.detach().clone() for v in model.state_dict().values()]


def set_weights(model: nn.Module, weights: Weights) -> None:
    state = model.state_dict()
    with torch.no_grad():
        for k, w in zip(state, weights, strict=True):
            state[k].copy_(w)


def parameter_mask(model: nn.Module) -> list[bool]:
    """For each weight: is it a trainable parameter (True) or a buffer (False)?"""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return [k in names for k in state_keys(model)]


def split(weights: Weights, mask: list[bool]) -> tuple[Weights, Weights]:
    """(parameters, buffers) of a weight list."""
    return ([w for w, m in zip(weights, mask, strict=True) if m],
            [w for w, m in zip(weights, mask, strict=True) if not m])


def merge(params: Weights, buffers: Weights, mask: list[bool]) -> Weights:
    """The inverse of ``split``."""
    p, b = iter(params), iter(buffers)
    return [next(p) if m else next(b) for m in mask]


def to64(weights: Weights) -> Weights:
    return [w.to(torch.float64) for w in weights]


def weighted_sum(stack: list[Weights], coefficients: list[float]) -> Weights:
    """Σ c_i w_i in float64."""
    out = [torch.zeros_like(w, dtype=torch.float64) for w in stack[0]]
    for c, ws in zip(coefficients, stack, strict=True):
        for o, w in zip(out, ws):
            o.add_(w.to(torch.float64), alpha=float(c))
    return out


def cast_like(weights64: Weights, like: Weights) -> Weights:
    """Round float64 server results to the model's dtypes (integer entries to the nearest integer)."""
    return [(w.round() if not ref.is_floating_point() else w).to(ref.dtype)
            for w, ref in zip(weights64, like, strict=True)]


def zeros_like(weights: Weights, dtype: torch.dtype | None = None) -> Weights:
    return [torch.zeros_like(w, dtype=dtype or w.dtype) for w in weights]
