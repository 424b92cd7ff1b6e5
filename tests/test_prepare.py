"""Sources, the prepare cuts, and the Parquet shard format."""

import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from regl.core.errors import ReglError
from regl.data.prepare import PrepareParams, prepare
from regl.data.shards import Shard, read_shard, write_shard
from regl.data.sources import FASHION_MNIST_CLASSES, load_source


def prepared(data, params, folder):
    """Run prepare into ``folder`` and read its four shards back."""
    prepare(data, params, folder)
    return SimpleNamespace(**{n: read_shard(folder / f"{n}.parquet") for n in ("train", "val", "test", "public")})


def test_fashion_mnist_cuts_are_disjoint_stratified_and_named(fake_fmnist, tmp_path):
    data = load_source("fashion-mnist", str(fake_fmnist))
    out = prepared(data, PrepareParams(public_fraction=0.2, max_train=500, max_test=100,
                                                  val_size=200), tmp_path / "prepared")
    assert out.train.class_names == FASHION_MNIST_CLASSES
    train_ids, public_ids, val_ids = (set(c.columns["id"]) for c in (out.train, out.public, out.val))
    assert not train_ids & public_ids and not val_ids & (train_ids | public_ids)
    assert len(out.public) == 200 and len(out.train) == 500 and len(out.test) == 100 and len(out.val) == 200
    assert np.array_equal(out.public.class_counts(), [20] * 10)  # stratified
    assert np.array_equal(out.train.class_counts(), [50] * 10)
    assert np.array_equal(out.val.class_counts(), [20] * 10)
    assert all(i.startswith("fashion-mnist/train/") for i in out.val.columns["id"])
    assert all(i.startswith("fashion-mnist/test/") for i in out.test.columns["id"])
    pixels = out.train.pixels()
    assert pixels.shape == (500, 32, 32, 1) and pixels.dtype == np.uint8


def test_without_a_cap_every_training_image_is_in_train_val_or_public(fake_fmnist, tmp_path):
    out = prepared(load_source("fashion-mnist", str(fake_fmnist)), PrepareParams(public_fraction=0.1, val_size=100),
                   tmp_path / "prepared")
    ids = out.train.columns["id"] + out.val.columns["id"] + out.public.columns["id"]
    assert sorted(ids) == sorted(f"fashion-mnist/train/{i}" for i in range(1000))
    assert len(out.val) == 100 and np.array_equal(out.val.class_counts(), [10] * 10)


@pytest.mark.parametrize("max_train", [500, None])
def test_a_validation_split_leaves_the_clients_draw_as_it_is_where_the_cap_leaves_room(fake_fmnist, tmp_path,
                                                                                       max_train):
    # with a cap, the clients get the same images with or without a validation split (a validation split
    # changes no result made before it); without one there is no room beyond the cap: the pool gives it up
    data = load_source("fashion-mnist", str(fake_fmnist))
    without = prepared(data, PrepareParams(max_train=max_train, val_size=0), tmp_path / "without")
    with_val = prepared(data, PrepareParams(max_train=max_train, val_size=100), tmp_path / "with")
    assert len(without.val) == 0 and len(with_val.val) == 100
    same = with_val.train.columns["id"] == without.train.columns["id"]
    assert same if max_train else (not same and len(with_val.train) == len(without.train) - 100)
    assert (tmp_path / "without/train.parquet").read_bytes() == (tmp_path / "with/train.parquet").read_bytes() \
        or not max_train


def test_a_validation_split_larger_than_the_pool_is_one_error_naming_the_key(fake_fmnist, tmp_path):
    with pytest.raises(ReglError, match="prepare.val_size = 900: the training pool holds only 900 images"):
        prepare(load_source("fashion-mnist", str(fake_fmnist)), PrepareParams(max_train=None, val_size=900),
                tmp_path / "prepared")


def test_missing_fashion_mnist_folder_says_how_to_get_it(tmp_path):
    with pytest.raises(ReglError, match="apt-get install dataset-fashion-mnist.*prepare.fashion_mnist_dir"):
        load_source("fashion-mnist", str(tmp_path / "nowhere"))


def test_unknown_source():
    with pytest.raises(ReglError, match="prepare.source = 'mnist-fancy'.*imagefolder:<path>"):
        load_source("mnist-fancy", "")


