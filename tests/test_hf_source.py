"""The `hf:` source offline, on datasets saved in Hugging Face's own formats the way a user's cached CIFAR-10 or
EuroSAT arrives (a `save_to_disk` folder, a folder of Parquet files as the hub holds them): colour images through
prepare -> partition -> federated_train with resnet18."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from conftest import load_stage
from typer.testing import CliRunner

from regl.core.errors import ReglError
from regl.data.shards import read_shard
from regl.data.sources import load_source

CLASSES = ["airplane", "frog", "truck"]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path_factory):
    """No network, and the datasets cache in a scratch folder (the library reads its config at import)."""
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_cache"))


def hf_dataset(per_class: int = 12, test_per_class: int = 4):
    """A DatasetDict with an Image and a ClassLabel feature: colour 36x40 images (one grey), a colour cue per class."""
    import datasets
    from PIL import Image

    gen = np.random.default_rng(0)

    def split(n: int):
        labels = np.tile(np.arange(len(CLASSES)), n)
        images = []
        for i, y in enumerate(labels):
            pixels = gen.integers(0, 80, size=(36, 40, 3), dtype=np.uint8)
            pixels[:, :, y] += 150
            image = Image.fromarray(pixels)
            images.append(image.convert("L") if i == 5 else image)  # a grey one among the colour ones
        return datasets.Dataset.from_dict(
            {"img": images, "label": labels.tolist()},
            features=datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)}))

    return datasets.DatasetDict({"train": split(per_class), "test": split(test_per_class)})


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The same dataset as a save_to_disk folder and as a folder of Parquet shards named like the hub's."""
    root = tmp_path_factory.mktemp("hf")
    ds = hf_dataset()
    ds.save_to_disk(str(root / "disk"))
    for name, part in ds.items():
        (root / "hub" / "plain_text").mkdir(parents=True, exist_ok=True)
        part.to_parquet(str(root / "hub" / "plain_text" / f"{name}-00000-of-00001.parquet"))
    return root


@pytest.mark.parametrize("form", ["disk", "hub"])
def test_hf_source_reads_local_saves_offline(saved, form):
    data = load_source(f"hf:{saved / form}", "")
    assert data.class_names == CLASSES
    assert len(data.train) == 36 and data.test is not None and len(data.test) == 12
    assert list(data.train.labels[:3]) == [0, 1, 2]
    assert data.train.load(0).mode == "RGB" and data.train.load(5).mode == "L"


def test_an_unreadable_image_inside_the_datasets_loader_is_one_error_naming_its_row(tmp_path):
    # datasets decodes an Image feature on access: a corrupt one raised PIL's error from inside the library
    import datasets

    ds = hf_dataset(per_class=2, test_per_class=1)
    rows = ds["train"].cast_column("img", datasets.Image(decode=False)).to_dict()
    rows["img"][4] = {"bytes": b"\x89PNG not really", "path": None}
    train = datasets.Dataset.from_dict(rows, features=ds["train"].cast_column("img", datasets.Image(decode=False)).features)
    datasets.DatasetDict({"train": train.cast_column("img", datasets.Image())}).save_to_disk(str(tmp_path / "bad"))
    data = load_source(f"hf:{tmp_path / 'bad'}", "")
    assert data.train.load(3).size == (40, 36)
    with pytest.raises(ReglError, match=r"^prepare.source = hf:.*bad: 'train' row 4: unreadable image \("):
        data.train.load(4)


def test_hf_colour_images_through_prepare_partition_and_resnet18(saved, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "clients": [0, 1, 2], "beta": 1.0,
        "prepare": {"source": f"hf:{saved / 'disk'}", "image_size": 32, "public_fraction": 0.1,
                    "val_size": 2},
        "partition": {"scheme": "iid", "min_size": 2, "local_test_size": 6},
        "train": {"model": "resnet18", "synthetic": False, "rounds": 1, "local_epochs": 1, "batch_size": 8,
                  "device": "cpu"},
    }))
    runner = CliRunner()

    def run(name: str, *args: str) -> None:
        result = runner.invoke(load_stage(name), ["--params", str(params), *args])
        assert result.exit_code == 0, result.output

    run("prepare", "--out", str(tmp_path / "prepared"))
    train = read_shard(tmp_path / "prepared/train.parquet")
    held = sum(len(read_shard(tmp_path / f"prepared/{cut}.parquet")) for cut in ("public", "val"))
    assert train.class_names == CLASSES and len(train) + held == 36
    pixels = train.pixels()
    assert pixels.shape[1:] == (32, 32, 3)
    dominant = np.argmax(pixels.reshape(len(train), -1, 3).mean(1), axis=1)
    assert (dominant == train.labels).sum() >= len(train) - 1  # colour kept (all but the grey one)

    run("partition", "--prepared", str(tmp_path / "prepared"), "--clients-out", str(tmp_path / "clients"),
        "--local-test-out", str(tmp_path / "local_test"), "--metrics", str(tmp_path / "partition.json"),
        "--plot", str(tmp_path / "partition.png"))
    assert sum(len(read_shard(tmp_path / f"clients/client_{c}.parquet")) for c in range(3)) == len(train)

    run("federated_train", "--clients-dir", str(tmp_path / "clients"), "--synthetic-dir", str(tmp_path / "none"),
        "--test-file", str(tmp_path / "prepared/test.parquet"), "--val-file", str(tmp_path / "prepared/val.parquet"),
        "--model-out", str(tmp_path / "model.safetensors"), "--metrics", str(tmp_path / "train.json"),
        "--curve-dir", str(tmp_path / "curve"))
    metrics = json.loads((tmp_path / "train.json").read_text())
    assert (tmp_path / "model.safetensors").stat().st_size > 1_000_000  # a resnet18
    assert metrics["rounds"] == 1 and 0.0 <= metrics["accuracy"] <= 1.0 and metrics["val_accuracy"] is not None, metrics
