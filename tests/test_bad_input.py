"""Every input a user can get wrong ends in one clear line (README: "Bad input").

Each case runs the stage that meets it, as a user would, and asserts the contract: exit code 2, exactly one
``error:`` line naming the key or file (and row or image) and what would be valid, no traceback, and the
outputs of the earlier run left exactly as they were.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import load_stage, make_pipeline, set_params, stage
from typer.testing import CliRunner

from regl.core.errors import ReglError
from regl.data.shards import read_class_names, read_shard, write_shard

TINY = {"train.rounds": 2, "prepare.image_size": 16, "train.synthetic": False}
OUTPUTS = ["data", "models", "metrics", "plots"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fake_fmnist) -> Path:
    """prepare, partition and federated_train run once (tiny settings); each test works on a copy."""
    repo = make_pipeline(tmp_path_factory.mktemp("bad_input") / "repo", fake_fmnist, **TINY)
    for name in ("prepare", "partition", "federated_train"):
        stage(name, repo)
    return repo


@pytest.fixture
def repo(trained, tmp_path, monkeypatch) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(trained, copy, symlinks=True)
    monkeypatch.chdir(copy)
    return copy


def snapshot(repo: Path) -> dict[str, str]:
    """sha256 of every output file, by path."""
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
            for d in OUTPUTS for p in sorted((repo / d).rglob("*")) if p.is_file()}


def fails_cleanly(repo: Path, stage_name: str, *expected: str, args: tuple[str, ...] = (),
                  before: dict[str, str] | None = None) -> str:
    """Run ``stage_name`` in ``repo`` (the current folder); assert the contract, return the error line."""
    before = snapshot(repo) if before is None else before
    result = CliRunner().invoke(load_stage(stage_name), list(args))
    assert isinstance(result.exception, SystemExit), f"not a clean exit: {result.exception!r}\n{result.output}"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for text in expected:
        assert text in errors[0], errors[0]
    assert snapshot(repo) == before, "the stage changed outputs of the earlier run"
    assert not list(repo.rglob(".*.tmp")), "a temporary file was left behind"
    return errors[0]


def write_params(repo: Path, text: str | bytes) -> None:
    """Replace the params of ``repo`` by ``text`` after its real params (so every other key stays valid)."""
    path = repo / "params.yaml"
    data = path.read_bytes() + (text.encode() if isinstance(text, str) else text)
    path.write_bytes(data)


def set_raw(repo: Path, key: str, yaml_value: str) -> None:
    """Set a top-level key (or a whole section) to a YAML value exactly as written."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params.pop(key, None)
    path.write_text(yaml.safe_dump(params, sort_keys=False) + f"{key}: {yaml_value}\n")


# --- params.yaml --------------------------------------------------------------------------------------------


def test_params_not_utf8(repo):
    write_params(repo, "# caf\xe9\n".encode("latin-1"))
    fails_cleanly(repo, "partition", "params.yaml: not UTF-8 text", "line", "save it as UTF-8")


@pytest.mark.parametrize("value", ["0", "false", '""', "[]"])
def test_falsy_section_is_not_taken_for_the_defaults(repo, value):
    set_raw(repo, "partition", value)
    fails_cleanly(repo, "partition", "params.yaml: partition = ", "must be a mapping of keys")


def test_misspelled_section(repo):
    write_params(repo, "partiton:\n  seed: 3\n")
    fails_cleanly(repo, "partition", "unknown section 'partiton'", "did you mean partition", "valid top-level keys")


@pytest.mark.parametrize("value,shown", [("[true, false]", "clients[0] = True"), ('["0", "1"]', "clients[0] = '0'"),
                                         ("[1.0]", "clients[0] = 1.0")])
def test_clients_are_not_coerced(repo, value, shown):
    set_raw(repo, "clients", value)
    fails_cleanly(repo, "partition", shown, "must be a valid integer")


def test_beta_infinite(repo):
    set_raw(repo, "beta", ".inf")
    fails_cleanly(repo, "partition", "beta = inf", "must be a finite number")


