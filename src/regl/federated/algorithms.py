"""FedProx, FedAvgM, FedOpt (FedAdam, FedYogi, FedAdagrad) and FedNova: FedAvg with one hook changed each.

The rules are those of docs/algorithms.md; SCAFFOLD and MOON, which keep per-client state, have their own modules.
"""

from __future__ import annotations

import torch
from torch import nn

from regl.federated.algorithm import Algorithm, ClientResult, LocalContext
from regl.federated.weights import Weights, cast_like, to64, weighted_sum, zeros_like


class FedProx(Algorithm):
    """Local loss + (μ/2)·‖w − x‖² over all parameters."""

    name = "fedprox"

    def __init__(self, mu: float) -> None:
        super().__init__()
        self.mu = mu

    def loss(self, ctx: LocalContext, model: nn.Module, x, y) -> torch.Tensor:
        base = super().loss(ctx, model, x, y)
        anchors = [w for w, is_param in zip(ctx.global_weights, ctx.mask) if is_param]
        prox = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchors, strict=True))
        return base + 0.5 * self.mu * prox


class FedAvgM(Algorithm):
    """Server momentum on the pseudo-gradient Δ = Σ p_i y_i − x: v ← βv − Δ, x ← x − η_s v."""

    name = "fedavgm"

    def __init__(self, server_lr: float, momentum: float) -> None:
        super().__init__()
        self.server_lr, self.momentum = server_lr, momentum

    def aggregate(self, global_weights: Weights, results: list[ClientResult], num_clients: int) -> Weights:
        x, avg = to64(global_weights), self.average(results)
        v_old = self.server_state.get("v") or zeros_like(x)
        self.server_state["v"] = [self.momentum * v - (a - xi) for v, a, xi in zip(v_old, avg, x)]
        # x − η_s v, expanded so that β = 0, η_s = 1 leaves exactly Σ p_i y_i (no x + (avg − x) rounding)
        eta, beta = self.server_lr, self.momentum
        new = [(1 - eta) * xi + eta * a - (eta * beta) * v for xi, a, v in zip(x, avg, v_old)]
        return cast_like(new, global_weights)


class FedOpt(Algorithm):
    """Adaptive server optimizer on Δ (Reddi et al.): m ← β1 m + (1 − β1) Δ, x ← x + η m / (√v + τ), with
    v ← v + Δ² (adagrad), β2 v + (1 − β2) Δ² (adam), v − (1 − β2) Δ² sign(v − Δ²) (yogi). m and v start at 0."""

    def __init__(self, kind: str, server_lr: float, beta1: float, beta2: float, tau: float) -> None:
        super().__init__()
        if kind not in ("adam", "yogi", "adagrad"):
            raise ValueError(kind)
        self.name = f"fed{kind}"
        self.kind, self.server_lr, self.beta1, self.beta2, self.tau = kind, server_lr, beta1, beta2, tau

    def aggregate(self, global_weights: Weights, results: list[ClientResult], num_clients: int) -> Weights:
        x = to64(global_weights)
        delta = [a - b for a, b in zip(self.average(results), x)]
        m = self.server_state.get("m") or zeros_like(x)
        v = self.server_state.get("v") or zeros_like(x)
        b1, b2 = self.beta1, self.beta2
        m = [b1 * mi + (1 - b1) * d for mi, d in zip(m, delta)]
        if self.kind == "adagrad":
            v = [vi + d * d for vi, d in zip(v, delta)]
        elif self.kind == "adam":
            v = [b2 * vi + (1 - b2) * d * d for vi, d in zip(v, delta)]
        else:
            v = [vi - (1 - b2) * d * d * torch.sign(vi - d * d) for vi, d in zip(v, delta)]
        self.server_state.update(m=m, v=v)
        new = [xi + self.server_lr * mi / (vi.sqrt() + self.tau) for xi, mi, vi in zip(x, m, v)]
        return cast_like(new, global_weights)


class FedNova(Algorithm):
    """Normalized averaging: d_i = (x − y_i)/a_i, τ_eff = Σ p_i a_i, x ← x − τ_eff Σ p_i d_i, with a_i = K_i
    for plain SGD and a_i = [K_i − ρ(1 − ρ^K_i)/(1 − ρ)]/(1 − ρ) with local momentum ρ."""

    name = "fednova"

    def client_result(self, ctx: LocalContext, weights: Weights, num_samples: int, steps: int) -> ClientResult:
        rho = ctx.momentum
        a = float(steps) if rho == 0 else (steps - rho * (1 - rho**steps) / (1 - rho)) / (1 - rho)
        return ClientResult(ctx.client, weights, num_samples, steps, {"a": a})

    def aggregate(self, global_weights: Weights, results: list[ClientResult], num_clients: int) -> Weights:
        # x − τ_eff Σ p_i d_i = (1 − λ) x + λ Σ q_i y_i with q_i ∝ n_i / a_i and λ = τ_eff Σ p_i / a_i.
        # Computed with r_i = a_i / max a and integer sample counts, equal a_i give q_i = n_i / N and λ = 1
        # exactly: FedAvg's arithmetic, bit for bit.
        x = to64(global_weights)
        n = [r.num_samples for r in results]
        total = sum(n)
        a_max = max(r.extras["a"] for r in results)
        ratio = [r.extras["a"] / a_max for r in results]
        u = [ni / ri for ni, ri in zip(n, ratio)]
        q = [ui / sum(u) for ui in u]
        lam = (sum(ni * ri for ni, ri in zip(n, ratio)) / total) * (sum(u) / total)
        mean_y = weighted_sum([r.weights for r in results], q)
        return cast_like([(1 - lam) * xi + lam * my for xi, my in zip(x, mean_y)], global_weights)
