"""`regl report` builds the paper's tables from a recorded `dvc exp show --json` (DVC 3.67, four runs)."""

import json
import subprocess
import sys
from pathlib import Path

from regl.report import Run, method_name, runs, table1, table2

RECORDED = Path(__file__).parent / "data" / "exp_show.json"


def test_runs_are_read_from_baseline_and_experiments():
    found = runs(json.loads(RECORDED.read_text()))
    assert sorted(r.name for r in found) == ["fedavg-e2", "fedavg-m5", "fedprox-b001", "master", "moon-b05"]
    by_name = {r.name: r for r in found}
    # `dvc exp run` leaves its params in the workspace, so the later runs inherited moon and beta = 0.5
    assert by_name["moon-b05"].method == "MOON" and by_name["moon-b05"].beta == 0.5
    assert by_name["fedavg-m5"].num_clients == 5 and by_name["fedavg-e2"].local_epochs == 2
    assert by_name["fedprox-b001"].method == "FedProx" and by_name["master"].method == "FedAvg"


def test_tables_fill_only_the_cells_that_ran():
    found = runs(json.loads(RECORDED.read_text()))
    lines = table1(found).splitlines()
    assert lines[0] == "| method | β = 0.01, E = 1 | β = 0.5, E = 1 | β = 0.5, E = 2 |"
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[2:]}
    assert list(rows) == ["FedAvg", "FedProx", "MOON"]  # the paper's method order
    assert rows["FedAvg"][1:] == ["", ""] and rows["FedAvg"][0].count("/") == 1
    assert rows["MOON"][0] == "" and rows["MOON"][1] and rows["MOON"][2]
    assert table2(found, 0.5).splitlines()[0] == "| method | M = 5 | M = 10 |"
    assert table2(found, 0.01).splitlines()[0] == "| method | M = 10 |"


def test_iid_runs_get_their_own_column():
    found = runs(json.loads(RECORDED.read_text()))
    skewed = next(r for r in found if r.name == "fedprox-b001")
    iid = Run(**{**skewed.__dict__, "name": "fedprox-iid", "scheme": "iid", "global_accuracy": 0.75})
    lines = table1(found + [iid]).splitlines()
    assert lines[0].endswith("| IID, E = 1 |")
    assert next(line for line in lines if line.startswith("| FedProx")).split("|")[-2].strip().startswith("75.0 / ")


def test_cell_values_are_the_recorded_accuracies():
    data = json.loads(RECORDED.read_text())
    exp = next(e for e in data[1]["experiments"] if e["name"] == "fedprox-b001")["revs"][0]["data"]
    acc = exp["metrics"]["metrics/eval.json"]["data"]["global_accuracy"]
    row = next(line for line in table1(runs(data)).splitlines() if line.startswith("| FedProx"))
    assert f"{100 * acc:.1f} / " in row


def test_regl_is_fedavg_with_synthetic_data():
    assert method_name("fedavg", True) == "ReGL" and method_name("moon", True) == "MOON + synthetic"


def test_report_command_prints_markdown():
    proc = subprocess.run([sys.executable, "-m", "regl.cli", "report", "--json", str(RECORDED)],
                          capture_output=True, text=True, check=True)
    assert "Table 1" in proc.stdout and "| FedProx |" in proc.stdout and "Table 2" in proc.stdout
