"""experiments/sweep.py: runs what grids.yaml asks for and the export lacks; a failed run does not end the sweep;
every run sets every key the grids file sets, so nothing leaks from one run into the next."""

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

SPEC = importlib.util.spec_from_file_location("sweep", Path(__file__).resolve().parents[1] / "experiments" / "sweep.py")
sweep = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(sweep)


# what federated_train prints when it stops a diverged run
DIVERGED_LINE = ("error: round 3: the global model's test loss is nan: scaffold diverged with this recipe; lower "
                 "train.lr (SCAFFOLD, FedNova and MOON need a smaller one)\n")


@pytest.fixture
def dvc_calls(monkeypatch):
    """Every `dvc exp run` the sweep makes, as {name: {key: value}}; runs named in ``fail`` exit 1, those whose
    name contains a string of ``fail`` that starts with "diverge:" exit 1 printing federated_train's divergence."""
    calls, fail = {}, set()

    def run(cmd, *args, **kwargs):
        name = cmd[cmd.index("-n") + 1]
        calls[name] = dict(cmd[i + 1].split("=", 1) for i, a in enumerate(cmd) if a == "-S")
        if name in fail and kwargs.get("check"):
            raise subprocess.CalledProcessError(1, cmd)
        return subprocess.CompletedProcess(cmd, 1 if name in fail else 0)

    def launch(cmd):
        name = cmd[cmd.index("-n") + 1]
        code = run(cmd).returncode
        if any(f.startswith("diverge:") and f[8:] in name for f in fail):
            return 1, DIVERGED_LINE
        return code, ""

    monkeypatch.setattr(sweep.subprocess, "run", run)
    monkeypatch.setattr(sweep, "launch", launch)
    monkeypatch.setattr(sweep, "existing_names", lambda: set())
    return calls, fail


ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "experiments" / "results" / "grid.json"


def test_a_failed_run_is_reported_and_the_sweep_goes_on(dvc_calls):
    calls, fail = dvc_calls
    fail.add("table2-fedavg-m5-s0")
    with pytest.raises(SystemExit, match="1 run\\(s\\) failed: table2-fedavg-m5-s0"):
        sweep.main(["table2", "--cells", "fedavg-m5", "regl-m5", "--seeds", "0"])
    assert sorted(calls) == ["table2-fedavg-m5-s0", "table2-regl-m5-s0"]


def test_every_run_sets_every_key_the_grids_file_sets(dvc_calls):
    calls, _ = dvc_calls
    sweep.main(["ablations", "--cells", "regl-oracle", "--seeds", "7"])
    sweep.main(["table1", "--cells", "fedavg-iid-e2", "--seeds", "7"])
    oracle, iid = calls["ablations-regl-oracle-s7"], calls["table1-fedavg-iid-e2-s7"]
    assert oracle["generate.oracle"] == "true" and iid["generate.oracle"] == "false"  # reset, not inherited
    assert iid["partition.scheme"] == "iid" and oracle["partition.scheme"] == "dirichlet"
    assert set(oracle) == set(iid) and {"train.seed", "personalize.seed", "threads"} <= set(oracle)
    assert oracle["train.seed"] == oracle["personalize.seed"] == "7"



@pytest.mark.parametrize("value", ["A photo of {class}, real world images, high resolution", "it's {class}",
                                   "a \\' b", "ends in \\", "lowcontrast", "none", 0.01, [0, 1], None, True])
def test_a_value_reaches_params_yaml_as_it_is_in_the_grids_file(tmp_path, value):
    # through DVC's own `-S` path (Hydra's override grammar): a prompt's braces and commas are no dict and no sweep
    from dvc.utils.hydra import apply_overrides

    params = tmp_path / "params.yaml"
    params.write_text("generate:\n  prompt: x\n")
    apply_overrides(params, [f"generate.prompt={sweep.value_arg(value)}"])
    assert yaml.safe_load(params.read_text())["generate"]["prompt"] == value

GRIDS_RUN = ["table1", "table2", "one-class", "own-lr", "ablations"]


def test_the_committed_export_holds_every_run_the_grids_ask_for(capsys, monkeypatch):
    # what a fresh clone's `python experiments/sweep.py <grid> --export experiments/results/grid.json` does for
    # every grid the committed results cover: nothing
    monkeypatch.setattr(sweep, "existing_names", lambda: set())
    sweep.main([*GRIDS_RUN, "--export", str(COMMITTED), "--dry-run"])
    out = capsys.readouterr().out
    assert out.startswith("139 run(s) done, 0 to run") and "dvc exp run" not in out


