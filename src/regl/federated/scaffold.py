"""SCAFFOLD, option II (Karimireddy et al.); docs/algorithms.md.

Client i keeps c_i (zero at first); after every local step y ← y − η_l (c − c_i); after local training
c_i⁺ = c_i − c + (x − y_i)/(K_i η_l). Server: x ← x + η_g · mean(y_i − x), c ← c + (|S|/N) · mean(c_i⁺ − c_i).
Control variates cover the trainable parameters; buffers are averaged like FedAvg.
"""

from __future__ import annotations

import torch
from torch import nn

from regl.federated.algorithm import Algorithm, ClientResult, LocalContext
from regl.federated.weights import Weights, cast_like, to64, weighted_sum


class Scaffold(Algorithm):
    name = "scaffold"

    def __init__(self, server_lr: float) -> None:
        super().__init__()
        self.server_lr = server_lr

    def broadcast(self) -> dict:
        return {"c": self.server_state.get("c")}

    def begin_local(self, ctx: LocalContext, model: nn.Module) -> None:
        params = list(model.parameters())
        c = ctx.broadcast["c"] or [torch.zeros_like(p) for p in params]
        c_i = ctx.state.get("c_i") or [torch.zeros_like(p) for p in params]
        ctx.state["c_i"], ctx.state["_c"] = c_i, c
        ctx.state["_correction"] = [(ci_g - ci).to(p.dtype) for ci_g, ci, p in zip(c, c_i, params)]

    @torch.no_grad()
    def after_step(self, ctx: LocalContext, model: nn.Module) -> None:
        for p, corr in zip(model.parameters(), ctx.state["_correction"]):
            p.sub_(corr, alpha=ctx.lr)

    def client_result(self, ctx: LocalContext, weights: Weights, num_samples: int, steps: int) -> ClientResult:
        ctx.state.pop("_correction")
        x = [w for w, m in zip(ctx.global_weights, ctx.mask) if m]
        y = [w for w, m in zip(weights, ctx.mask) if m]
        c, c_i = ctx.state.pop("_c"), ctx.state["c_i"]
        c_new = [ci - cg + (xi - yi) / (steps * ctx.lr) for ci, cg, xi, yi in zip(c_i, c, x, y)]
        delta_c = [a - b for a, b in zip(c_new, c_i)]
        ctx.state["c_i"] = c_new
        return ClientResult(ctx.client, weights, num_samples, steps, {"delta_c": delta_c})

    def aggregate(self, global_weights: Weights, results: list[ClientResult], num_clients: int) -> Weights:
        x = to64(global_weights)
        k = len(results)
        mean_y = weighted_sum([r.weights for r in results], [1.0 / k] * k)
        eta = self.server_lr  # x + η_g (mean y − x), written so that η_g = 1 gives exactly mean y
        new = [(1 - eta) * xi + eta * my for xi, my in zip(x, mean_y)]
        mean_dc = weighted_sum([r.extras["delta_c"] for r in results], [1.0 / k] * k)
        c = self.server_state.get("c") or [torch.zeros_like(d, dtype=results[0].extras["delta_c"][0].dtype)
                                           for d in mean_dc]
        self.server_state["c"] = [(ci.to(torch.float64) + (k / num_clients) * d).to(ci.dtype)
                                  for ci, d in zip(c, mean_dc)]
        return cast_like(new, global_weights)
