"""Equal-compute accounting and convergence reporting: a step budget really takes K steps, train.json counts the
work done, the convergence flag and the chance warning fire when they should and not otherwise."""

import logging

import pytest
import torch
from test_federated import federation, make_clients

from regl.core.errors import ReglError
from regl.federated.train import RunSetup, chance_check_round, converged, train, train_metrics
from regl.federated.train_params import TrainParams
from regl.training.loop import SGDParams, samples_seen, train_epochs


def counting_hook(seen):
    def hook(model, xb, yb):
        seen.append(len(yb))
        return torch.nn.functional.cross_entropy(model(xb), yb)

    return hook


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 9])
def test_step_budget_takes_exactly_k_steps_across_passes(steps):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 16, 4))
    c = make_clients([10])[0]
    seen = []
    taken = train_epochs(model, c.images, SGDParams(batch_size=4), 1, 0, "k", loss_hook=counting_hook(seen),
                         steps=steps)
    assert taken == steps == len(seen)  # 10 images in batches of 4: 3 steps a pass, so 7 and 9 wrap around
    assert sum(seen) == samples_seen(10, 4, steps)


def test_training_flushes_subnormals_only_while_it_trains():
    # The flush is process-wide processor state; leaking it broke hypothesis (it refuses to draw floats when
    # subnormals read as zero) in whatever test ran after a training test.
    tiny = 5e-324  # the smallest subnormal double
    flushed_inside = []
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 16, 4))
    c = make_clients([10])[0]

    def hook(model, xb, yb):
        flushed_inside.append(tiny * 1.0 == 0.0)
        return torch.nn.functional.cross_entropy(model(xb), yb)

    train_epochs(model, c.images, SGDParams(batch_size=4), 1, 0, "k", loss_hook=hook)
    assert all(flushed_inside)
    assert tiny * 1.0 > 0.0


def test_samples_seen_counts_short_last_batches():
    assert [samples_seen(10, 4, k) for k in (1, 2, 3, 4, 6, 7)] == [4, 8, 10, 14, 20, 24]


def test_step_budget_of_one_pass_equals_one_epoch():
    c = make_clients([10])[0]
    a, b = (torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 4)) for _ in range(2))
    b.load_state_dict(a.state_dict())
    train_epochs(a, c.images, SGDParams(batch_size=4), 1, 0, "k")
    train_epochs(b, c.images, SGDParams(batch_size=4), 5, 0, "k", steps=3)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_local_steps_give_every_client_k_steps_whatever_its_size():
    fed = federation(sizes=(40, 24, 56), local_steps=5)  # batch 16: 3, 2 and 4 steps an epoch
    fed.run_round()
    assert [k for _, k in fed.last_work] == [5, 5, 5]
    by_epochs = federation(sizes=(40, 24, 56))
    by_epochs.run_round()
    assert [k for _, k in by_epochs.last_work] == [3, 2, 4]


def test_train_metrics_count_steps_samples_and_convergence():
    fed = federation(sizes=(40, 24, 56), local_steps=5)
    test = make_clients([30], seed=1)[0].images
    result = train(fed, 3, test)
    setup = RunSetup(TrainParams(rounds=3, batch_size=16, local_steps=5), [0, 1, 2], 1, 4, 16)
    m = train_metrics(setup, result.curve, 120, 0)
    assert m["steps_per_round"] == 5 and m["optimizer_steps"] == 3 * 3 * 5
    # 5 steps of 16 over 40 images: 40 + 2*16; over 24: 24 + 24 + 16; over 56: 56 + 16
    assert m["samples_processed"] == 3 * ((40 + 32) + (24 + 24 + 16) + (56 + 16))
    assert m["local_steps"] == 5 and m["local_epochs"] is None
    assert m["converged"] is None and m["accuracy_change_last_5"] is None  # too few rounds to tell


def test_converged_compares_the_last_five_rounds_with_the_five_before():
    climbing = [0.1 + 0.02 * r for r in range(20)]
    flat = [0.8, 0.82, 0.79, 0.81, 0.8] * 4
    assert converged(climbing) is False
    assert converged(flat) is True
    assert converged(flat[:9]) is None
    assert converged([0.5] * 5 + [0.515] * 5) is False and converged([0.5] * 5 + [0.505] * 5) is True


def test_chance_check_round_is_a_fifth_of_the_rounds():
    assert [chance_check_round(r) for r in (1, 4, 5, 20, 21, 200)] == [1, 1, 1, 4, 5, 40]


def chance_run(caplog, lr, rounds=10):
    fed = federation(sizes=(40, 24, 56))
    fed.runner.p = fed.runner.p.model_copy(update={"lr": lr})
    test = make_clients([200], seed=1)[0].images
    with caplog.at_level(logging.WARNING, logger="regl.federated.train"):
        curve = train(fed, rounds, test).curve
    return curve, [r.getMessage() for r in caplog.records if "still at chance" in r.getMessage()]


def test_warns_once_when_the_model_is_still_at_chance(caplog):
    curve, warnings = chance_run(caplog, lr=1e-7)  # too small to move the model
    assert curve[1]["accuracy"] < 0.4  # 4 classes, chance ~0.27
    assert len(warnings) == 1 and "after round 2 of 10" in warnings[0] and "train.lr" in warnings[0]


def test_a_run_whose_loss_turns_nan_stops_with_a_message_naming_the_lr():
    # SCAFFOLD at the shared lr diverged in the grid (loss NaN by round 18) and still finished at chance.
    fed = federation(sizes=(40, 24, 56))
    fed.runner.p = fed.runner.p.model_copy(update={"lr": 1e12})
    test = make_clients([200], seed=1)[0].images
    with pytest.raises(ReglError, match=r"round \d+: the global model's test loss is nan: .*lower train.lr"):
        train(fed, 10, test)


def test_no_warning_when_the_model_learns(caplog):
    curve, warnings = chance_run(caplog, lr=0.05)
    assert curve[1]["accuracy"] > 0.45
    assert warnings == []