def test_the_domain_gap_grid_reuses_the_default_styles_runs(capsys, monkeypatch):
    # its lowcontrast column has params.yaml's style: pretrain-recipe's one-head cells, run under that grid's names
    monkeypatch.setattr(sweep, "existing_names", lambda: set())
    sweep.main(["domain-gap", "--export", str(COMMITTED), "--dry-run"])
    out = capsys.readouterr().out
    done, todo = (int(n) for n in re.match(r"(\d+) run\(s\) done, (\d+) to run", out).groups())
    # 2 rows x 4 styles x 3 seeds; ReGL's 3 lowcontrast runs are done, whatever else has landed since
    assert done + todo == 24 and done >= 3 and "-n domain-gap-regl-lowcontrast-" not in out


def test_a_run_is_done_by_its_params_whatever_its_name(tmp_path, dvc_calls):
    # table2's M = 10 column is table1's β = 0.01, E = 2 cell: the runs made under one grid count for the other
    calls, _ = dvc_calls
    sweep.main(["table2", "--cells", "regl-m10", "--export", str(COMMITTED)])
    assert calls == {}


def test_runs_are_found_under_every_baseline_commit():
    # the sweep clone moved to a newer commit between runs; `dvc exp ls` alone lists only HEAD's runs, so a
    # resumed sweep reran them and the export lost them
    out = ("19c401a:\n\tc5f5f07 [regl-b0.01-s0]\n\tb16f2b8 [fedavg-b0.01-s0]\n"
           "main:\n\t1a2b3c4 [moon-b0.01-e2-lr0.02-s0]\n")
    assert sweep.parse_exp_ls(out) == {"19c401a": {"regl-b0.01-s0", "fedavg-b0.01-s0"},
                                       "main": {"moon-b0.01-e2-lr0.02-s0"}}


def _run_data(name, metric, params_changes=None):
    """A finished run named like the sweep names them (<grid>-<row>-<column>-s<seed>), with that cell's params
    over params.yaml and ``params_changes``; names of no cell get no params."""
    from regl.report import load_grids, unflatten
    grids = load_grids(ROOT / "experiments" / "grids.yaml", ROOT / "params.yaml")
    cell = next((c for c in grids.cells.values() if name.startswith(f"{c.grid}-{c.name}-s")), None)
    data = {"metrics": {"m": metric}}
    if cell is not None:
        seed = int(name.rsplit("-s", 1)[1])
        flat = {**grids.run_params(cell), "train.seed": seed, "personalize.seed": seed, **(params_changes or {})}
        data = {"params": {"params.yaml": {"data": unflatten(flat)}},
                "metrics": {"m": metric, "metrics/train.json": {"data": {"accuracy": metric}}}}
    return data


def _export(rev, *names, metric=0.5, params_changes=None):
    return {"rev": rev, "name": None, "data": {"metrics": {"m": metric}},
            "experiments": [{"name": n, "revs": [{"rev": n, "name": n, "data": _run_data(n, metric, params_changes)}]}
                            for n in names] or None}


