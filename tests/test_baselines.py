"""The baselines against independent sources: a problem with a known optimum (SCAFFOLD), the published
formulas (MOON's loss, Reddi et al.'s FedOpt initialisation, FedNova's momentum normalisation), Flower's
strategies (FedAvgM, FedProx, FedAdam, FedYogi, FedAdagrad), BatchNorm statistics under every server rule, and
a learning test of all nine algorithms."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regl.data.client_data import ClientData
from regl.evaluation.scoring import evaluate
from regl.federated.algorithm import ClientResult
from regl.federated.engine import Federation, InProcessClients
from regl.federated.registry import build_algorithm
from regl.federated.train_params import ALGORITHMS, TrainParams
from regl.data.imageset import TensorImages


def federation(build, p, clients):
    """The local engine: ``build()`` makes the model (the server's and the clients' scratch copy)."""
    algorithm = build_algorithm(p)
    runner = InProcessClients(clients, build(), algorithm, p)
    return Federation(build(), algorithm, runner, [c.client for c in clients], p.client_fraction, p.seed)


# --- SCAFFOLD: convergence to the optimum of a heterogeneous problem, under momentum 0.9 ---------------------
def skewed_clients(sizes=(32, 32)):
    """Two clients whose inputs and labels differ (softmax regression, 4 features, 3 classes)."""
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(sizes[0], 4, generator=gen) - 2.0
    x1 = torch.randn(sizes[1], 4, generator=gen) + 2.0
    y0 = torch.randint(0, 3, (sizes[0],), generator=gen)
    y1 = (x1[:, 0] > 2).long() + 1
    return [ClientData(0, TensorImages(x0, y0), sizes[0]), ClientData(1, TensorImages(x1, y1), sizes[1])]


def linear():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Linear(4, 3)


def optimum(clients, wd):
    """argmin Σ p_i f_i(w) + (wd/2)‖w‖², p_i ∝ n_i, by full-batch L-BFGS on the union (strongly convex)."""
    model = linear()
    x, y = torch.cat([c.images.x for c in clients]), torch.cat([c.images.labels for c in clients])
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15,
                            history_size=50)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y) + 0.5 * wd * sum((p**2).sum() for p in model.parameters())
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    return [p.detach().clone() for p in model.parameters()]


def distance(weights, target):
    return math.sqrt(sum(((a.double() - b.double()) ** 2).sum().item() for a, b in zip(weights, target)))


def test_scaffold_with_momentum_converges_to_the_optimum_where_fedavg_drifts():
    """Full-batch local steps (K = 10) with momentum 0.9, equal-size clients: SCAFFOLD's fixed point is the
    global optimum, FedAvg's is not. Fails when the correction bypasses the momentum buffer and c_i⁺ divides by
    K_i η_l (the control variates then stall 0.4 away from the optimum)."""
    clients, wd = skewed_clients(), 0.05
    target = optimum(clients, wd)
    ends = {}
    for algorithm in ("fedavg", "scaffold"):
        p = TrainParams(algorithm=algorithm, local_epochs=10, batch_size=32, lr=0.1, momentum=0.9, weight_decay=wd)
        fed = federation(linear, p, clients)
        for _ in range(60):
            fed.run_round()
        ends[algorithm] = distance(fed.global_weights, target)
    assert ends["fedavg"] > 0.1  # client drift: the problem is heterogeneous enough to need SCAFFOLD
    assert ends["scaffold"] < 1e-3, ends


@pytest.mark.parametrize("steps", [3, 17])
def test_scaffold_control_variate_is_the_gradient_whatever_the_steps_under_momentum(steps):
    """A linear objective ⟨g, w⟩ has the constant gradient g; after K local steps of PyTorch's momentum SGD
    with the correction applied, option II's c_i⁺ = c_i − c + (mean corrected gradient) must be g exactly, for
    any K: control variates in gradient units. Dividing x − y_i by K η_l instead gives ≈ g/(1 − ρ)."""
    from regl.federated.algorithm import LocalContext

    gen = torch.Generator().manual_seed(1)
    g, c, c_i = (torch.randn(5, generator=gen, dtype=torch.float64) for _ in range(3))
    model = nn.Linear(5, 1, bias=False).double()
    x = [model.weight.detach().clone()]
    alg = build_algorithm(TrainParams(algorithm="scaffold"))
    ctx = LocalContext(0, x, {"c": [c.view(1, 5)]}, {"c_i": [c_i.view(1, 5)]}, lr=0.01, momentum=0.9, mask=[True])
    alg.begin_local(ctx, model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        (model.weight[0] * g).sum().backward()
        if hasattr(alg, "before_step"):
            alg.before_step(ctx, model)
        opt.step()
        alg.after_step(ctx, model)
    result = alg.client_result(ctx, [model.weight.detach().clone()], 10, steps)
    torch.testing.assert_close(ctx.state["c_i"][0].view(5), g, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(result.extras["delta_c"][0].view(5), g - c_i, rtol=1e-9, atol=1e-12)


# --- MOON: the published network and loss --------------------------------------------------------------------
def test_moon_loss_with_its_projection_head_equals_a_hand_computation():
    """Li et al. 2021: z = W2 ReLU(W1 h + b1) + b2 on the backbone's h, the classifier on z, loss = CE +
    μ ℓ_con with ℓ_con = −log(e^{cos(z, z_glob)/τ} / (e^{cos(z, z_glob)/τ} + e^{cos(z, z_prev)/τ}))."""
    from regl.federated.algorithm import LocalContext
    from regl.federated.registry import projection_dim
    from regl.federated.weights import get_weights, parameter_mask, set_weights
    from regl.training.models import build_model

    mu, tau = 2.0, 0.5
    p = TrainParams(algorithm="moon", moon={"mu": mu, "temperature": tau})
    build = lambda: build_model("cnn", 1, 4, 16, projection_dim(p))  # noqa: E731
    torch.manual_seed(0)
    model, glob, prev = build(), build(), build()
    mlp = [m for m in model.projection if isinstance(m, nn.Linear)]
    assert len(mlp) == 2 and isinstance(model.projection[1], nn.ReLU)
    assert mlp[0].in_features == mlp[0].out_features == 128 and mlp[1].out_features == 256
    assert model.head.in_features == 256
    x = torch.randn(6, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3, 0, 1])

    def hand_z(net):
        h = net.backbone.body(x)  # the CNN's 128-wide representation
        l1, l2 = [m for m in net.projection if isinstance(m, nn.Linear)]
        return h @ l1.weight.T + l1.bias, l2

    def project(net):
        a, l2 = hand_z(net)
        return torch.relu(a) @ l2.weight.T + l2.bias

    z, zg, zp = project(model), project(glob), project(prev)
    logits = z @ model.head.weight.T + model.head.bias
    cos = lambda a, b: (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))  # noqa: E731
    pos, neg = torch.exp(cos(z, zg) / tau), torch.exp(cos(z, zp) / tau)
    expected = F.cross_entropy(logits, y) + mu * (-torch.log(pos / (pos + neg))).mean()

    alg = build_algorithm(p)
    weights = get_weights(glob)
    ctx = LocalContext(0, weights, {}, {"prev": get_weights(prev)}, 0.01, 0.9, parameter_mask(model))
    start = get_weights(model)
    set_weights(model, weights)  # begin_local copies the model it is given as the global one
    alg.begin_local(ctx, model)
    set_weights(model, start)
    torch.testing.assert_close(alg.loss(ctx, model, x, y), expected, rtol=1e-5, atol=1e-6)


# --- FedOpt: Reddi et al. 2021, Algorithm 2 ------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["adam", "yogi", "adagrad"])
def test_fedopt_first_rounds_follow_reddi_et_al_initialisation(kind):
    """m_{-1} = 0, v_{-1} = τ² (the paper's v_{-1} ≥ τ², at its bound), no bias correction: the first three
    server steps written out from Algorithm 2 in numpy, a large τ so that the initialisation matters."""
    from regl.federated.algorithms import FedOpt

    eta, b1, b2, tau = 0.1, 0.9, 0.99, 0.05
    alg = FedOpt(kind, eta, b1, b2, tau)
    x = np.array([1.0, -2.0, 0.3])
    m, v = np.zeros(3), np.full(3, tau**2)
    ours = [torch.tensor(x)]
    gen = np.random.default_rng(0)
    for _ in range(3):
        ys = [x + gen.normal(0, 0.1, 3) for _ in range(2)]
        results = [ClientResult(i, [torch.tensor(y)], n, 1) for i, (y, n) in enumerate(zip(ys, (1, 3)))]
        ours = alg.aggregate(ours, results, num_clients=2)
        delta = 0.25 * ys[0] + 0.75 * ys[1] - x
        m = b1 * m + (1 - b1) * delta
        v = {"adagrad": v + delta**2, "adam": b2 * v + (1 - b2) * delta**2,
             "yogi": v - (1 - b2) * delta**2 * np.sign(v - delta**2)}[kind]
        x = x + eta * m / (np.sqrt(v) + tau)
        np.testing.assert_allclose(ours[0].numpy(), x, rtol=1e-12)


# --- against Flower's strategies (an independent implementation), with Flower's choices selected ------------
def flower_round(strategy, server_round, ys, ns):
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

    results = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(y), n, {})) for y, n in zip(ys, ns)]
    params, _ = strategy.aggregate_fit(server_round, results, [])
    return parameters_to_ndarrays(params)


FLOWER = {  # regl params with Flower's choices selected -> the Flower strategy and its arguments
    "fedavgm": ({"fedavgm": {"server_lr": 0.7, "momentum": 0.9}},
                "FedAvgM", {"server_learning_rate": 0.7, "server_momentum": 0.9}),
    "fedprox": ({"fedprox": {"mu": 0.1}}, "FedProx", {"proximal_mu": 0.1}),
    "fedadam": ({"fedopt": {"server_lr": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3, "v_init": "zero",
                            "bias_correction": True}},
                "FedAdam", {"eta": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}),
    "fedyogi": ({"fedopt": {"server_lr": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3, "v_init": "zero"}},
                "FedYogi", {"eta": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}),
    # Flower's FedAdagrad has no first moment (β1 = 0)
    "fedadagrad": ({"fedopt": {"server_lr": 0.1, "beta1": 0.0, "tau": 1e-3, "v_init": "zero"}},
                   "FedAdagrad", {"eta": 0.1, "tau": 1e-3}),
}


@pytest.mark.parametrize("algorithm", sorted(FLOWER))
def test_server_rule_equals_flowers_strategy_over_several_rounds(algorithm):
    """Five rounds of three clients' updates around the current global weights, fed to regl's rule and to
    Flower's strategy (legacy API); both keep their own state. Flower's FedAdam bias-corrects with
    server_round + 1: called with server_round = t − 1, it applies Adam's correction at step t, as regl does."""
    flwr = pytest.importorskip("flwr.server.strategy")
    from flwr.common import ndarrays_to_parameters

    sub, strategy_name, kwargs = FLOWER[algorithm]
    alg = build_algorithm(TrainParams(algorithm=algorithm, weighting="samples", **sub))
    gen = np.random.default_rng(3)
    shapes = [(4, 3), (3,)]
    x = [gen.normal(size=s) for s in shapes]
    strategy = getattr(flwr, strategy_name)(initial_parameters=ndarrays_to_parameters(x), **kwargs)
    ours = [torch.tensor(a) for a in x]
    ns = [10, 30, 25]
    for t in range(1, 6):
        ys = [[a.numpy() + gen.normal(0, 0.2, a.shape) for a in ours] for _ in ns]
        results = [ClientResult(i, [torch.tensor(a) for a in y], n, 1) for i, (y, n) in enumerate(zip(ys, ns))]
        ours = alg.aggregate(ours, results, num_clients=3)
        theirs = flower_round(strategy, t - 1 if algorithm == "fedadam" else t, ys, ns)
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a.numpy(), b, rtol=1e-10, atol=1e-12)