def make_imagefolder(root, per_class=6, size=(40, 30)):
    gen = np.random.default_rng(0)
    for name in ("cat", "dog", "fox"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(gen.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(root / name / f"{i}.png")


def test_imagefolder_gets_a_stratified_test_split(tmp_path):
    make_imagefolder(tmp_path / "pets", per_class=10)
    data = load_source(f"imagefolder:{tmp_path / 'pets'}", "")
    assert data.class_names == ["cat", "dog", "fox"] and data.test is None
    out = prepared(data, PrepareParams(image_size=16, test_fraction=0.2, public_fraction=0.0, val_size=0), tmp_path / "prepared")
    assert np.array_equal(out.test.class_counts(), [2, 2, 2])
    assert len(out.train) == 24 and len(out.public) == 0
    assert out.train.pixels().shape[1:] == (16, 16, 3)
    assert not set(out.train.columns["id"]) & set(out.test.columns["id"])


def test_imagefolder_unreadable_image_is_named(tmp_path):
    make_imagefolder(tmp_path / "pets")
    (tmp_path / "pets" / "dog" / "broken.png").write_bytes(b"not a png at all")
    data = load_source(f"imagefolder:{tmp_path / 'pets'}", "")
    with pytest.raises(ReglError, match=r"dog/broken\.png: unreadable image"):
        prepared(data, PrepareParams(image_size=16, public_fraction=0.0, val_size=0), tmp_path / "prepared")


def test_parquet_source_reads_our_shards_and_plain_files(tmp_path, fake_fmnist):
    out = prepared(load_source("fashion-mnist", str(fake_fmnist)), PrepareParams(max_train=50, max_test=20, val_size=50),
                   tmp_path / "prepared")
    write_shard(tmp_path / "train.parquet", out.train)
    write_shard(tmp_path / "test.parquet", out.test)
    data = load_source(f"parquet:{tmp_path}", "")
    assert data.class_names == FASHION_MNIST_CLASSES and len(data.train) == 50 and len(data.test) == 20

    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, "PNG")
    pq.write_table(pa.table({"image": [buf.getvalue()] * 4, "label": ["red", "blue", "red", "blue"]}),
                   tmp_path / "plain.parquet")
    plain = load_source(f"parquet:{tmp_path / 'plain.parquet'}", "")
    assert plain.class_names == ["blue", "red"] and list(plain.train.labels) == [1, 0, 1, 0]


def test_shard_round_trip_is_byte_stable_and_readable_by_datasets(tmp_path, fake_fmnist):
    out = prepared(load_source("fashion-mnist", str(fake_fmnist)), PrepareParams(max_train=40, max_test=10, val_size=10),
                   tmp_path / "prepared")
    write_shard(tmp_path / "a.parquet", out.train)
    write_shard(tmp_path / "b.parquet", read_shard(tmp_path / "a.parquet"))
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()

    import datasets

    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "a.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert ds.features["label"].names == FASHION_MNIST_CLASSES
    assert isinstance(ds[0]["image"], Image.Image) and ds[0]["image"].size == (32, 32)
    assert ds["label"][:5] == list(out.train.labels[:5])


def test_shard_rejects_mismatched_columns():
    with pytest.raises(ValueError):
        Shard(images=[b"x"], labels=[0, 1], class_names=["a", "b"])


@pytest.mark.parametrize("cuts", [[], [1], [3, 4, 10], list(range(1, 23))])
def test_shard_written_in_pieces_is_the_same_bytes_and_read_back_in_pieces(tmp_path, monkeypatch, cuts):
    """ShardWriter closes a row group at ROW_GROUP_SIZE rows or ROW_GROUP_BYTES of images, whichever comes
    first, however the rows are handed to it; iter_rows reads chosen rows back a row group at a time."""
    import pyarrow.parquet as pq

    from regl.data import shards

    gen = np.random.default_rng(0)
    images = [gen.bytes(int(n)) for n in gen.integers(100, 400, size=23)]
    shard = Shard(images, np.arange(23) % 3, ["a", "b", "c"], columns={"id": [f"x/{i}" for i in range(23)]},
                  meta={"split": "train"})
    monkeypatch.setattr(shards, "ROW_GROUP_SIZE", 5)
    monkeypatch.setattr(shards, "ROW_GROUP_BYTES", 700)
    write_shard(tmp_path / "whole.parquet", shard)
    bounds = [0, *cuts, 23]
    shards.write_pieces(tmp_path / "pieces.parquet", shard.class_names, shard.meta,
                        (shard.take(np.arange(a, b)) for a, b in zip(bounds, bounds[1:])))
    assert (tmp_path / "pieces.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()

    meta = pq.ParquetFile(tmp_path / "whole.parquet").metadata
    sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    start = 0
    for n in sizes:
        group = [len(b) for b in images[start : start + n]]
        assert n <= 5 and (n == 5 or sum(group) >= 700 or start + n == 23) and sum(group[:-1]) < 700
        start += n
    assert len(sizes) > 5

    wanted = np.array([0, 4, 5, 6, 17, 22])
    pieces = list(shards.iter_rows(tmp_path / "whole.parquet", wanted))
    assert len(pieces) > 1
    assert [b for p in pieces for b in p.images] == [images[i] for i in wanted]
    assert [r for p in pieces for r in p.rows] == wanted.tolist()
    assert [i for p in pieces for i in p.columns["id"]] == [f"x/{i}" for i in wanted]
