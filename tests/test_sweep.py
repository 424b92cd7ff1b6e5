"""experiments/sweep.py: a failed run does not end the sweep, and --set overrides every cell without leaking."""

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("sweep", Path(__file__).resolve().parents[1] / "experiments" / "sweep.py")
sweep = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(sweep)


@pytest.fixture
def dvc_calls(monkeypatch):
    """Every `dvc exp run` the sweep makes, as {name: {key: value}}; runs named in ``fail`` exit 1."""
    calls, fail = {}, set()

    def run(cmd, *args, **kwargs):
        name = cmd[cmd.index("-n") + 1]
        calls[name] = dict(cmd[i + 1].split("=", 1) for i, a in enumerate(cmd) if a == "-S")
        if name in fail and kwargs.get("check"):
            raise subprocess.CalledProcessError(1, cmd)
        return subprocess.CompletedProcess(cmd, 1 if name in fail else 0)

    monkeypatch.setattr(sweep.subprocess, "run", run)
    monkeypatch.setattr(sweep, "existing_names", lambda: set())
    return calls, fail


def test_a_failed_run_is_reported_and_the_sweep_goes_on(dvc_calls):
    calls, fail = dvc_calls
    fail.add("scaffold-b0.01-e2-s0")
    with pytest.raises(SystemExit, match=r"1 run\(s\) failed: scaffold-b0.01-e2-s0"):
        sweep.main(["table1", "--cells", "scaffold-b0.01-e2", "moon-b0.01-e2", "--seeds", "0", "1"])
    assert list(calls) == ["scaffold-b0.01-e2-s0", "moon-b0.01-e2-s0", "scaffold-b0.01-e2-s1", "moon-b0.01-e2-s1"]


def test_set_overrides_every_cell_and_names_the_runs_after_it(dvc_calls):
    calls, _ = dvc_calls
    sweep.main(["table1", "--cells", "moon-b0.01-e2", "--seeds", "0", "--set", "train.lr=0.02"])
    sweep.main(["table1", "--cells", "fedavg-b0.01-e2", "--seeds", "0"])
    assert calls["moon-b0.01-e2-lr0.02-s0"]["train.lr"] == "0.02"
    # the run after names the default again: `dvc exp run` leaves the last run's params in the workspace
    assert calls["fedavg-b0.01-e2-s0"]["train.lr"] == sweep.DEFAULTS["train.lr"]


def test_set_refuses_a_key_the_other_runs_would_not_reset():
    with pytest.raises(SystemExit, match="--set 'train.momentum=0': want KEY=VALUE with KEY one of"):
        sweep.main(["table1", "--set", "train.momentum=0", "--dry-run"])


def test_every_default_is_the_committed_params_value():
    import yaml

    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())

    def get(key):
        value = params
        for part in key.split("."):
            value = value[part]
        return value

    for key, value in sweep.DEFAULTS.items():
        assert yaml.safe_load(value) == get(key), key


def test_runs_are_found_under_every_baseline_commit():
    # the sweep clone moved to a newer commit between runs; `dvc exp ls` alone lists only HEAD's runs, so a
    # resumed sweep reran them and the export lost them
    out = ("19c401a:\n\tc5f5f07 [regl-b0.01-s0]\n\tb16f2b8 [fedavg-b0.01-s0]\n"
           "main:\n\t1a2b3c4 [moon-b0.01-e2-lr0.02-s0]\n")
    assert sweep.parse_exp_ls(out) == {"19c401a": {"regl-b0.01-s0", "fedavg-b0.01-s0"},
                                       "main": {"moon-b0.01-e2-lr0.02-s0"}}


def _export(rev, *names, metric=0.5):
    return {"rev": rev, "name": None, "data": {"metrics": {"m": metric}},
            "experiments": [{"name": n, "revs": [{"rev": n, "name": n, "data": {"metrics": {"m": metric}}}]}
                            for n in names] or None}


def test_an_export_from_a_fresh_clone_adds_to_the_committed_one(tmp_path, dvc_calls, monkeypatch):
    # a fresh clone's DVC knows none of the committed runs: its `dvc exp show --json` used to replace the file
    committed = [_export("workspace"), _export("e2fcedf", "regl-b0.01-s0", "fedavg-b0.01-s0")]
    shown = [_export("workspace"), _export("e2fcedf", "fedavg-b0.01-s0", metric=0.7),
             _export("67b5637", "regl-one-class-m50-s0")]
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(committed))
    calls, _ = dvc_calls
    exp_run = sweep.subprocess.run  # the fixture's `dvc exp run`

    def run(cmd, *args, **kwargs):
        if cmd[:3] == ["dvc", "exp", "show"]:
            return subprocess.CompletedProcess(cmd, 0, stdout=json.dumps(shown))
        if cmd[:3] == ["dvc", "exp", "ls"]:
            return subprocess.CompletedProcess(cmd, 0, stdout="e2fcedf:\n\tabc [fedavg-b0.01-s0]\n")
        return exp_run(cmd, *args, **kwargs)

    monkeypatch.setattr(sweep.subprocess, "run", run)
    sweep.main(["headline", "--cells", "fedavg-b0.01", "regl-b0.01", "--seeds", "0", "1", "--export", str(path)])
    merged = json.loads(path.read_text())
    runs = {e["name"]: e["revs"][0]["data"]["metrics"]["m"] for c in merged for e in c["experiments"] or []}
    assert runs == {"regl-b0.01-s0": 0.5, "fedavg-b0.01-s0": 0.7, "regl-one-class-m50-s0": 0.5}
    assert [c["rev"] for c in merged] == ["workspace", "e2fcedf", "67b5637"]
    # the committed runs were not run again
    assert sorted(calls) == ["fedavg-b0.01-s1", "regl-b0.01-s1"]


def test_a_failed_run_in_the_export_is_run_again(tmp_path):
    committed = [_export("e2fcedf", "regl-b0.01-s0", "scaffold-b0.01-e2-s0")]
    committed[0]["experiments"][1]["executor"] = {"state": "failed"}
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(committed))
    assert sweep.exported_names(path) == {"regl-b0.01-s0"}