def test_clients_value_is_shown_not_missing(repo):
    set_raw(repo, "clients", "[a, b]")
    message = fails_cleanly(repo, "partition", "clients[0] = 'a'", "must be a valid integer")
    assert "<missing>" not in message


def test_min_size_zero_refused_with_how_to_avoid(repo):
    set_params(repo, **{"partition.min_size": 0})
    fails_cleanly(repo, "partition", "partition.min_size = 0: must be >= 1", "raise beta, use fewer clients")


# --- sources (prepare) --------------------------------------------------------------------------------------


def parquet_source(path: Path, images: pa.Array, labels: pa.Array) -> Path:
    pq.write_table(pa.table({"image": images, "label": labels}), path)
    return path


def png(value: int = 0, size: int = 8) -> bytes:
    from regl.data.images import encode_png

    return encode_png(np.full((size, size), value, np.uint8))


def use_source(repo: Path, source: str) -> None:
    set_params(repo, **{"prepare.source": source, "prepare.public_fraction": 0.0})


IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def test_empty_parquet_source(repo, tmp_path):
    src = parquet_source(tmp_path / "empty.parquet", pa.array([], IMAGE), pa.array([], pa.int64()))
    use_source(repo, f"parquet:{src}")
    fails_cleanly(repo, "prepare", "empty.parquet: holds no rows")


def test_empty_hf_source(repo, monkeypatch):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    empty = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"image": [], "label": []}, features=features)})
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: empty)
    use_source(repo, "hf:someone/empty")
    fails_cleanly(repo, "prepare", "prepare.source = hf:someone/empty", "'train' split holds no rows")


def test_parquet_image_struct_without_bytes(repo, tmp_path):
    images = pa.array([{"path": f"{i}.png"} for i in range(4)], pa.struct([("path", pa.string())]))
    src = parquet_source(tmp_path / "paths.parquet", images, pa.array([0, 1, 0, 1], pa.int64()))
    use_source(repo, f"parquet:{src}")
    fails_cleanly(repo, "prepare", "paths.parquet: column 'image' is a struct without 'bytes'")


def test_parquet_null_label(repo, tmp_path):
    images = pa.array([{"bytes": png(i), "path": None} for i in range(4)], IMAGE)
    src = parquet_source(tmp_path / "nulls.parquet", images, pa.array([0, 1, None, 1], pa.int64()))
    use_source(repo, f"parquet:{src}")
    fails_cleanly(repo, "prepare", "nulls.parquet: row 2: label is null")


def test_parquet_float_labels_are_not_truncated(repo, tmp_path):
    images = pa.array([{"bytes": png(i), "path": None} for i in range(4)], IMAGE)
    src = parquet_source(tmp_path / "floats.parquet", images, pa.array([0.0, 1.5, 0.0, 1.0], pa.float64()))
    use_source(repo, f"parquet:{src}")
    fails_cleanly(repo, "prepare", "floats.parquet: column 'label' holds double", "integer class indices")


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny file whose header claims ``width`` x ``height`` pixels: Pillow refuses it as a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_decompression_bomb_in_image_folder(repo, tmp_path):
    folder = tmp_path / "photos"
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        for i in range(5):
            (folder / name / f"{i}.png").write_bytes(png(i * 40))
    (folder / "a" / "0.png").write_bytes(bomb_png())
    use_source(repo, f"imagefolder:{folder}")
    fails_cleanly(repo, "prepare", "a/0.png: unreadable image: refused as a possible decompression bomb",
                  "pixels")


# --- shards read by later stages ----------------------------------------------------------------------------


def corrupt_row(path: Path, row: int, data: bytes = b"\x89PNG not really") -> None:
    shard = read_shard(path)
    shard.images[row] = data
    write_shard(path, shard)


def test_undecodable_image_in_a_client_shard(repo):
    corrupt_row(repo / "data/clients/client_1.parquet", 3)
    fails_cleanly(repo, "federated_train", "data/clients/client_1.parquet: row 3 (id ", "unreadable image")


