"""The federated engine and its algorithms: equivalences that could fail, hand computations, resume."""

import pytest
import torch

from regl.core.checkpoint import Checkpoint
from regl.data.client_data import ClientData
from regl.federated.engine import Federation, InProcessClients, select_clients
from regl.federated.registry import build_algorithm
from regl.federated.train import train
from regl.federated.train_params import ALGORITHMS, TrainParams
from regl.data.imageset import TensorImages
from regl.training.models import build_model
from regl.core.seeding import derive_seed


def make_clients(sizes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    clients = []
    for cid, n in enumerate(sizes):
        y = torch.randint(0, 4, (n,), generator=gen)
        x = torch.randn(n, 1, 16, 16, generator=gen) + y.view(-1, 1, 1, 1).float() * 0.5
        clients.append(ClientData(cid, TensorImages(x, y), n))
    return clients


def factory():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(0, "init"))
        return build_model("cnn", 1, 4, 16)


def federation(algorithm="fedavg", sizes=(40, 24, 56), momentum=0.9, fraction=1.0, **sub):
    p = TrainParams(algorithm=algorithm, momentum=momentum, local_epochs=1, batch_size=16, lr=0.05, weight_decay=1e-4,
                    seed=3, **sub)
    algo, clients = build_algorithm(p), make_clients(sizes)
    runner = InProcessClients(clients, factory(), algo, p)
    return Federation(factory(), algo, runner, [c.client for c in clients], fraction, seed=3)


def run(fed, rounds):
    for _ in range(rounds):
        fed.run_round()
    return fed.global_weights


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x, y), (x - y).abs().max()


def test_same_seed_same_weights_and_training_moves_them():
    first, second = run(federation(), 2), run(federation(), 2)
    assert_same(first, second)
    assert not torch.equal(first[0], federation().global_weights[0])


def test_fedprox_mu_zero_is_fedavg():
    assert_same(run(federation("fedprox", fedprox={"mu": 0.0}), 2), run(federation(), 2))
    assert not torch.equal(run(federation("fedprox", fedprox={"mu": 0.5}), 2)[0], run(federation(), 2)[0])


def test_fednova_equal_steps_no_momentum_is_fedavg():
    sizes = (32, 32, 32)
    assert_same(run(federation("fednova", sizes, momentum=0.0), 2), run(federation("fedavg", sizes, momentum=0.0), 2))


def test_fednova_differs_from_fedavg_when_steps_differ():
    a = run(federation("fednova", (16, 64, 32), momentum=0.0), 1)
    b = run(federation("fedavg", (16, 64, 32), momentum=0.0), 1)
    assert not all(torch.equal(x, y) for x, y in zip(a, b))


def test_fedavgm_without_momentum_at_rate_one_is_fedavg():
    fed = federation("fedavgm", fedavgm={"server_lr": 1.0, "momentum": 0.0})
    assert_same(run(fed, 2), run(federation(), 2))


def test_moon_mu_zero_is_fedavg():
    assert_same(run(federation("moon", moon={"mu": 0.0, "temperature": 0.5}), 2), run(federation(), 2))
    assert not torch.equal(run(federation("moon"), 2)[0], run(federation(), 2)[0])


def test_scaffold_first_round_is_fedavg_with_equal_clients():
    sizes = (32, 32, 32)
    fed = federation("scaffold", sizes)
    assert_same(run(fed, 1), run(federation("fedavg", sizes), 1))
    # afterwards the control variates are nonzero, so round two differs
    assert any(c.abs().sum() > 0 for c in fed.algorithm.server_state["c"])
    assert any(c.abs().sum() > 0 for c in fed.runner.client_states[0]["c_i"])
    assert not torch.equal(run(fed, 1)[0], run(federation("fedavg", sizes), 2)[0])


def test_client_selection_is_keyed_by_seed_and_round():
    ids = list(range(10))
    picks = [select_clients(ids, 0.3, seed=1, round_index=r) for r in range(5)]
    assert all(len(p) == 3 and p == sorted(p) for p in picks)
    assert picks == [select_clients(ids, 0.3, seed=1, round_index=r) for r in range(5)]
    assert len({tuple(p) for p in picks}) > 1
    assert select_clients(ids, 0.01, 1, 0) and select_clients(ids, 1.0, 1, 0) == ids


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_resume_equals_uninterrupted(tmp_path, algorithm):
    test = make_clients([30], seed=9)[0].images
    straight = train(federation(algorithm, fraction=0.67), 4, test).federation.global_weights

    ckpt = Checkpoint(tmp_path / "ckpt.pt", key="run")
    train(federation(algorithm, fraction=0.67), 2, test, ckpt)  # "killed" after round 2
    resumed = train(federation(algorithm, fraction=0.67), 4, test, ckpt)
    assert resumed.curve[0]["round"] == 1 and [r["round"] for r in resumed.curve] == [1, 2, 3, 4]
    assert_same(resumed.federation.global_weights, straight)


def test_checkpoint_of_another_run_is_ignored(tmp_path):
    test = make_clients([30], seed=9)[0].images
    train(federation(), 2, test, Checkpoint(tmp_path / "c.pt", key="other params"))
    result = train(federation(), 2, test, Checkpoint(tmp_path / "c.pt", key="these params"))
    assert len(result.curve) == 2
    assert_same(result.federation.global_weights, run(federation(), 2))
