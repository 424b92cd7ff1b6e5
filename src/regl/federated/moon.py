"""MOON (Li et al., model-contrastive learning); docs/algorithms.md.

loss = CE + μ · ℓ_con, ℓ_con = −log( e^{cos(z, z_glob)/τ} / (e^{cos(z, z_glob)/τ} + e^{cos(z, z_prev)/τ}) ),
z = the local model's representation (``model.features``, the projection after the backbone), z_glob that of
the round's global model, z_prev that of this client's previous local model (the global model in its first
round). The previous local model is client state.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from regl.federated.algorithm import Algorithm, ClientResult, LocalContext
from regl.federated.weights import Weights, set_weights


class Moon(Algorithm):
    name = "moon"

    def __init__(self, mu: float, temperature: float) -> None:
        super().__init__()
        self.mu, self.temperature = mu, temperature

    def begin_local(self, ctx: LocalContext, model: nn.Module) -> None:
        global_model = copy.deepcopy(model).eval()
        prev_model = copy.deepcopy(model).eval()
        if ctx.state.get("prev") is not None:
            set_weights(prev_model, ctx.state["prev"])
        for m in (global_model, prev_model):
            m.requires_grad_(False)
        ctx.state["_models"] = (global_model, prev_model)

    def loss(self, ctx: LocalContext, model: nn.Module, x, y) -> torch.Tensor:
        global_model, prev_model = ctx.state["_models"]
        z = model.features(x)
        ce = F.cross_entropy(model.head(z), y)
        with torch.no_grad():
            z_glob, z_prev = global_model.features(x), prev_model.features(x)
        pos = F.cosine_similarity(z, z_glob, dim=1) / self.temperature
        neg = F.cosine_similarity(z, z_prev, dim=1) / self.temperature
        con = F.cross_entropy(torch.stack([pos, neg], dim=1), torch.zeros(len(y), dtype=torch.long, device=y.device))
        return ce + self.mu * con

    def client_result(self, ctx: LocalContext, weights: Weights, num_samples: int, steps: int) -> ClientResult:
        ctx.state.pop("_models")
        ctx.state["prev"] = [w.clone() for w in weights]
        return ClientResult(ctx.client, weights, num_samples, steps)