def test_an_export_from_a_fresh_clone_adds_to_the_committed_one(tmp_path, dvc_calls, monkeypatch):
    # a fresh clone's DVC knows none of the committed runs: its `dvc exp show --json` used to replace the file
    committed = [_export("workspace"), _export("e2fcedf", "table2-regl-m5-s0", "table2-fedavg-m5-s0")]
    shown = [_export("workspace"), _export("e2fcedf", "table2-fedavg-m5-s0", metric=0.7),
             _export("67b5637", "one-class-regl-m50-s0")]
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(committed))
    calls, _ = dvc_calls
    exp_run = sweep.subprocess.run  # the fixture's `dvc exp run`

    def run(cmd, *args, **kwargs):
        if cmd[:3] == ["dvc", "exp", "show"]:
            return subprocess.CompletedProcess(cmd, 0, stdout=json.dumps(shown))
        if cmd[:3] == ["dvc", "exp", "ls"]:
            return subprocess.CompletedProcess(cmd, 0, stdout="e2fcedf:\n\tabc [fedavg-m5-s0]\n")
        if cmd[:2] == ["git", "show"]:  # a run's commit this clone does not have
            return subprocess.CompletedProcess(cmd, 128, stdout="")
        return exp_run(cmd, *args, **kwargs)

    monkeypatch.setattr(sweep.subprocess, "run", run)
    sweep.main(["table2", "--cells", "fedavg-m5", "regl-m5", "--seeds", "0", "1", "--export", str(path)])
    merged = json.loads(path.read_text())
    runs = {e["name"]: e["revs"][0]["data"]["metrics"]["m"] for c in merged for e in c["experiments"] or []}
    assert runs == {"table2-regl-m5-s0": 0.5, "table2-fedavg-m5-s0": 0.7, "one-class-regl-m50-s0": 0.5}
    assert [c["rev"] for c in merged] == ["workspace", "e2fcedf", "67b5637"]
    # the committed runs were not run again
    assert sorted(calls) == ["table2-fedavg-m5-s1", "table2-regl-m5-s1"]


def test_the_export_carries_each_runs_curve_that_dvc_exp_show_leaves_out(tmp_path, monkeypatch):
    # `dvc exp show --json` drops train.json's by_round (a list): the export reads it from the run's commit
    monkeypatch.chdir(tmp_path)
    for cmd in (["init", "-q"], ["config", "user.email", "t@example.com"], ["config", "user.name", "t"]):
        subprocess.run(["git", *cmd], check=True)
    curve = {"accuracy": [0.5, 0.7, 0.8], "val_accuracy": [0.4, 0.6, 0.7]}
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/train.json").write_text(json.dumps({"accuracy": 0.8, "by_round": curve}))
    subprocess.run(["git", "add", "-A"], check=True)
    subprocess.run(["git", "commit", "-qm", "run"], check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    shown = [_export("workspace"), _export("base", "table2-fedavg-m5-s0", metric=0.8)]
    shown[1]["experiments"][0]["revs"][0]["rev"] = commit

    def run(cmd, *args, **kwargs):
        if cmd[:3] == ["dvc", "exp", "show"]:
            return subprocess.CompletedProcess(cmd, 0, stdout=json.dumps(shown))
        if cmd[:3] == ["dvc", "exp", "ls"]:
            return subprocess.CompletedProcess(cmd, 0, stdout="base:\n\tabc [table2-fedavg-m5-s0]\n")
        return git(cmd, *args, **kwargs)

    git = subprocess.run

    monkeypatch.setattr(sweep.subprocess, "run", run)
    sweep.export(tmp_path / "grid.json")
    from regl.report import read_runs

    found, _ = read_runs(json.loads((tmp_path / "grid.json").read_text()))
    assert [r.curve for r in found] == [(0.5, 0.7, 0.8)]


def test_a_committed_run_made_under_an_older_generator_is_run_again_and_a_baseline_is_not(tmp_path, capsys):
    # the export holds both seed-0 runs of M = 5 under its name, made with another pre-training recipe: ReGL's
    # images changed, so its run is no longer the cell's; FedAvg reads no synthetic image
    path = tmp_path / "grid.json"
    path.write_text(json.dumps([_export("e2fcedf", "table2-regl-m5-s0", "table2-fedavg-m5-s0",
                                        params_changes={"generator.unet_steps": 1})]))
    sweep.main(["table2", "--cells", "fedavg-m5", "regl-m5", "--seeds", "0", "--export", str(path), "--dry-run"])
    out = capsys.readouterr().out
    assert out.startswith("1 run(s) done, 1 to run") and "-n table2-regl-m5-s0 " in out


def test_a_failed_run_in_the_export_is_run_again(tmp_path):
    committed = [_export("e2fcedf", "regl-b0.01-s0", "scaffold-b0.01-e2-s0")]
    committed[0]["experiments"][1]["executor"] = {"state": "failed"}
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(committed))
    assert sweep.exported_names(path) == {"regl-b0.01-s0"}


def test_cells_of_two_grids_with_one_name_are_told_apart(dvc_calls, monkeypatch):
    # table2 and one-class both have a column m20; table2's FedAdam at M = 20 has seeds 0-2, one-class's only 0
    calls, _ = dvc_calls
    monkeypatch.setattr(sweep, "export", lambda path: None)
    sweep.main(["one-class", "--cells", "fedadam-m20", "--seeds", "0", "1", "2", "--export", str(COMMITTED)])
    assert sorted(calls) == ["one-class-fedadam-m20-s1", "one-class-fedadam-m20-s2"]


