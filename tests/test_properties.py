"""Property-based tests of the bad-input contract: generated params values, mangled shards, Parquet sources and
model files thrown at the validation and loading code give either a valid result or one ReglError line, never
another exception."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from regl.core.errors import ReglError
from regl.federated.train_params import TrainParams
from regl.generator.lora import FinetuneParams
from regl.generator.pretrain import GeneratorParams
from regl.generator.sample import GenerateParams
from regl.data.images import encode_png
from regl.core.params import TOP_LEVEL_KEYS, load_experiment, load_section
from regl.data.partition import PartitionParams
from regl.evaluation.personalize import PersonalizeParams
from regl.data.prepare import PrepareParams
from regl.evaluation.reference_classifier import ReferenceClassifierParams
from regl.data.shards import Shard, read_class_names, read_shard, to_table, write_shard
from regl.data.sources import load_source

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SECTIONS = {"prepare": PrepareParams, "partition": PartitionParams, "generator": GeneratorParams,
            "finetune": FinetuneParams, "generate": GenerateParams, "reference_classifier": ReferenceClassifierParams,
            "train": TrainParams, "personalize": PersonalizeParams}


def one_line(exc: ReglError) -> None:
    message = str(exc)
    assert message and "\n" not in message, repr(message)


def valid_or_one_line(fn, *args) -> object:
    """``fn(*args)``: its result, or None after checking that it failed with one ReglError line."""
    try:
        return fn(*args)
    except ReglError as exc:
        one_line(exc)
        return None


# --- params -------------------------------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(-10**6, 10**20) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)


def field_names(model) -> list[str]:
    return list(model.model_fields)


@st.composite
def params_docs(draw) -> dict:
    """A params.yaml: real section and key names (sometimes misspelled) with generated values."""
    doc: dict = {}
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.sampled_from([*TOP_LEVEL_KEYS, "trian", "Partition"]))
        model = SECTIONS.get(key)
        if model is None or draw(st.booleans()):
            doc[key] = draw(values)
        else:
            doc[key] = {draw(st.sampled_from(field_names(model) + ["sede"])): draw(values)
                        for _ in range(draw(st.integers(0, 3)))}
    return doc


def load_everything(path: Path) -> tuple:
    return load_experiment(path), [load_section(path, name, model) for name, model in SECTIONS.items()]


def finite(value) -> bool:
    if isinstance(value, float):
        return bool(np.isfinite(value))
    if isinstance(value, dict):
        return all(finite(v) for v in value.values())
    return all(finite(v) for v in value) if isinstance(value, list) else True


@SETTINGS
@given(doc=params_docs())
def test_generated_params_are_valid_or_one_line(doc):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        try:
            path.write_text(yaml.safe_dump(doc, allow_unicode=False))
        except yaml.YAMLError:
            return
        loaded = valid_or_one_line(load_everything, path)
    if loaded is not None:  # accepted: then nothing was coerced, misspelled or non-finite
        exp, sections = loaded
        assert set(doc) <= set(TOP_LEVEL_KEYS)
        assert all(doc[k] is None or isinstance(doc[k], dict) for k in SECTIONS if k in doc)
        assert all(type(c) is int for c in exp.clients) and doc.get("clients", exp.clients) == exp.clients
        assert finite(exp.model_dump()) and all(finite(s.model_dump()) for s in sections)


@SETTINGS
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_arbitrary_params_bytes_are_valid_or_one_line(raw):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_bytes(raw)
        valid_or_one_line(load_everything, path)


# --- shards -------------------------------------------------------------------------------------------------


def good_shard(n: int = 6) -> Shard:
    gen = np.random.default_rng(0)
    images = [encode_png(gen.integers(0, 255, (8, 8), dtype=np.uint8)) for _ in range(n)]
    return Shard(images, np.arange(n) % 3, ["a", "b", "c"], {"id": [f"x/{i}" for i in range(n)]}, {"split": "t"})


GOOD = to_table(good_shard())
GOOD_BYTES = io.BytesIO()
pq.write_table(GOOD, GOOD_BYTES)
GOOD_BYTES = GOOD_BYTES.getvalue()

column_values = st.sampled_from([
    pa.array([1.5, 2.0, None, 0.0, 1.0, 2.0]),
    pa.array([None] * 6, pa.int64()),
    pa.array(["a", "b", "c", "a", "b", "c"]),
    pa.array([0, 1, 2, 3, -1, 99]),
    pa.array([b"\x89PNG", b"", None, b"x", b"y", b"z"]),
    pa.array([{"path": "p"}] * 6, pa.struct([("path", pa.string())])),
    pa.array([{"bytes": None, "path": None}] * 6, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
    pa.array([True] * 6),
])
metadata = st.sampled_from([None, {}, {"regl": "{"}, {"regl": "[]"}, {"regl": '{"class_names": []}'},
                            {"regl": '{"class_names": [1, 2]}'}, {"regl": '{"class_names": ["a"]}'},
                            {"regl": json.dumps({"class_names": ["a", "b", "c"]})}, {"huggingface": "{}"}])


@st.composite
def mangled_tables(draw) -> pa.Table:
    """The good shard's table with columns replaced or dropped, images garbled, and its metadata swapped."""
    table = GOOD
    for name in draw(st.lists(st.sampled_from(["image", "label", "id"]), max_size=2, unique=True)):
        if draw(st.booleans()):
            table = table.drop_columns([name])
        else:
            table = table.set_column(table.schema.get_field_index(name), name, draw(column_values))
    if "image" in table.column_names and pa.types.is_struct(table.schema.field("image").type) and draw(st.booleans()):
        blobs = table.column("image").combine_chunks().field("bytes").to_pylist() if \
            table.schema.field("image").type.get_field_index("bytes") >= 0 else None
        if blobs and blobs[0] is not None:
            row = draw(st.integers(0, len(blobs) - 1))
            cut = draw(st.integers(0, len(blobs[row] or b"")))
            blobs[row] = (blobs[row] or b"")[:cut] + draw(st.binary(max_size=8))
            image = pa.array([{"bytes": b, "path": None} for b in blobs], GOOD.schema.field("image").type)
            table = table.set_column(table.schema.get_field_index("image"), "image", image)
    if draw(st.booleans()):
        table = table.replace_schema_metadata(draw(metadata))
    return table


