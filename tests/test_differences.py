"""`regl report`'s differences: a − b with its standard error, against scipy's t statistics, and the baseline it
compares with picked on the validation split."""

from __future__ import annotations

import pytest
from scipy import stats

from regl.differences import difference
from regl.report import Grids, by_seed, difference_table, fill, flatten
from test_report import BASE, FEDAVG, GRIDS, params, rev, runs_of

A = [0.80, 0.77, 0.79, 0.74]
B = [0.76, 0.75, 0.73, 0.72]


def seeds_of(values, name, **changes):
    return [rev(f"{name}{i}", params(**{"train.seed": i, "personalize.seed": i}, **changes), v, v, 0.9)
            for i, v in enumerate(values)]


def test_runs_at_the_same_seeds_are_paired_and_the_error_is_scipys_paired_t():
    a, b = runs_of(*seeds_of(A, "a")), runs_of(*seeds_of(B, "b", **FEDAVG))
    d = difference(by_seed(a, "final"), by_seed(b, "final"))
    assert d.paired and d.n == 4 and d.mean == pytest.approx(0.035)
    assert d.mean / d.se == pytest.approx(stats.ttest_rel(A, B).statistic)


def test_runs_sharing_fewer_than_two_seeds_take_welchs_unpaired_error():
    a = runs_of(*seeds_of(A, "a"))  # seeds 0-3
    b = [r for r in runs_of(*seeds_of(B + [0.70, 0.71], "b", **FEDAVG)) if r.seed >= 3]  # seeds 3-5: one shared
    d = difference(by_seed(a, "final"), by_seed(b, "final"))
    assert not d.paired and d.n == 3
    assert d.mean / d.se == pytest.approx(stats.ttest_ind(A, [B[3], 0.70, 0.71], equal_var=False).statistic)
    assert difference(by_seed(a, "final"), by_seed(b[:1], "final")).se is None  # one run a side: no error to estimate


def test_the_baseline_compared_is_the_best_on_validation_whatever_the_test_says():
    # FedProx is better on validation, FedAvg on test: the comparison is with FedProx (a choice that read the test
    # split would take FedAvg and fail here)
    doc = {**GRIDS, "methods": {**GRIDS["methods"], "fedprox": {
        "label": "FedProx", "set": {"train.algorithm": "fedprox", **FEDAVG}}},
           "grids": {"g": {"rows": ["fedavg", "fedprox", "regl"], "seeds": [0, 1, 2], "columns": {"b": {}}}},
           "differences": {"d": {"rows": {"β = 0.01": {"a": "g/regl/b", "b": ["g/fedavg/b", "g/fedprox/b"]}}}}}
    grids = Grids(doc, flatten(BASE))

    def at(values, name, val, **changes):
        out = seeds_of(values, name, **changes)
        for r in out:
            r["revs"][0]["data"]["metrics"]["metrics/train.json"]["data"]["val_accuracy_mean_last_5"] = val
        return out

    found = runs_of(*at([0.80, 0.81, 0.79], "r", 0.80), *at([0.78, 0.79, 0.77], "a", 0.70, **FEDAVG),
                    *at([0.70, 0.72, 0.71], "p", 0.75, **{**FEDAVG, "train.algorithm": "fedprox"}))
    made = difference_table(grids, "d", found)
    assert "| β = 0.01: ReGL − FedProx (the best on validation) | +9.0 ± 0.6 (3 seeds, paired: 15.6 SE) |" in made
    text = "x\n<!-- regl report: d difference -->\nold\n<!-- end -->\n"
    assert fill(text, grids, found) == f"x\n<!-- regl report: d difference -->\n{made}\n<!-- end -->\n"
