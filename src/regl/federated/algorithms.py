"""FedProx, FedAvgM, FedOpt (FedAdam, FedYogi, FedAdagrad) and FedNova: FedAvg with one hook changed each.

The rules are those of docs/algorithms.md; SCAFFOLD and MOON, which keep per-client state, have their own
modules. Server rules see the trainable parameters only (``Algorithm.aggregate`` averages the buffers), in float64.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from regl.federated.algorithm import Algorithm, ClientResult, LocalContext
from regl.federated.weights import Weights, weighted_sum, zeros_like


class FedProx(Algorithm):
    """Local loss + (μ/2)·‖w − x‖² over all parameters (Li et al. 2020)."""

    name = "fedprox"

    def __init__(self, mu: float, weighting: str = "samples") -> None:
        super().__init__(weighting)
        self.mu = mu

    def loss(self, ctx: LocalContext, model: nn.Module, x, y) -> torch.Tensor:
        base = super().loss(ctx, model, x, y)
        anchors = [w for w, is_param in zip(ctx.global_weights, ctx.mask) if is_param]
        prox = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchors, strict=True))
        return base + 0.5 * self.mu * prox


class FedAvgM(Algorithm):
    """Server momentum (Hsu et al. 2019) on the pseudo-gradient g = x − Σ p_i y_i: v ← βv + g, x ← x − η_s v
    (v starts at 0, so the first round's v is g: Flower's FedAvgM does the same)."""

    name = "fedavgm"

    def __init__(self, server_lr: float, momentum: float, weighting: str = "samples") -> None:
        super().__init__(weighting)
        self.server_lr, self.momentum = server_lr, momentum

    def server_update(self, x, ys, p, results, num_clients) -> Weights:
        avg = weighted_sum(ys, p)
        v_old = self.server_state.get("v") or zeros_like(x)
        eta, beta = self.server_lr, self.momentum
        self.server_state["v"] = [beta * v + (xi - a) for v, a, xi in zip(v_old, avg, x)]
        # x − η_s (βv + x − avg), expanded so that β = 0, η_s = 1 leaves exactly Σ p_i y_i
        return [(1 - eta) * xi + eta * a - (eta * beta) * v for xi, a, v in zip(x, avg, v_old)]


V_INITS = ("tau_squared", "zero")


class FedOpt(Algorithm):
    """Adaptive server optimizer on Δ = Σ p_i y_i − x, Reddi et al. 2021 (ICLR), Algorithm 2:
    m ← β1 m + (1 − β1) Δ; v ← v + Δ² (adagrad), β2 v + (1 − β2) Δ² (adam), v − (1 − β2) Δ² sign(v − Δ²)
    (yogi); x ← x + η m / (√v + τ). m starts at 0 and v at τ² (the paper's v_{−1} ≥ τ²).

    Flower's strategies make two other choices, selectable here: ``v_init="zero"`` (v starts at 0) and, for
    FedAdam, ``bias_correction=True`` (η_t = η √(1 − β2^t) / (1 − β1^t) at server round t = 1, 2, ...; Flower
    computes it with t + 1, one round late)."""

    def __init__(self, kind: str, server_lr: float, beta1: float, beta2: float, tau: float,
                 v_init: str = "tau_squared", bias_correction: bool = False, weighting: str = "samples") -> None:
        super().__init__(weighting)
        if kind not in ("adam", "yogi", "adagrad"):
            raise ValueError(kind)
        if v_init not in V_INITS:
            raise ValueError(f"v_init must be one of {V_INITS}, got {v_init!r}")
        self.name = f"fed{kind}"
        self.kind, self.server_lr, self.beta1, self.beta2, self.tau = kind, server_lr, beta1, beta2, tau
        self.v_init, self.bias_correction = v_init, bias_correction

    def server_update(self, x, ys, p, results, num_clients) -> Weights:
        delta = [a - b for a, b in zip(weighted_sum(ys, p), x)]
        v0 = self.tau**2 if self.v_init == "tau_squared" else 0.0
        m = self.server_state.get("m") or zeros_like(x)
        v = self.server_state.get("v") or [torch.full_like(xi, v0) for xi in x]
        t = self.server_state.get("t", 0) + 1
        b1, b2 = self.beta1, self.beta2
        m = [b1 * mi + (1 - b1) * d for mi, d in zip(m, delta)]
        if self.kind == "adagrad":
            v = [vi + d * d for vi, d in zip(v, delta)]
        elif self.kind == "adam":
            v = [b2 * vi + (1 - b2) * d * d for vi, d in zip(v, delta)]
        else:
            v = [vi - (1 - b2) * d * d * torch.sign(vi - d * d) for vi, d in zip(v, delta)]
        self.server_state.update(m=m, v=v, t=t)
        eta = self.server_lr
        if self.bias_correction and self.kind == "adam":
            eta = eta * math.sqrt(1 - b2**t) / (1 - b1**t)
        return [xi + eta * mi / (vi.sqrt() + self.tau) for xi, mi, vi in zip(x, m, v)]


def effective_steps(steps: int, rho: float) -> float:
    """FedNova's a_i (Wang et al. 2020): the norm of the weights that K local steps of SGD with momentum ρ
    (PyTorch's: buf ← ρ buf + g, w ← w − η buf) put on the gradients they see, Σ_{k=1..K} (1 − ρ^k)/(1 − ρ)
    = [K − ρ(1 − ρ^K)/(1 − ρ)]/(1 − ρ); K for plain SGD. A constant gradient g moves the weights by η a_i g."""
    if rho == 0:
        return float(steps)
    return (steps - rho * (1 - rho**steps) / (1 - rho)) / (1 - rho)


class FedNova(Algorithm):
    """Normalized averaging: d_i = (x − y_i)/a_i, τ_eff = Σ p_i a_i, x ← x − τ_eff Σ p_i d_i, with a_i from
    ``effective_steps``."""

    name = "fednova"

    def client_result(self, ctx: LocalContext, weights: Weights, num_samples: int, steps: int) -> ClientResult:
        return ClientResult(ctx.client, weights, num_samples, steps, {"a": effective_steps(steps, ctx.momentum)})

    def server_update(self, x, ys, p, results, num_clients) -> Weights:
        # x − τ_eff Σ p_i d_i = (1 − λ) x + λ Σ q_i y_i with q_i ∝ n_i / a_i and λ = τ_eff Σ p_i / a_i.
        # Computed with r_i = a_i / max a and the integer sizes n_i behind p_i, equal a_i give q_i = n_i / N and
        # λ = 1 exactly: FedAvg's arithmetic, bit for bit.
        n = self.sizes(results)
        total = sum(n)
        a_max = max(r.extras["a"] for r in results)
        ratio = [r.extras["a"] / a_max for r in results]
        u = [ni / ri for ni, ri in zip(n, ratio)]
        q = [ui / sum(u) for ui in u]
        lam = (sum(ni * ri for ni, ri in zip(n, ratio)) / total) * (sum(u) / total)
        mean_y = weighted_sum(ys, q)
        return [(1 - lam) * xi + lam * my for xi, my in zip(x, mean_y)]
