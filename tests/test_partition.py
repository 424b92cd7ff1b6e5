"""Properties of the client splits: coverage, skew strength, min_size, determinism, and clear errors."""

import numpy as np
import pytest

from regl.core.errors import ReglError
from regl.data.partition import coverage_classes, dirichlet, iid, local_test_view, pathological, split_clients
from regl.core.seeding import rng

LABELS = np.repeat(np.arange(10), 1200)  # 12,000 labels, 10 balanced classes, like the embedded default


def assert_exact_cover(parts, n):
    joined = np.concatenate(parts)
    assert len(joined) == n, "an image is lost or held twice"
    assert np.array_equal(np.sort(joined), np.arange(n))


def share_in_top2(labels, idx):
    counts = np.sort(np.bincount(labels[idx], minlength=10))[::-1]
    return counts[:2].sum() / counts.sum()


def test_dirichlet_extreme_skew_puts_clients_on_one_or_two_classes():
    result = dirichlet(LABELS, 10, beta=0.01, min_size=10, max_tries=1000, rng=rng(0, "t"))
    assert_exact_cover(result.indices, len(LABELS))
    shares = [share_in_top2(LABELS, idx) for idx in result.indices]
    assert np.median(shares) >= 0.95
    assert min(len(i) for i in result.indices) >= 10


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dirichlet_huge_beta_is_near_uniform(seed):
    result = dirichlet(LABELS, 10, beta=1000, min_size=10, max_tries=10, rng=rng(seed, "t"))
    assert_exact_cover(result.indices, len(LABELS))
    for idx in result.indices:
        share = np.bincount(LABELS[idx], minlength=10) / len(idx)
        assert np.abs(share - 0.1).max() < 0.03
        assert abs(len(idx) - 1200) < 0.05 * 1200


def test_dirichlet_min_size_holds_and_is_redrawn_for():
    result = dirichlet(LABELS, 10, beta=0.05, min_size=300, max_tries=5000, rng=rng(3, "t"))
    assert min(len(i) for i in result.indices) >= 300
    assert result.tries >= 1


def test_dirichlet_same_seed_same_split_other_seed_other_split():
    a = dirichlet(LABELS, 10, 0.5, 10, 100, rng(7, "partition")).indices
    b = dirichlet(LABELS, 10, 0.5, 10, 100, rng(7, "partition")).indices
    c = dirichlet(LABELS, 10, 0.5, 10, 100, rng(8, "partition")).indices
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_dirichlet_too_many_clients_for_min_size_is_a_clear_error():
    with pytest.raises(ReglError, match="clients.*min_size"):
        dirichlet(LABELS[:100], 20, 0.5, min_size=10, max_tries=10, rng=rng(0))


def test_dirichlet_gives_up_after_max_tries():
    # 100 clients over 10 classes at beta 0.01: most clients get nothing, so min_size 10 is never reached
    with pytest.raises(ReglError, match="max_tries = 5"):
        dirichlet(LABELS, 100, 0.01, min_size=10, max_tries=5, rng=rng(0))


def test_iid_is_balanced_and_complete():
    result = iid(LABELS, 7, min_size=1, rng=rng(0))
    assert_exact_cover(result.indices, len(LABELS))
    sizes = [len(i) for i in result.indices]
    assert max(sizes) - min(sizes) <= 1


def test_pathological_gives_each_client_its_classes():
    result = pathological(LABELS, 10, classes_per_client=2, min_size=10, rng=rng(0))
    assert_exact_cover(result.indices, len(LABELS))
    for idx in result.indices:
        assert len(np.unique(LABELS[idx])) == 2


def test_pathological_needs_a_holder_for_every_class():
    with pytest.raises(ReglError, match="classes_per_client"):
        pathological(LABELS, 3, classes_per_client=2, min_size=1, rng=rng(0))


def test_split_clients_dispatches_on_scheme():
    parts = split_clients(LABELS, 10, 5, 0.5, "iid", 1, 10, 2, rng(0)).indices
    assert len(parts) == 5


def test_local_test_view_follows_client_proportions():
    test_labels = np.repeat(np.arange(10), 100)
    counts = np.array([300, 100, 0, 0, 0, 0, 0, 0, 0, 0])
    view = local_test_view(test_labels, counts, 40, rng(0))
    assert np.array_equal(np.bincount(test_labels[view], minlength=10)[:2], [30, 10])
    assert len(np.unique(view)) == len(view) == 40


def test_coverage_classes():
    assert coverage_classes(np.array([95, 5, 0])) == 1
    assert coverage_classes(np.array([50, 46, 4])) == 2
    assert coverage_classes(np.array([10] * 10)) == 10