def test_seeds_do_not_run_the_cells_a_grid_leaves_out_unless_named(dvc_calls):
    calls, _ = dvc_calls
    sweep.main(["own-lr", "--seeds", "9"])  # own-lr plans seeds per cell; its other cells stay out
    assert len(calls) == 10 and "own-lr-fedavg-e5-lr0.02-s9" not in calls
    sweep.main(["own-lr", "--cells", "fedavg-e5-lr0.02", "--seeds", "9"])
    assert "own-lr-fedavg-e5-lr0.02-s9" in calls


def test_threads_default_to_params_yaml_not_the_machines_cores(dvc_calls, monkeypatch):
    # another thread count changes the last bits, so DVC would rerun every computing stage of the cell
    monkeypatch.setattr(sweep.os, "cpu_count", lambda: 16)
    calls, _ = dvc_calls
    sweep.main(["table2", "--cells", "regl-m5", "--seeds", "4"])
    assert calls["table2-regl-m5-s4"]["threads"] == "2"


def tuned_sweep(tmp_path, calls, monkeypatch):
    """A grids file with one tuned cell (FedAvg, lr 0.05 or 0.01, seeds 0-2) and an export the fake `dvc exp run`
    fills: lr 0.01 scores better on validation (0.8 against 0.6), lr 0.05 on test (0.9 against 0.7)."""
    grids_file, params_file, path = tmp_path / "grids.yaml", tmp_path / "params.yaml", tmp_path / "grid.json"
    params_file.write_text("threads: 2\ntrain: {algorithm: fedavg, lr: 0.05, momentum: 0.9, seed: 0}\n"
                           "personalize: {seed: 0}\n")
    grids_file.write_text("methods: {fedavg: {label: FedAvg, set: {train.algorithm: fedavg}}}\n"
                          "searches: {fedavg: {train.lr: [0.05, 0.01]}}\n"
                          "grids: {tuned: {tune: {seed: 0, budget: 2}, rows: [fedavg], seeds: [0, 1, 2],\n"
                          "                columns: {c: {title: one}}}}\n")
    path.write_text("[]")
    made = []

    def export(_):  # what `dvc exp show --json` would hold after each run: its params, test and val figures
        name, values = list(calls.items())[-1]
        if any(e["name"] == name for e in made) or "diverged" in path.read_text() and name.endswith("lr0.05-s0"):
            return
        lr, seed = float(values["train.lr"]), int(values["train.seed"])
        train = {"accuracy": 0.9 if lr == 0.05 else 0.7, "accuracy_mean_last_5": 0.9 if lr == 0.05 else 0.7,
                 "val_accuracy_mean_last_5": 0.6 if lr == 0.05 else 0.8}
        made.append({"name": name, "revs": [{"name": name, "rev": name, "data": {
            "timestamp": f"t{len(made)}", "metrics": {"metrics/train.json": {"data": train}},
            "params": {"params.yaml": {"data": {"threads": 2, "train": {"algorithm": "fedavg", "lr": lr, "seed": seed},
                                                "personalize": {"seed": seed}}}}}}]})
        kept = [e for e in json.loads(path.read_text()) if e["rev"] == "diverged"]
        path.write_text(json.dumps(kept + [{"rev": "c" * 40, "name": "main", "data": {}, "experiments": made}]))

    monkeypatch.setattr(sweep, "export", export)
    return ["--grids", str(grids_file), "--params", str(params_file), "--export", str(path)]


def test_a_tuned_cell_runs_its_search_then_the_setting_validation_chose_at_the_other_seeds(tmp_path, dvc_calls,
                                                                                           monkeypatch):
    # one sweep: both candidates at the tune seed; once they are exported, the one with the better validation
    # accuracy (lr 0.01 here, though lr 0.05 scores better on test) at seeds 1 and 2
    calls, _ = dvc_calls
    sweep.main(tuned_sweep(tmp_path, calls, monkeypatch))
    assert list(calls) == ["tuned-fedavg-c_lr0.05-s0", "tuned-fedavg-c_lr0.01-s0",
                           "tuned-fedavg-c_lr0.01-s1", "tuned-fedavg-c_lr0.01-s2"]



