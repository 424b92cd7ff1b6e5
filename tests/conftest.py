"""Shared fixtures: tiny data made on the spot, and a scratch copy of the pipeline to run DVC in."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PIPELINE_FILES = ["dvc.yaml", "params.yaml", "stages", "src"]


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as an IDX file, gzipped like the Debian package's."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0))


@pytest.fixture(scope="session")
def fake_fmnist(tmp_path_factory) -> Path:
    """A Fashion-MNIST-shaped IDX folder: 10 classes, 100 train and 30 test images each, a bright bar per class."""
    folder = tmp_path_factory.mktemp("fmnist")
    gen = np.random.default_rng(0)
    for split, per_class in (("train", 100), ("t10k", 30)):
        labels = np.repeat(np.arange(10), per_class)
        gen.shuffle(labels)
        images = gen.integers(0, 60, size=(len(labels), 28, 28))
        for i, y in enumerate(labels):
            images[i, 2 + 2 * y : 4 + 2 * y, :] = 255
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command as a user would, capturing output; ``check`` fails the test with its output shown."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd, check)


def stage(name: str, cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, f"stages/{name}.py", *args], cwd, check)


def stage_here(name: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``stages/<name>.py`` run in this process with ``cwd`` as the working directory, for tests of how a stage
    refuses bad input before any work: a new Python's start-up (≈ 5 s of imports on 2 cores) spared. An exception
    the stage lets escape is in ``stderr`` as a traceback, as a process would print it."""
    import traceback

    from typer.testing import CliRunner

    here = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(load_stage(name), list(args))
    finally:
        os.chdir(here)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess([name, *args], result.exit_code, result.stdout, stderr)


def set_params(repo: Path, **changes) -> None:
    """Set params in ``repo``/params.yaml; keys with dots reach into sections (``partition.seed``)."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        node = params
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


# Generator settings that make every generator stage take seconds (tiny-sd trained for a few steps only).
TINY_GENERATOR = {
    "generator.vae_steps": 2,
    "generator.unet_steps": 2,
    "generator.batch_size": 8,
    "finetune.steps": 2,
    "finetune.batch_size": 4,
    "generate.images_per_class": 2,
    "generate.steps": 2,
    "generate.batch_size": 10,
    "reference_classifier.epochs": 1,
}


def make_pipeline(repo: Path, fake_fmnist: Path, **params) -> Path:
    """A scratch git + DVC repository at ``repo`` holding this pipeline, set to tiny data (1,000
    Fashion-MNIST-shaped training images over three clients), tiny generator settings, two rounds of one local
    epoch, one epoch of personalization, and ``params``."""
    repo.mkdir(parents=True)
    for name in PIPELINE_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, repo / name)
    set_params(repo, **{
        "prepare.fashion_mnist_dir": str(fake_fmnist),
        "prepare.public_fraction": 0.1,
        "prepare.max_train": None,
        "prepare.max_test": None,
        "prepare.val_size": 0,  # no validation split: the 900 training images all go to the clients
        "partition.local_test_size": 20,
        "clients": [0, 1, 2],
        "train.rounds": 2,
        "train.local_epochs": 1,
        "train.batch_size": 32,
        "personalize.epochs": 1,
        **TINY_GENERATOR,
        **params,
    })
    run(["git", "init", "-q"], repo)
    run(["git", "config", "user.email", "test@example.com"], repo)
    run(["git", "config", "user.name", "test"], repo)
    dvc("init", "-q", cwd=repo)
    dvc("config", "core.analytics", "false", cwd=repo)
    (repo / ".gitignore").write_text("__pycache__/\n")
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "pipeline"], repo)
    return repo


def make_split(repo: Path, fake_fmnist: Path, **params) -> Path:
    """make_pipeline's repository with prepare and partition run: the clients' shards, the test and public pools."""
    make_pipeline(repo, fake_fmnist, **params)
    stage("prepare", repo)
    stage("partition", repo)
    return repo


@pytest.fixture
def pipeline(tmp_path, fake_fmnist) -> Path:
    """A scratch git + DVC repository holding this pipeline, set to tiny data."""
    return make_pipeline(tmp_path / "repo", fake_fmnist)


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory, fake_fmnist) -> Path:
    """One scratch pipeline run end to end with `dvc repro` (tiny settings), shared by the tests that only read
    its outputs or its DVC status. A test that changes its params must put them back."""
    repo = make_pipeline(tmp_path_factory.mktemp("reproduced") / "repo", fake_fmnist)
    dvc("repro", cwd=repo)
    return repo


def load_stage(name: str):
    """The Typer app of ``stages/<name>.py``, to run a stage in-process (``CliRunner().invoke(app, args)``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"stage_{name}", REPO / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.app
