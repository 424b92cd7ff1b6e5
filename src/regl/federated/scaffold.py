"""SCAFFOLD, option II (Karimireddy et al. 2020), under local SGD with momentum (docs/algorithms.md).

Client i keeps c_i (zero at first). The paper's local step is y ← y − η_l (g(y) + c − c_i): here the correction
c − c_i is added to the gradient after the backward pass and *before* the optimizer step, so momentum and
weight decay see the corrected gradient, as they would see any other term of the local objective (the
corrected objective f_i(y) + ⟨c − c_i, y⟩).

After local training the paper's option II sets c_i⁺ = c_i − c + (x − y_i)/(K_i η_l): (x − y_i)/(K_i η_l) is the
mean corrected gradient over the K_i steps, for plain SGD. Under momentum ρ, K steps move the weights by
η_l Σ_k w_k g_k with Σ_k w_k = a_i = [K − ρ(1 − ρ^K)/(1 − ρ)]/(1 − ρ), FedNova's effective step count (Wang et
al. 2020, the same normalisation FedNova applies to x − y_i); so c_i⁺ = c_i − c + (x − y_i)/(a_i η_l) is again
a (weighted) mean of the corrected gradients, in gradient units whatever K_i and ρ; with ρ = 0, a_i = K_i and
this is option II exactly. (K_i η_l alone overstates the gradient by up to 1/(1 − ρ) = 10× at ρ = 0.9, and
clients with different K_i end up with control variates in different units: the cause of the divergence
measured at β = 0.5.)

Server, with the aggregation weights p_i of ``train.weighting``: x ← x + η_g Σ p_i (y_i − x),
c ← c + (|S|/N) Σ p_i (c_i⁺ − c_i) (the paper's uniform mean when p_i = 1/|S|). Control variates cover the
trainable parameters; buffers are averaged like FedAvg.
"""

from __future__ import annotations

import torch
from torch import nn

from regl.federated.algorithm import Algorithm, ClientResult, LocalContext
from regl.federated.algorithms import effective_steps
from regl.federated.weights import Weights, weighted_sum


class Scaffold(Algorithm):
    name = "scaffold"

    def __init__(self, server_lr: float, weighting: str = "samples") -> None:
        super().__init__(weighting)
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
    def before_step(self, ctx: LocalContext, model: nn.Module) -> None:
        for p, corr in zip(model.parameters(), ctx.state["_correction"]):
            if p.grad is None:
                p.grad = corr.clone()
            else:
                p.grad.add_(corr)

    def client_result(self, ctx: LocalContext, weights: Weights, num_samples: int, steps: int) -> ClientResult:
        ctx.state.pop("_correction")
        x = [w for w, m in zip(ctx.global_weights, ctx.mask) if m]
        y = [w for w, m in zip(weights, ctx.mask) if m]
        c, c_i = ctx.state.pop("_c"), ctx.state["c_i"]
        scale = effective_steps(steps, ctx.momentum) * ctx.lr
        c_new = [ci - cg + (xi - yi) / scale for ci, cg, xi, yi in zip(c_i, c, x, y)]
        delta_c = [a - b for a, b in zip(c_new, c_i)]
        ctx.state["c_i"] = c_new
        return ClientResult(ctx.client, weights, num_samples, steps, {"delta_c": delta_c})

    def server_update(self, x, ys, p, results, num_clients) -> Weights:
        mean_y = weighted_sum(ys, p)
        eta = self.server_lr  # x + η_g (Σ p_i y_i − x), written so that η_g = 1 gives exactly Σ p_i y_i
        new = [(1 - eta) * xi + eta * my for xi, my in zip(x, mean_y)]
        mean_dc = weighted_sum([r.extras["delta_c"] for r in results], p)
        k = len(results)
        c = self.server_state.get("c") or [torch.zeros_like(d, dtype=results[0].extras["delta_c"][0].dtype)
                                           for d in mean_dc]
        self.server_state["c"] = [(ci.to(torch.float64) + (k / num_clients) * d).to(ci.dtype)
                                  for ci, d in zip(c, mean_dc)]
        return new
