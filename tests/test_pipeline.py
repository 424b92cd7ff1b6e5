"""The prepare + partition stages as a user runs them: through DVC and directly."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from conftest import dvc, make_split, run, set_params, stage, stage_here

OUTPUT_DIRS = ["data/prepared", "data/clients", "data/local_test"]
OUTPUT_FILES = ["metrics/partition.json", "plots/label_distribution.png"]


def digest(repo: Path) -> dict[str, str]:
    """sha256 of every output file, by path."""
    files = [p for d in OUTPUT_DIRS for p in sorted((repo / d).glob("*"))] + [repo / f for f in OUTPUT_FILES]
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def run_stages(repo: Path) -> None:
    stage("prepare", repo)
    stage("partition", repo)


def test_repro_then_up_to_date_then_beta_reruns_partition_only(pipeline):
    # partition as target: the generator stages downstream have tests of their own (test_generator.py)
    out = dvc("repro", "partition", cwd=pipeline).stdout
    assert "Running stage 'prepare'" in out and "Running stage 'partition'" in out
    assert len(list((pipeline / "data/clients").glob("client_*.parquet"))) == 3
    assert len(list((pipeline / "data/local_test").glob("client_*.parquet"))) == 3
    assert "Data and pipelines are up to date" in dvc("repro", "partition", cwd=pipeline).stdout

    set_params(pipeline, beta=0.5)
    status = dvc("status", "--json", "partition", cwd=pipeline).stdout
    assert set(json.loads(status)) == {"partition"}
    out = dvc("repro", "partition", cwd=pipeline).stdout
    assert "Running stage 'partition'" in out and "Running stage 'prepare'" not in out


def test_same_params_same_bytes(pipeline):
    run_stages(pipeline)
    first = digest(pipeline)
    for d in OUTPUT_DIRS:
        shutil.rmtree(pipeline / d)
    for f in OUTPUT_FILES:
        (pipeline / f).unlink()
    run_stages(pipeline)
    assert digest(pipeline) == first


def test_partition_metrics_and_coverage(pipeline):
    run_stages(pipeline)
    metrics = json.loads((pipeline / "metrics/partition.json").read_text())
    assert metrics["num_clients"] == 3 and metrics["size_min"] >= 10
    assert sum(c["size"] for c in metrics["clients"].values()) == 900  # 1000 train images less 10 % public
    assert set(metrics["clients"]["0"]["class_counts"]) == {
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"}

    from regl.data.shards import read_shard

    ids = [i for p in sorted((pipeline / "data/clients").glob("*.parquet")) for i in read_shard(p).columns["id"]]
    public = read_shard(pipeline / "data/prepared/public.parquet").columns["id"]
    assert len(ids) == len(set(ids)) == 900
    assert not set(ids) & set(public)
    assert len(set(ids) | set(public)) == 1000  # every training image: one client or the public pool


BAD_PARAMS = [
    ({"beta": 0}, "beta = 0: must be > 0"),
    ({"beta": -0.3}, "beta = -0.3: must be > 0"),
    ({"clients": []}, "clients"),
    ({"clients": [0, 1, 1]}, "client ids must be distinct"),
    ({"clients": list(range(50)), "partition.min_size": 30}, "min_size"),
]


@pytest.fixture(scope="module")
def partitioned(tmp_path_factory, fake_fmnist) -> Path:
    """prepare and partition run once for the bad-params tests: a refused run writes nothing."""
    return make_split(tmp_path_factory.mktemp("refused") / "repo", fake_fmnist)


@pytest.mark.parametrize("changes,message", BAD_PARAMS)
def test_bad_partition_params_leave_earlier_outputs_untouched(partitioned, changes, message):
    pipeline = partitioned
    params = (pipeline / "params.yaml").read_text()
    before = digest(pipeline)
    set_params(pipeline, **changes)
    try:
        proc = stage_here("partition", pipeline)
    finally:
        (pipeline / "params.yaml").write_text(params)
    assert proc.returncode == 2
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and message in error_lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert digest(pipeline) == before
    leftovers = [p for p in pipeline.rglob(".*.tmp")]
    assert not leftovers


def test_failure_under_dvc_leaves_nothing_half_written_and_checkout_restores(pipeline):
    dvc("repro", "partition", cwd=pipeline)
    run(["git", "add", "-A"], pipeline)
    run(["git", "commit", "-qm", "results"], pipeline)  # metrics and plots are git-tracked (cache: false)
    before = digest(pipeline)
    set_params(pipeline, beta=-1)
    proc = dvc("repro", "partition", cwd=pipeline, check=False)
    assert proc.returncode != 0 and "beta = -1: must be > 0" in proc.stdout + proc.stderr
    assert not list((pipeline / "data").rglob("client_*.parquet"))  # DVC removed them; we wrote none
    run(["git", "checkout", "--", "."], pipeline)
    dvc("checkout", "partition", cwd=pipeline)
    assert digest(pipeline) == before


def test_missing_fashion_mnist_folder(pipeline, tmp_path):
    set_params(pipeline, **{"prepare.fashion_mnist_dir": str(tmp_path / "missing")})
    proc = stage("prepare", pipeline, check=False)
    assert proc.returncode == 2 and "apt-get install dataset-fashion-mnist" in proc.stderr
    assert not (pipeline / "data/prepared").exists()


def test_unknown_source_and_unreadable_image(pipeline, tmp_path):
    set_params(pipeline, **{"prepare.source": "cifar-please"})
    proc = stage("prepare", pipeline, check=False)
    assert proc.returncode == 2 and "prepare.source = 'cifar-please'" in proc.stderr

    folder = tmp_path / "photos"
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        from PIL import Image

        for i in range(5):
            Image.new("RGB", (12, 12), (i * 40, 0, 0)).save(folder / name / f"{i}.png")
    (folder / "b" / "3.png").write_bytes(b"\x89PNG garbage")
    set_params(pipeline, **{"prepare.source": f"imagefolder:{folder}", "prepare.public_fraction": 0.0})
    proc = stage("prepare", pipeline, check=False)
    assert proc.returncode == 2 and "b/3.png: unreadable image" in proc.stderr
    assert not (pipeline / "data/prepared").exists()
