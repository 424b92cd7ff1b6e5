"""`regl report`: runs that differ only in their seeds form one cell, shown as mean ± std (n) over seeds.

The inputs are `dvc exp show --json` documents: one recorded from DVC 3.67 (tests/data/exp_show.json) and
small ones built here in the same shape, so each aggregation rule is checked on numbers worked out by hand.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from regl.cli import render
from regl.report import cells, mean_std, method_name, read_runs, table1, table2

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("refresh_readme", ROOT / "experiments" / "refresh_readme.py")
refresh_readme = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(refresh_readme)
RECORDED = Path(__file__).parent / "data" / "exp_show.json"
BASE = {"beta": 0.01, "clients": list(range(10)), "threads": 2,
        "partition": {"scheme": "dirichlet"},
        "train": {"algorithm": "fedavg", "synthetic": True, "local_epochs": 2, "seed": 0, "lr": 0.05},
        "personalize": {"synthetic": True, "seed": 0}}


def params(**changes) -> dict:
    """BASE with dotted keys changed: params(**{"train.seed": 1})."""
    doc = json.loads(json.dumps(BASE))
    for dotted, value in changes.items():
        *path, last = dotted.split(".")
        node = doc
        for key in path:
            node = node[key]
        node[last] = value
    return doc


def rev(name, p, final=None, last5=None, personal=None, stamp="2026-11-27T10:00:00", error=None):
    metrics = {}
    if final is not None:
        metrics["metrics/train.json"] = {"data": {"accuracy": final, "accuracy_mean_last_5": last5}}
        metrics["metrics/eval.json"] = {"data": {"global_accuracy": final, "personalized_accuracy_mean": personal}}
    return {"revs": [{"rev": name * 4, "name": name, "error": error,
                      "data": {"rev": name * 4, "timestamp": stamp, "params": {"params.yaml": {"data": p}},
                               "metrics": metrics}}],
            "name": name, "executor": None}


def exp_show(*experiments, baseline_params=BASE) -> list:
    return [{"rev": "workspace", "name": None, "data": {}, "experiments": None},
            {"rev": "c" * 40, "name": "main", "error": None, "experiments": list(experiments),
             "data": {"rev": "c" * 40, "timestamp": "2026-11-27T09:00:00",
                      "params": {"params.yaml": {"data": baseline_params}}, "metrics": {}}}]


def regl_seeds(values, **changes):
    return [rev(f"r{i}", params(**{"train.seed": i, "personalize.seed": i}, **changes), v, v - 0.01, 0.99)
            for i, v in enumerate(values)]


def test_mean_and_sample_std_by_hand():
    # 70, 72, 77: mean 73, deviations -3, -1, 4, sample variance (9 + 1 + 16) / 2 = 13, std 3.61
    assert mean_std([0.70, 0.72, 0.77]) == "73.0 ± 3.6 (3)"
    assert mean_std([0.5]) == "50.0 (1)"  # one run: no spread to show
    assert mean_std([]) == "–"


def test_runs_differing_only_in_seeds_and_threads_form_one_cell():
    runs = regl_seeds([0.70, 0.72]) + [rev("t", params(**{"train.seed": 2, "personalize.seed": 2, "threads": 1}),
                                           0.77, 0.76, 0.99)]
    runs.append(rev("lr", params(**{"train.lr": 0.01}), 0.40, 0.39, 0.9))
    found, skipped = read_runs(exp_show(*runs))
    assert skipped == []
    grouped = cells([r for r in found if r.name != "main"])
    assert sorted(len(c.runs) for c in grouped) == [1, 3]
    three = next(c for c in grouped if len(c.runs) == 3)
    assert mean_std(three.values("final")) == "73.0 ± 3.6 (3)"


def test_a_seed_run_twice_counts_once_the_newest():
    older = rev("old", params(), 0.10, 0.1, 0.9, stamp="2026-11-27T10:00:00")
    newer = rev("new", params(), 0.80, 0.8, 0.9, stamp="2026-11-27T11:00:00")
    found, _ = read_runs(exp_show(older, newer))
    (cell,) = cells(found)  # "main" has no metrics: not a run
    assert [r.name for r in cell.runs] == ["new"]


def test_table1_shows_mean_std_n_per_method_and_column():
    fedavg = [rev(f"f{i}", params(**{"train.seed": i, "train.synthetic": False, "personalize.synthetic": False}),
                  v, v, 0.99) for i, v in enumerate([0.40, 0.50, 0.60])]
    iid = [rev("iid", params(**{"partition.scheme": "iid", "train.synthetic": False,
                                "personalize.synthetic": False}), 0.88, 0.88, 0.9)]
    found, _ = read_runs(exp_show(*regl_seeds([0.70, 0.72, 0.77]), *fedavg, *iid))
    lines = table1(cells(found)).splitlines()
    assert lines[0] == "| method | β = 0.01, E = 2 | IID, E = 2 |"
    assert lines[2:] == ["| FedAvg | 50.0 ± 10.0 (3) | 88.0 (1) |", "| ReGL | 73.0 ± 3.6 (3) |  |"]
    text = render(cells(found), 0.01)
    # (73 - 50) / (88 - 50) = 60.5 %; 88 - 73 = 15 points
    assert "ReGL recovers 61 % of what skew costs FedAvg" in text and "15.0 points under" in text


def test_ablations_name_what_each_regl_cell_changes():
    found, _ = read_runs(exp_show(*regl_seeds([0.70, 0.72, 0.77]),
                                  *regl_seeds([0.60, 0.62], **{"train.lr": 0.01})))
    text = render(cells(found), 0.01)
    assert "| as committed (params.yaml) | 73.0 ± 3.6 (3) | 72.0 ± 3.6 (3) | 99.0 ± 0.0 (3) |" in text
    assert "| train.lr = 0.01 | 61.0 ± 1.4 (2) |" in text


def test_failed_and_unfinished_runs_are_skipped_with_a_note():
    failed = rev("boom", params(), error={"type": "CalledProcessError", "msg": "stage federated_train failed"})
    unfinished = rev("half", params(**{"train.seed": 5}))  # no metrics
    good = regl_seeds([0.7])
    found, skipped = read_runs(exp_show(failed, unfinished, *good))
    assert [r.name for r in found] == ["r0"]
    assert any(s.startswith("boom: ") and "failed" in s for s in skipped)
    assert "half: no training metrics (train.json)" in skipped


def test_a_run_that_ended_with_a_nan_loss_is_skipped_as_diverged():
    # recorded before a NaN loss stopped a run: it finished, at chance, and would read as a result
    diverged = rev("nan", params(**{"train.seed": 1, "personalize.seed": 1}), 0.1, 0.1, 0.5)
    diverged["revs"][0]["data"]["metrics"]["metrics/train.json"]["data"]["loss"] = float("nan")
    found, skipped = read_runs(exp_show(diverged, *regl_seeds([0.7])))
    assert [r.name for r in found] == ["r0"]
    assert any(s.startswith("nan: diverged") for s in skipped)
    assert "70.0 (1)" in table1(cells(found))


def test_report_command_notes_skipped_runs_and_does_not_crash(tmp_path):
    doc = tmp_path / "exp.json"
    doc.write_text(json.dumps(exp_show(rev("boom", params(), error={"msg": "killed"}), *regl_seeds([0.7]))))
    proc = subprocess.run([sys.executable, "-m", "regl.cli", "report", "--json", str(doc)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "note: skipped boom: killed" in proc.stderr and "70.0 (1)" in proc.stdout


def test_recorded_dvc_output_is_read():
    found, _ = read_runs(json.loads(RECORDED.read_text()))
    by_name = {r.name: r for r in found}
    assert sorted(by_name) == ["fedavg-e2", "fedavg-m5", "fedprox-b001", "main", "moon-b05"] or \
        sorted(by_name) == ["fedavg-e2", "fedavg-m5", "fedprox-b001", "master", "moon-b05"]
    # `dvc exp run` leaves its params in the workspace, so the later runs inherited moon and beta = 0.5
    assert by_name["moon-b05"].method == "MOON" and by_name["moon-b05"].params["beta"] == 0.5
    assert by_name["fedprox-b001"].changes == {"train.algorithm": "fedprox"}
    assert table2(cells(found), 0.5).splitlines()[0] == "| method | M = 5 | M = 10 |"


def test_regl_is_fedavg_with_synthetic_data():
    assert method_name("fedavg", True) == "ReGL" and method_name("moon", True) == "MOON + synthetic"


def test_readme_tables_are_what_report_prints_from_the_committed_results():
    blocks = refresh_readme.report_blocks((ROOT / "README.md").read_text())
    if not blocks:
        pytest.fail("the README shows no `regl report --json experiments/results/...` output")
    for command, file, shown in blocks:
        path = ROOT / file
        assert path.is_file(), f"{path} is not committed"
        assert refresh_readme.report_output(file) == shown, (f"README block under `{command}` differs from what it "
                                                              "prints (python experiments/refresh_readme.py rewrites it)")


def test_table_2b_shows_the_mean_of_the_last_five_rounds_by_clients():
    found, _ = read_runs(exp_show(*regl_seeds([0.70, 0.72, 0.77], clients=[0, 1, 2, 3, 4])))
    text = render(cells(found), 0.01)
    table_2b = text.split("Table 2b: global test accuracy, mean of the last five rounds (%)")[1].split("\n\n")[1]
    # last5 is each final value minus 0.01: 69, 71, 76 -> mean 72.0, the same sample std as the finals
    assert table_2b.splitlines()[:3] == ["| method | M = 5 |", "|---|---|", "| ReGL | 72.0 ± 3.6 (3) |"]


def test_the_split_draw_budget_does_not_make_a_cell_of_its_own():
    # M = 20 at beta 0.01 needs ~18,000 Dirichlet draws, so its runs raise partition.max_tries; the budget
    # decides whether a split is found, never which one, so seeds run at either budget are one cell
    runs = regl_seeds([0.70, 0.72, 0.77], **{"partition.max_tries": 100000})
    runs[0] = rev("r0", params(**{"train.seed": 0, "personalize.seed": 0}), 0.70, 0.69, 0.99)
    m20 = rev("m20", params(**{"clients": list(range(20)), "partition.max_tries": 100000}), 0.60, 0.59, 0.99)
    found, _ = read_runs(exp_show(*runs, m20))
    assert sorted(len(c.runs) for c in cells(found)) == [1, 3]
    assert table2(cells(found), 0.01).splitlines()[2] == "| ReGL | 73.0 ± 3.6 (3) | 60.0 (1) |"
    assert "Other cells" not in render(cells(found), 0.01)
    assert "max_tries" not in render(cells(found), 0.01)


def test_pathological_cells_go_to_table_2c_and_not_into_the_skew_recovery():
    fedavg = {"train.synthetic": False, "personalize.synthetic": False}
    one_class = {"partition.scheme": "pathological", "partition.classes_per_client": 1}
    runs = [rev("f", params(**fedavg), 0.50, 0.50, 0.9),
            rev("iid", params(**fedavg, **{"partition.scheme": "iid"}), 0.88, 0.88, 0.9),
            *regl_seeds([0.70, 0.72, 0.77]),
            rev("p10", params(**fedavg, **{"partition.scheme": "pathological"}), 0.30, 0.30, 0.9),  # 2 classes
            rev("p50", params(**fedavg, **one_class, clients=list(range(50))), 0.20, 0.20, 0.9),
            rev("q50", params(**one_class, clients=list(range(50))), 0.65, 0.64, 0.9)]
    found, _ = read_runs(exp_show(*runs))
    text = render(cells(found), 0.01)
    table_2c = text.split("Table 2c:")[1].split("\n\n")[1].splitlines()
    assert table_2c == ["| method | M = 10, 2 classes a client | M = 50, 1 class a client |", "|---|---|---|",
                        "| FedAvg | 30.0 (1) | 20.0 (1) |", "| ReGL |  | 65.0 (1) |"]
    assert "pathological" not in text.split("Ablations")[1]  # neither an ablation nor an "other" cell
    # the Dirichlet FedAvg (50), not the pathological one (30): (73 - 50) / (88 - 50) = 61 %
    assert "ReGL recovers 61 % of what skew costs FedAvg" in text