def test_a_tuned_cell_named_by_its_row_and_column_runs_its_search_and_then_its_choice(tmp_path, dvc_calls,
                                                                                      monkeypatch):
    calls, _ = dvc_calls
    sweep.main([*tuned_sweep(tmp_path, calls, monkeypatch), "tuned", "--cells", "fedavg-c"])
    assert list(calls) == ["tuned-fedavg-c_lr0.05-s0", "tuned-fedavg-c_lr0.01-s0",
                           "tuned-fedavg-c_lr0.01-s1", "tuned-fedavg-c_lr0.01-s2"]
    with pytest.raises(SystemExit, match="no cell"):
        sweep.main([*tuned_sweep(tmp_path, calls, monkeypatch), "tuned", "--cells", "fedavg-d"])


def test_a_grid_that_follows_a_tuned_one_runs_at_the_setting_its_search_chose(tmp_path, dvc_calls, monkeypatch):
    # `long` follows tuned/c: once the search has chosen lr 0.01 (on validation), its cell runs at lr 0.01
    calls, _ = dvc_calls
    args = tuned_sweep(tmp_path, calls, monkeypatch)
    grids_file = Path(args[1])
    spec = yaml.safe_load(grids_file.read_text())
    spec["grids"]["long"] = {"follows": "tuned/c", "rows": ["fedavg"], "seeds": [0],
                             "columns": {"r60": {"title": "sixty", "set": {"train.momentum": 0.5}}}}
    grids_file.write_text(yaml.safe_dump(spec))
    sweep.main([*args, "long", "--cells", "fedavg-r60"])
    assert not calls  # its setting waits for the search
    sweep.main(args)
    assert calls["long-fedavg-r60_lr0.01-s0"]["train.lr"] == "0.01"
    assert calls["long-fedavg-r60_lr0.01-s0"]["train.momentum"] == "0.5"

def test_a_search_run_that_diverged_is_recorded_as_the_worst_setting_and_not_run_again(tmp_path, dvc_calls,
                                                                                       monkeypatch, capsys):
    calls, fail = dvc_calls
    fail.add("diverge:lr0.05-s0")
    args = tuned_sweep(tmp_path, calls, monkeypatch)
    with pytest.raises(SystemExit, match="1 run\\(s\\) failed: tuned-fedavg-c_lr0.05-s0"):
        sweep.main(args)
    assert list(calls) == ["tuned-fedavg-c_lr0.05-s0", "tuned-fedavg-c_lr0.01-s0",
                           "tuned-fedavg-c_lr0.01-s1", "tuned-fedavg-c_lr0.01-s2"]
    from regl.report import read_runs
    runs, notes = read_runs(json.loads((tmp_path / "grid.json").read_text()), diverged=True)
    assert [r.name for r in runs if r.diverged] == ["tuned-fedavg-c_lr0.05-s0"]
    assert any("diverged (round 3: the global model's test loss is nan" in n for n in notes)
    calls.clear()
    sweep.main(args)
    assert calls == {} and capsys.readouterr().out.endswith("4 run(s) done, 0 to run\n")


def test_the_defaults_are_params_yaml_as_committed_not_as_the_last_run_left_it(tmp_path, dvc_calls):
    # `dvc exp run -S` leaves a run's params in the workspace: a FedAdam run after a SCAFFOLD one was made with
    # SCAFFOLD's server lr 0.5 as "params.yaml's value" and so belonged to no cell
    import shutil
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")
    subprocess.check_call(["git", "init", "-q"], cwd=repo)
    subprocess.check_call(["git", "add", "params.yaml"], cwd=repo)
    subprocess.check_call(["git", "-c", "user.email=t@e", "-c", "user.name=t", "commit", "-qm", "params"], cwd=repo)
    text = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(text.replace("server_lr: 1.0        # eta_g", "server_lr: 0.5        # eta_g"))
    calls, _ = dvc_calls
    sweep.main(["tuned", "--params", str(repo / "params.yaml"), "--cells", "fedadam-b0.01_lr0.02_server_lr0.01",
                "--seeds", "0"])
    assert calls["tuned-fedadam-b0.01_lr0.02_server_lr0.01-s0"]["train.scaffold.server_lr"] == "1.0"
