"""generate.oracle: the ablation's ceiling, each client's synthetic shard filled with public-pool images."""

import numpy as np

from conftest import set_params, stage
from regl.shards import read_shard


def test_oracle_shard_holds_public_images_of_every_class_per_client(pipeline):
    stage("prepare", pipeline)
    stage("partition", pipeline)
    set_params(pipeline, **{"generate.oracle": True, "generate.images_per_class": 3})
    public = read_shard(pipeline / "data/prepared/public.parquet")
    shards = []
    for client in (0, 1):
        stage("generate", pipeline, "--client", str(client))
        shards.append(read_shard(pipeline / f"data/synthetic/client_{client}.parquet"))
    k = len(public.class_names)
    for shard in shards:
        assert shard.class_counts().tolist() == [3] * k
        assert list(shard.labels) == sorted(shard.labels)  # class by class, as a generator's shard
        pool = {img: label for img, label in zip(public.images, public.labels)}
        assert all(pool[img] == label for img, label in zip(shard.images, shard.labels))  # real, right label
        assert len(set(shard.images)) == len(shard)  # without replacement
    assert shards[0].images != shards[1].images  # drawn per client
    first = (pipeline / "data/synthetic/client_0.parquet").read_bytes()
    stage("generate", pipeline, "--client", "0")
    assert (pipeline / "data/synthetic/client_0.parquet").read_bytes() == first
    assert (pipeline / "plots/generator/client_0.png").is_file()

    # more public images than the pool holds: one line, and the shard written before stays as it was
    set_params(pipeline, **{"generate.images_per_class": 10_000})
    proc = stage("generate", pipeline, "--client", "0", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert "generate.images_per_class" in line and "public_fraction" in line
    assert (pipeline / "data/synthetic/client_0.parquet").read_bytes() == first
