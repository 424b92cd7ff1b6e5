"""generate.oracle: the ablation's ceiling, each client's synthetic shard filled with public-pool images."""

import pytest
from conftest import set_params, stage

from regl.core.errors import ReglError
from regl.generator.oracle import write_oracle
from regl.generator.sample import GenerateParams
from regl.data.shards import read_shard


def test_oracle_shard_holds_public_images_of_every_class_per_client(pipeline, tmp_path):
    stage("prepare", pipeline)
    public_file = pipeline / "data/prepared/public.parquet"
    public = read_shard(public_file)
    pool = {img: label for img, label in zip(public.images, public.labels)}
    g = GenerateParams(images_per_class=3, oracle=True)
    shards = [write_oracle(public_file, tmp_path / f"client_{c}.parquet", g, c) for c in (0, 1)]
    k = len(public.class_names)
    for c, shard in enumerate(shards):
        assert read_shard(tmp_path / f"client_{c}.parquet").images == shard.images
        assert shard.class_counts().tolist() == [3] * k
        assert list(shard.labels) == sorted(shard.labels)  # class by class, as a generator's shard
        assert all(pool[img] == label for img, label in zip(shard.images, shard.labels))  # real, right label
        assert len(set(shard.images)) == len(shard)  # without replacement
    assert shards[0].images != shards[1].images  # drawn per client
    assert write_oracle(public_file, tmp_path / "again.parquet", g, 0).images == shards[0].images
    assert (tmp_path / "again.parquet").read_bytes() == (tmp_path / "client_0.parquet").read_bytes()

    with pytest.raises(ReglError) as info:  # more public images than the pool holds
        write_oracle(public_file, tmp_path / "big.parquet", GenerateParams(images_per_class=10_000), 0)
    assert "generate.images_per_class" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "big.parquet").exists()

    # the stage: both shards and the grid, no generator involved (there is none in this repository)
    set_params(pipeline, **{"generate.oracle": True, "generate.images_per_class": 3})
    stage("generate", pipeline, "--client", "0")
    assert read_shard(pipeline / "data/synthetic/client_0.parquet").images == shards[0].images
    assert read_shard(pipeline / "data/vanilla/client_0.parquet").images == shards[0].images
    assert (pipeline / "plots/generator/client_0.png").is_file()