def test_fedprox_local_term_is_the_papers_and_flowers_formula():
    """Flower's FedProx (and Li et al.) add (μ/2)‖w − w^t‖² to the client's loss (Flower's docstring; its code
    sample sums unsquared norms, which the formula above it does not); the gradient gains μ(w − w^t)."""
    from regl.federated.algorithm import LocalContext
    from regl.federated.weights import get_weights, parameter_mask

    mu = 0.3
    torch.manual_seed(0)
    model = linear()
    anchor = [w + 0.1 for w in get_weights(model)]
    ctx = LocalContext(0, anchor, {}, {}, 0.01, 0.9, parameter_mask(model))
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    loss = build_algorithm(TrainParams(algorithm="fedprox", fedprox={"mu": mu})).loss(ctx, model, x, y)
    squared = sum(torch.linalg.vector_norm(p - a) ** 2 for p, a in zip(model.parameters(), anchor))
    torch.testing.assert_close(loss, F.cross_entropy(model(x), y) + mu / 2 * squared)


# --- FedNova: momentum normalisation -------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 4, 25])
def test_fednova_effective_steps_are_what_momentum_sgd_does_and_the_papers_formula(steps):
    """Wang et al. 2020 (FedNova), momentum SGD: a_i = [K − ρ(1 − ρ^K)/(1 − ρ)]/(1 − ρ). PyTorch's momentum SGD
    on a constant gradient g moves the weights by exactly η a_i g; the server then applies the paper's
    x ← x − τ_eff Σ p_i d_i, d_i = (x − y_i)/a_i, τ_eff = Σ p_i a_i."""
    from regl.federated.algorithm import LocalContext

    rho, lr = 0.9, 0.01
    paper = (steps - rho * (1 - rho**steps) / (1 - rho)) / (1 - rho)
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    g = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    opt = torch.optim.SGD([w], lr=lr, momentum=rho)
    for _ in range(steps):
        opt.zero_grad()
        (w * g).sum().backward()
        opt.step()
    torch.testing.assert_close(-w.detach(), lr * paper * g, rtol=1e-12, atol=0)

    alg = build_algorithm(TrainParams(algorithm="fednova"))  # num_real unset: every weighting but uniform agrees
    x = torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)
    clients = [(torch.tensor([0.1, 0.9, 0.4], dtype=torch.float64), 20, steps), (x - 0.3, 60, steps + 7)]
    results = []
    for cid, (y, n, k) in enumerate(clients):
        ctx = LocalContext(cid, [x], {}, {}, lr, rho, [True])
        results.append(alg.client_result(ctx, [y], n, k))
    a = [(k - rho * (1 - rho**k) / (1 - rho)) / (1 - rho) for _, _, k in clients]
    p = [0.25, 0.75]
    tau_eff = sum(pi * ai for pi, ai in zip(p, a))
    expected = x - tau_eff * sum(pi * (x - y) / ai for pi, ai, (y, _, _) in zip(p, a, clients))
    torch.testing.assert_close(alg.aggregate([x], results, 2)[0], expected, rtol=1e-12, atol=1e-15)


