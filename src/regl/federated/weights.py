"""Model weights as plain lists of tensors, and the server's float64 arithmetic on them.

A model's *weights* are its floating-point state entries (parameters and float buffers such as BatchNorm
statistics) in ``state_dict`` order. The server computes in float64 and rounds once to the model's dtype, so
an algorithm that reduces to FedAvg (FedAvgM with momentum 0, FedNova with equal steps) gives FedAvg's weights
bit for bit, not just within rounding.
"""

from __future__ import annotations

import torch
from torch import nn

Weights = list[torch.Tensor]


def float_keys(model: nn.Module) -> list[str]:
    return [k for k, v in model.state_dict().items() if v.is_floating_point()]


def get_weights(model: nn.Module) -> Weights:
    """A detached copy of the model's float state, in state_dict order."""
    state = model.state_dict()
    return [state[k].detach().clone() for k in float_keys(model)]


def set_weights(model: nn.Module, weights: Weights) -> None:
    state = model.state_dict()
    keys = float_keys(model)
    with torch.no_grad():
        for k, w in zip(keys, weights, strict=True):
            state[k].copy_(w)


def parameter_mask(model: nn.Module) -> list[bool]:
    """For each weight: is it a trainable parameter (True) or a buffer (False)?"""
    names = {n for n, _ in model.named_parameters()}
    return [k in names for k in float_keys(model)]


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
    """Round float64 server results to the model's dtypes."""
    return [w.to(ref.dtype) for w, ref in zip(weights64, like, strict=True)]


def zeros_like(weights: Weights, dtype: torch.dtype | None = None) -> Weights:
    return [torch.zeros_like(w, dtype=dtype or w.dtype) for w in weights]