def test_undecodable_image_in_a_synthetic_shard(repo):
    (repo / "data/synthetic").mkdir()
    for c in (0, 1, 2):
        shutil.copy(repo / f"data/clients/client_{c}.parquet", repo / f"data/synthetic/client_{c}.parquet")
    corrupt_row(repo / "data/synthetic/client_2.parquet", 5)
    set_params(repo, **{"train.synthetic": True})
    fails_cleanly(repo, "federated_train", "data/synthetic/client_2.parquet: row 5", "unreadable image")


def test_undecodable_image_in_the_test_shard(repo):
    corrupt_row(repo / "data/prepared/test.parquet", 7)
    fails_cleanly(repo, "federated_train", "data/prepared/test.parquet: row 7", "unreadable image")


def test_empty_client_shard(repo):
    # a hand-made shard with no rows: the client would train on nothing and its weight would be 0 / 0
    path = repo / "data/clients/client_1.parquet"
    shard = read_shard(path)
    write_shard(path, type(shard)([], shard.labels[:0], shard.class_names, {k: [] for k in shard.columns},
                                  shard.meta))
    fails_cleanly(repo, "federated_train", "data/clients/client_1.parquet: holds no rows",
                  "dvc repro partition")


def rewrite(path: Path, table: pa.Table) -> None:
    pq.write_table(table, path)


@pytest.mark.parametrize("column", ["image", "label"])
def test_shard_without_a_column(repo, column):
    path = repo / "data/prepared/train.parquet"
    table = pq.read_table(path)
    rewrite(path, table.drop_columns([column]).replace_schema_metadata(table.schema.metadata))
    fails_cleanly(repo, "partition", f"data/prepared/train.parquet: no column '{column}'", "a shard needs")


def test_shard_without_class_names(repo):
    path = repo / "data/prepared/train.parquet"
    table = pq.read_table(path)
    rewrite(path, table.replace_schema_metadata({"regl": '{"split": "train"}'}))
    fails_cleanly(repo, "partition", "data/prepared/train.parquet: the 'regl' metadata holds no class names")
    with pytest.raises(ReglError, match="holds no class names"):
        read_class_names(path)  # generator_quality's reader


def test_corrupt_safetensors_model(repo):
    model = repo / "models/global_model.safetensors"
    model.write_bytes(model.read_bytes()[:200])
    set_params(repo, **{"personalize.synthetic": False})
    fails_cleanly(repo, "personalize", "models/global_model.safetensors: not a readable safetensors model",
                  "re-run the stage")


# --- metrics JSON of earlier stages (evaluate) --------------------------------------------------------------


def personal_metrics(clients=(0, 1, 2), after="0.5") -> str:
    per_client = ", ".join(f'"{c}": {{"accuracy_before": 0.25, "accuracy_after": {after}}}' for c in clients)
    return f'{{"epochs": 1, "per_client": {{{per_client}}}}}'


@pytest.mark.parametrize("train_json,personal_json,expected", [
    ('{"algorithm": "fedavg", ', personal_metrics(),
     ("metrics/train.json: not valid JSON", "dvc repro federated_train")),
    ('{"algorithm": "fedavg"}', personal_metrics(), ("metrics/train.json: synthetic missing",)),
    ('{"algorithm": "fedavg", "synthetic": false}', personal_metrics(clients=(0, 1)),
     ("metrics/personalize.json: no result for client(s) [2]", "dvc repro personalize")),
    ('{"algorithm": "fedavg", "synthetic": false}', personal_metrics(after='"high"'),
     ("metrics/personalize.json: per_client.0.accuracy_after = 'high': must be a valid number",)),
])
def test_torn_or_mismatched_metrics_json(repo, train_json, personal_json, expected):
    (repo / "metrics/train.json").write_text(train_json)
    (repo / "metrics/personalize.json").write_text(personal_json)
    fails_cleanly(repo, "evaluate", *expected)