# --- BatchNorm statistics under every server rule -----------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["fednova", "fedadam", "fedavgm", "scaffold"])
def test_batchnorm_statistics_stay_valid_under_server_rules_with_resnet18(algorithm):
    """ResNet-18's BatchNorm buffers are averaged with the clients' weights whatever the rule: running_var
    stays non-negative (FedNova extrapolates past the clients' mean, FedAvgM/FedOpt step, SCAFFOLD scales by
    η_g), num_batches_tracked stays an integer (the weighted mean, rounded) and is part of the exchanged state."""
    from regl.federated.weights import get_weights, parameter_mask
    from regl.training.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet18", 1, 10, 32)
    sub = {"fedavgm": {"fedavgm": {"server_lr": 2.0, "momentum": 0.9}},
           "scaffold": {"scaffold": {"server_lr": 2.0}}}.get(algorithm, {})
    alg = build_algorithm(TrainParams(algorithm=algorithm, **sub))  # num_real unset: weights by num_samples
    if hasattr(alg, "bind"):
        alg.bind(model)
    keys = list(model.state_dict())
    x = get_weights(model)
    assert len(x) == len(keys)  # every state entry travels, the integer counters too
    mask = parameter_mask(model)
    gen = torch.Generator().manual_seed(0)
    for rnd in range(3):
        results = []
        for cid, (n, k) in enumerate([(30, 5), (90, 40)]):
            y = []
            for key, w in zip(keys, x):
                if key.endswith("num_batches_tracked"):
                    y.append(w + k)
                elif key.endswith("running_var"):
                    y.append(torch.rand(w.shape, generator=gen) * 0.01)  # clients saw low-variance data
                else:
                    y.append(w + 0.01 * torch.randn(w.shape, generator=gen))
            delta_c = [torch.zeros_like(w) for w, m in zip(x, mask) if m]
            results.append(ClientResult(cid, y, n, k, {"a": float(k), "delta_c": delta_c}))
        new = alg.aggregate(x, results, num_clients=2)
        for key, w, y0, y1, m in zip(keys, new, results[0].weights, results[1].weights, mask):
            if not m:
                assert w.dtype == x[keys.index(key)].dtype
                expected = 0.25 * y0.double() + 0.75 * y1.double()
                if key.endswith("num_batches_tracked"):
                    assert w.dtype == torch.int64 and int(w) == round(float(expected))
                else:
                    torch.testing.assert_close(w, expected.float())
            if key.endswith("running_var"):
                assert (w >= 0).all(), f"{algorithm}: negative running_var in {key} after round {rnd + 1}"
        x = new