def read_and_decode(path: Path) -> None:
    shard = read_shard(path)
    shard.pixels()
    shard.pixels(3)
    read_class_names(path)


@SETTINGS
@given(table=mangled_tables())
def test_mangled_shards_are_valid_or_one_line(table):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "client_0.parquet"
        pq.write_table(table, path)
        valid_or_one_line(read_and_decode, path)


@SETTINGS
@given(cut=st.integers(0, len(GOOD_BYTES)), noise=st.binary(max_size=16), at=st.integers(0, len(GOOD_BYTES)))
def test_torn_shard_files_are_valid_or_one_line(cut, noise, at):
    raw = bytearray(GOOD_BYTES[:cut])
    raw[at:at + len(noise)] = noise
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "client_0.parquet"
        path.write_bytes(bytes(raw))
        valid_or_one_line(read_and_decode, path)


def load_parquet_source(path: Path) -> None:
    data = load_source(f"parquet:{path}", "")
    for i in range(len(data.train)):
        data.train.load(i)


@SETTINGS
@given(table=mangled_tables())
def test_mangled_parquet_sources_are_valid_or_one_line(table):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "source.parquet"
        pq.write_table(table, path)
        valid_or_one_line(load_parquet_source, path)


# --- models -------------------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(cut=st.integers(0, 4000), noise=st.binary(max_size=16), at=st.integers(0, 4000))
def test_torn_model_files_are_valid_or_one_line(cut, noise, at):
    import torch

    from regl.training.modelio import load_model, save_model
    from regl.training.models import build_model

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        torch.manual_seed(0)
        save_model(path, build_model("cnn", 1, 3, 8), {"name": "cnn", "channels": 1, "num_classes": 3,
                                                         "image_size": 8})
        raw = bytearray(path.read_bytes()[:cut])
        raw[at:at + len(noise)] = noise
        path.write_bytes(bytes(raw))
        valid_or_one_line(load_model, path)


def test_a_valid_shard_stays_valid():
    """The strategies above start from a shard that loads: the properties are not vacuous."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.parquet"
        write_shard(path, good_shard())
        assert read_shard(path).pixels().shape == (6, 8, 8, 1)