# --- every algorithm learns -------------------------------------------------------------------------------------
def easy_data(n, classes, gen):
    """16 px images: class k is a bright 4 x 4 square at one of 4 positions, on noise."""
    y = torch.arange(n) % len(classes)
    y = torch.tensor(classes)[y]
    x = 0.3 * torch.randn(n, 1, 16, 16, generator=gen)
    for i, k in enumerate(y.tolist()):
        r, c = divmod(k, 2)
        x[i, 0, 8 * r + 2 : 8 * r + 6, 8 * c + 2 : 8 * c + 6] += 1.5
    return x, y


def cnn():
    from regl.training.models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_model("cnn", 1, 4, 16)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_learns_a_tiny_easy_problem(algorithm):
    """Four label-skewed clients (two classes each) of a four-class problem, the default local recipe (SGD
    0.01, momentum 0.9; 5 local epochs of 3 batches) and each algorithm's default params, MOON with its
    projection head: within 10 rounds the global model's test loss falls below half its start and its
    accuracy exceeds 0.9 (chance: 0.25)."""
    from regl.federated.registry import projection_dim
    from regl.training.models import build_model

    gen = torch.Generator().manual_seed(0)
    clients = [ClientData(i, TensorImages(*easy_data(48, cls, gen)), 48)
               for i, cls in enumerate([[0, 1], [1, 2], [2, 3], [3, 0]])]
    test_x, test_y = easy_data(200, [0, 1, 2, 3], gen)
    p = TrainParams(algorithm=algorithm, local_epochs=5, batch_size=16)

    def factory():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return build_model("cnn", 1, 4, 16, projection_dim(p))

    fed = federation(factory, p, clients)
    start = evaluate(fed.model, TensorImages(test_x, test_y))
    for _ in range(10):
        fed.run_round()
    end = evaluate(fed.model, TensorImages(test_x, test_y))
    assert end["loss"] < 0.5 * start["loss"] and end["accuracy"] > 0.9, (start, end)
