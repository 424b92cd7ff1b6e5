"""The generator: LoRA save/load, a Stable-Diffusion-structured checkpoint as base, determinism, bad input,
and what DVC reruns. Tiny settings throughout (a few optimizer and sampling steps): behaviour, not quality."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import dvc, load_stage, set_params
from typer.testing import CliRunner

from regl.generator import tinysd
from regl.generator.base import MANIFEST, load_pipeline
from regl.generator.lora import FinetuneParams, finetune, load_lora, prior_images, save_lora
from regl.generator.sample import GenerateParams, generate, per_class

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FAST_LORA = FinetuneParams(steps=3, batch_size=4, lr=1e-2)
FAST_SAMPLE = GenerateParams(steps=3, batch_size=8)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def rgb_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised Stable-Diffusion-structured pipeline, RGB at 16 px (not the data's 32 px grey),
    saved as a plain diffusers folder: what a real checkpoint looks like to the pipeline."""
    import torch

    folder = tmp_path_factory.mktemp("checkpoint") / "sd-random"
    torch.manual_seed(0)
    tok = tinysd.build_tokenizer([f"a photo of {c}" for c in CLASSES])
    pipe = tinysd.assemble(tinysd.build_vae(3, 16, widths=(8, 16, 16)), tinysd.build_text_encoder(tok, width=32),
                           tok, tinysd.build_unet(4, widths=(16, 32), text_width=32))
    pipe.save_pretrained(folder)
    return folder


def as_base(checkpoint: Path, tmp_path: Path) -> Path:
    """The folder pretrain_generator writes for ``generator.base = <checkpoint>``: a manifest only."""
    out = tmp_path / "generator"
    out.mkdir()
    (out / MANIFEST).write_text(json.dumps({"kind": "checkpoint", "base": str(checkpoint), "revision": None}))
    return out


def client_images(n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.default_rng(0)
    pixels = gen.integers(0, 256, size=(n, 32, 32, 1), dtype=np.uint8)
    return pixels, np.array([0, 3] * (n // 2))


def test_tokenizer_vocabulary_is_the_same_in_every_process(tmp_path):
    """tiny-sd's BPE vocabulary is learned at pre-training; hash-map order must not change its bytes (tokenizers'
    own trainer broke ties that way, so each process wrote another vocab.json)."""
    code = ("import sys, pathlib; from regl.generator import tinysd; from regl.generator.pretrain import "
            "vocabulary_corpus; t = tinysd.build_tokenizer(vocabulary_corpus(sys.argv[2:])); "
            "d = pathlib.Path(sys.argv[1]); t.save_pretrained(d); tinysd.write_vocabulary_files(t, d)")
    from regl.generator.pretrain import vocabulary_corpus

    folders = [tmp_path / "here"]  # this process, and two more with other string hashes
    tok = tinysd.build_tokenizer(vocabulary_corpus(CLASSES))
    tok.save_pretrained(folders[0])
    tinysd.write_vocabulary_files(tok, folders[0])
    for seed in ("1", "2"):
        folders.append(tmp_path / seed)
        subprocess.run([sys.executable, "-c", code, str(folders[-1]), *CLASSES], check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed})
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        assert len({sha(f / name) for f in folders}) == 1, name


def test_lora_round_trip_and_scale_zero_is_base(rgb_checkpoint, tmp_path):
    base = as_base(rgb_checkpoint, tmp_path)
    pipe = load_pipeline(base)
    prompts, latents, _ = per_class(pipe, "a photo of {class}", CLASSES, [1] * 10, 0, "test")
    vanilla = generate(pipe, prompts, latents, FAST_SAMPLE)

    pixels, labels = client_images()
    finetune(pipe, pixels, labels, CLASSES, FAST_LORA, GenerateParams(), client=7)
    trained = generate(pipe, prompts, latents, FAST_SAMPLE, lora_scale=0.8)
    save_lora(pipe, tmp_path / "lora")

    fresh = load_pipeline(base)
    load_lora(fresh, tmp_path / "lora")
    assert np.array_equal(generate(fresh, prompts, latents, FAST_SAMPLE, lora_scale=0.8), trained)
    assert np.array_equal(generate(fresh, prompts, latents, FAST_SAMPLE, lora_scale=0.0), vanilla)
    assert not np.array_equal(trained, vanilla)  # the adapter does something
    assert vanilla.shape == (10, 16, 16, 3)  # the checkpoint's own side and channels

    merged = load_pipeline(base)  # how stage generate samples: the adapter merged into the weights at its scale
    load_lora(merged, tmp_path / "lora", 0.8)
    lora_layers = [m for m in merged.unet.modules() if hasattr(m, "merged")]
    assert lora_layers and all(m.merged for m in lora_layers)
    assert np.allclose(generate(merged, prompts, latents, FAST_SAMPLE), trained, atol=1e-4)


def test_prior_images_follow_the_generate_sections_sampler(rgb_checkpoint, tmp_path):
    """Prior-preservation images are made with params.yaml's generate.{scheduler,steps,batch_size} (they used code
    defaults), at finetune's caption and prior guidance scale: the prompt and LoRA scale of generate do not apply."""
    pipe = load_pipeline(as_base(rgb_checkpoint, tmp_path))
    _, labels = client_images()
    cfg = FAST_LORA.model_copy(update={"prior_images_per_class": 1})
    two, prior_labels = prior_images(pipe, labels, CLASSES, cfg, GenerateParams(steps=2, batch_size=8), client=0)
    three, _ = prior_images(pipe, labels, CLASSES, cfg, GenerateParams(steps=3, batch_size=8), client=0)
    other, _ = prior_images(pipe, labels, CLASSES, cfg,
                            GenerateParams(steps=2, batch_size=8, prompt="x {class}", lora_scale=0.1), client=0)
    assert sorted(set(prior_labels)) == [k for k in range(10) if k not in (0, 3)]  # the classes it does not hold
    assert not np.array_equal(two, three)
    assert np.array_equal(two, other)


def test_checkpoint_as_generator_base_through_the_stages(rgb_checkpoint, tmp_path):
    """pretrain_generator writes a manifest; finetune_lora and generate run on the checkpoint it names and
    bring images back at the data's size and channels."""
    from regl.data.images import encode_many
    from regl.data.shards import Shard, read_shard, write_shard

    pixels, labels = client_images()
    write_shard(tmp_path / "clients/client_0.parquet", Shard(encode_many(pixels), labels, CLASSES))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"generator": {"base": str(rgb_checkpoint)},
                                      "finetune": {"steps": 2, "batch_size": 4},
                                      "generate": {"images_per_class": 2, "steps": 2, "batch_size": 20}}))
    runner = CliRunner()
    common = ["--params", str(params)]
    gen_dir = tmp_path / "generator"
    result = runner.invoke(load_stage("pretrain_generator"), common + ["--out", str(gen_dir)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in gen_dir.iterdir()) == [MANIFEST]
    assert json.loads((gen_dir / MANIFEST).read_text())["base"] == str(rgb_checkpoint)

    result = runner.invoke(load_stage("finetune_lora"), common + [
        "--client", "0", "--generator", str(gen_dir), "--clients", str(tmp_path / "clients"),
        "--out", str(tmp_path / "lora")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "lora/client_0/pytorch_lora_weights.safetensors").is_file()

    result = runner.invoke(load_stage("generate"), common + [
        "--client", "0", "--generator", str(gen_dir), "--clients", str(tmp_path / "clients"),
        "--lora", str(tmp_path / "lora"), "--out", str(tmp_path / "synthetic"),
        "--vanilla-out", str(tmp_path / "vanilla"), "--grids", str(tmp_path / "grids")])
    assert result.exit_code == 0, result.output
    synthetic = read_shard(tmp_path / "synthetic/client_0.parquet")
    assert np.bincount(synthetic.labels).tolist() == [2] * 10
    assert synthetic.pixels().shape == (20, 32, 32, 1)
    assert set(synthetic.columns["source"]) == {"synthetic"} and set(synthetic.columns["client"]) == {0}
    assert synthetic.columns["prompt"][0] == "A photo of T-shirt/top, real world images, high resolution"
    vanilla = read_shard(tmp_path / "vanilla/client_0.parquet")
    assert np.bincount(vanilla.labels).tolist() == [2, 1, 1, 2, 1, 1, 1, 1, 1, 1]  # own classes in full
    assert (tmp_path / "grids/client_0.png").stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "synthetic").iterdir()) == ["client_0.parquet"]  # no chunks left


def test_tiny_sd_pretrains_on_the_device_the_other_generator_stages_use(tmp_path):
    """pretrain_generator trains where finetune_lora and generate run (resolve_device("auto"): CUDA when present).
    It trained on the CPU whatever the machine: > 13 min on an H200 machine, 3.8x slower there than on its GPU
    (bench/results/stage_times_h200_*). Here: the device the stage resolves reaches the training, and the
    training puts the model there (CPU on this machine; a GPU run is in the bench result)."""
    import torch

    from regl.generator.pretrain import pretrain_tiny
    from regl.data.images import encode_many
    from regl.data.shards import Shard, write_shard

    pixels, labels = client_images(8)
    write_shard(tmp_path / "public.parquet", Shard(encode_many(pixels), labels, CLASSES))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"generator": {"vae_steps": 1, "unet_steps": 1, "batch_size": 4}}))
    app = load_stage("pretrain_generator")
    scope = app.registered_commands[0].callback.__globals__
    resolved, asked, trained_on = torch.device("cpu", 0), [], []

    def recording_pretrain(images, labels, class_names, cfg, dev=None):
        asked.append(dev)
        pipe = pretrain_tiny(images, labels, class_names, cfg, dev)
        trained_on.append({p.device for m in (pipe.vae, pipe.unet, pipe.text_encoder) for p in m.parameters()})
        return pipe

    scope["resolve_device"] = lambda name="auto", key="": resolved
    scope["pretrain_tiny"] = recording_pretrain
    result = CliRunner().invoke(app, ["--params", str(params), "--public", str(tmp_path / "public.parquet"),
                                      "--out", str(tmp_path / "generator")])
    assert result.exit_code == 0, result.output
    assert asked == [resolved]
    assert trained_on == [{torch.device("cpu")}]


def test_generation_killed_mid_shard_resumes_and_ends_byte_identical(rgb_checkpoint, tmp_path):
    """generate writes chunk by chunk; a run killed after some chunks resumes from the last finished one (makes
    only the missing chunks) and writes the same bytes as an uninterrupted run; other params discard the chunks."""
    from regl.core.chunks import Chunks
    from regl.generator.generate import synthesize
    from regl.data.images import encode_many
    from regl.data.shards import Shard, read_shard, write_shard

    base = as_base(rgb_checkpoint, tmp_path)
    pixels, labels = client_images()
    real = tmp_path / "client_0.parquet"
    write_shard(real, Shard(encode_many(pixels), labels, CLASSES))
    pipe = load_pipeline(base)
    finetune(pipe, pixels, labels, CLASSES, FAST_LORA, GenerateParams(), client=0)
    save_lora(pipe, tmp_path / "lora")
    g = GenerateParams(images_per_class=3, steps=2, batch_size=4, chunk_size=3)  # chunks of 4: 8 + 4 of them

    def run(name: str, key: str = "k", stop_after: tuple[str, int] | None = None):
        out = tmp_path / name
        made = []

        def hook(kind: str, index: int) -> None:
            made.append((kind, index))
            if (kind, index) == stop_after:
                raise KeyboardInterrupt  # what a kill leaves: the chunks finished so far, no output
        result = synthesize(load_pipeline(base), real, tmp_path / "lora", g, 0, out / "synthetic.parquet",
                            out / "vanilla.parquet", Chunks(tmp_path / "partial" / name, key), on_chunk=hook)
        assert result.made == made
        return out, made

    whole, made = run("whole")
    assert made == [("vanilla", i) for i in range(4)] + [("synthetic", i) for i in range(8)]
    with pytest.raises(KeyboardInterrupt):
        run("resumed", stop_after=("synthetic", 2))
    assert not (tmp_path / "resumed/synthetic.parquet").exists()
    resumed, made = run("resumed")
    assert made == [("synthetic", i) for i in range(3, 8)]  # only what was missing
    for name in ("synthetic.parquet", "vanilla.parquet"):
        assert sha(resumed / name) == sha(whole / name), name
    assert len(read_shard(whole / "synthetic.parquet")) == 30

    with pytest.raises(KeyboardInterrupt):
        run("changed", stop_after=("vanilla", 1))
    changed, made = run("changed", key="other params")  # another fingerprint: the chunks are not reused
    assert made[0] == ("vanilla", 0) and len(made) == 12



def test_finetuning_killed_resumes_from_its_checkpoint_and_ends_byte_identical(rgb_checkpoint, tmp_path):
    """finetune_client (stage finetune_lora's work for a client, and a Flower node's) keeps its training state while
    it runs: killed after step 6 of 10, run again, it resumes at step 7 (adapter, optimizer, random generator and losses
    restored) and writes the adapter of an uninterrupted run; the checkpoint is gone once the adapter is written."""
    import logging

    from regl.data.images import encode_many
    from regl.data.shards import Shard, write_shard
    from regl.generator.lora import finetune_client

    base = as_base(rgb_checkpoint, tmp_path)
    pixels, labels = client_images()
    real = tmp_path / "client_0.parquet"
    write_shard(real, Shard(encode_many(pixels), labels, CLASSES))
    cfg = FinetuneParams(steps=10, batch_size=4, lr=1e-2)  # a checkpoint after every step

    def run(name: str, stop_at: int | None = None) -> list[int]:
        steps: list[int] = []

        def hook(step: int) -> None:
            steps.append(step)
            if step == stop_at:
                raise KeyboardInterrupt  # a kill after the step's checkpoint

        finetune_client(base, real, cfg, GenerateParams(), 0, tmp_path / name / "lora", logging.getLogger("test"),
                        tmp_path / name / "state.pt", hook)
        return steps

    assert run("whole") == list(range(1, 11))
    with pytest.raises(KeyboardInterrupt):
        run("killed", stop_at=6)
    assert (tmp_path / "killed/state.pt").is_file() and not (tmp_path / "killed/lora").exists()
    assert run("killed") == list(range(7, 11))
    weights = "lora/pytorch_lora_weights.safetensors"
    assert sha(tmp_path / "killed" / weights) == sha(tmp_path / "whole" / weights)
    assert not (tmp_path / "killed/state.pt").exists()


def test_a_node_killed_while_generating_resumes_and_ends_byte_identical(rgb_checkpoint, tmp_path):
    """ReGL's client side on a Flower node (regl.federated.node_side.prepare_client), the base generator received
    as the server sends it (here a real checkpoint's manifest, which the node loads from its own disk): killed
    after some chunks of its synthetic shard, restarted, it keeps its adapter, makes only the missing chunks and
    ends with the bytes of an uninterrupted node; a third start reuses everything."""
    from regl.data.images import encode_many
    from regl.data.shards import Shard, write_shard
    from regl.federated.node_side import NodeFolder, folder_arrays, prepare_client, write_folder

    base = as_base(rgb_checkpoint, tmp_path)
    pixels, labels = client_images()
    real = tmp_path / "client_0.parquet"
    write_shard(real, Shard(encode_many(pixels), labels, CLASSES))
    g = GenerateParams(images_per_class=2, steps=2, batch_size=4, chunk_size=4)  # 5 synthetic chunks

    def node(name: str, stop_after: tuple[str, int] | None = None) -> tuple[dict, NodeFolder]:
        folder = NodeFolder(tmp_path / name)
        write_folder(folder_arrays(base), folder.generator)

        def hook(kind: str, index: int) -> None:
            if (kind, index) == stop_after:
                raise KeyboardInterrupt  # what a kill leaves: the adapter, the chunks finished so far
        return prepare_client(0, real, folder, FAST_LORA, g, on_chunk=hook), folder

    whole, uninterrupted = node("whole")
    with pytest.raises(KeyboardInterrupt):
        node("killed", stop_after=("synthetic", 1))
    assert not NodeFolder(tmp_path / "killed").synthetic(0).exists()
    resumed, restarted = node("killed")
    assert resumed["reused-lora"] == 1 and resumed["reused-synthetic"] == 0
    assert resumed["chunks-made"] == 3 and whole["chunks-made"] == 5 + 3  # 3 vanilla chunks, then 5 synthetic
    for path in (lambda f: f.lora(0) / "pytorch_lora_weights.safetensors", lambda f: f.synthetic(0),
                 lambda f: f.vanilla(0)):
        assert sha(path(restarted)) == sha(path(uninterrupted))
    again, _ = node("killed")
    assert again["reused-lora"] == again["reused-synthetic"] == 1 and again["chunks-made"] == 0

def test_chunk_key_follows_params_and_input_bytes_and_a_new_key_discards_the_chunks(tmp_path):
    from regl.core.chunks import Chunks, run_key
    from regl.data.shards import Shard

    base = tmp_path / "generator"
    base.mkdir()
    (base / "weights.bin").write_bytes(b"a")
    key = run_key("generate", {"generate": {"steps": 2}}, [base])
    assert run_key("generate", {"generate": {"steps": 2}}, [base]) == key
    assert run_key("generate", {"generate": {"steps": 3}}, [base]) != key
    (base / "weights.bin").write_bytes(b"b")  # a file inside an input folder
    assert run_key("generate", {"generate": {"steps": 2}}, [base]) != key

    Chunks(tmp_path / "partial", key).write("synthetic", 0, Shard([b"x"], [0], ["a"]))
    assert Chunks(tmp_path / "partial", key).done("synthetic", 0)
    assert not Chunks(tmp_path / "partial", "another key").done("synthetic", 0)
    assert not Chunks(tmp_path / "partial", key).done("synthetic", 0)  # gone for good


# --- the pipeline through DVC: one scratch repository, run once, shared by the tests below ---------------

GENERATED = ["data/synthetic/client_0.parquet", "data/synthetic/client_1.parquet",
             "data/vanilla/client_0.parquet", "models/lora/client_0/pytorch_lora_weights.safetensors",
             "plots/generator/client_0.png", "metrics/generator.json"]


@pytest.fixture
def generator_repo(reproduced) -> Path:
    """The session's end-to-end run (three clients): these tests read its generator stages, rerun them and put
    their params back, so the stages after them stay up to date."""
    return reproduced


def test_repro_writes_everything_and_quality_metrics(generator_repo):
    repo = generator_repo
    for path in GENERATED:
        assert (repo / path).is_file(), path
    metrics = json.loads((repo / "metrics/generator.json").read_text())
    assert metrics["clients"] == 3 and set(metrics["per_client"]) == {"client_0", "client_1", "client_2"}
    assert 0 <= metrics["classifiability"] <= 1 and 0 <= metrics["clients_adapted_closer"] <= 3
    assert {"frechet_vanilla", "frechet_adapted"} <= set(metrics["per_client"]["client_0"])
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline.from_pretrained(repo / "models/generator")  # loads like any checkpoint


def test_prompt_change_reruns_generate_only(generator_repo, request, tmp_path):
    repo = generator_repo
    assert "Data and pipelines are up to date" in dvc("repro", "generator_quality", cwd=repo).stdout
    original = yaml.safe_load((repo / "params.yaml").read_text())["generate"]
    request.addfinalizer(lambda: set_params(repo, **{f"generate.{k}": v for k, v in original.items()}))
    saved = {}
    for path in ("dvc.lock", "data/synthetic", "data/vanilla", "plots/generator", "metrics/generator.json"):
        saved[path] = tmp_path / path.replace("/", "_")
        (shutil.copytree if (repo / path).is_dir() else shutil.copy2)(repo / path, saved[path])
    for key, value in (("generate.prompt", "a picture of {class}"), ("generate.lora_scale", 0.5)):
        set_params(repo, **{key: value})
        changed = set(json.loads(dvc("status", "--json", "--with-deps", "generator_quality", cwd=repo).stdout))
        assert changed == {"generate"}, key
        if key != "generate.prompt":
            set_params(repo, **{key: original[key.split(".")[1]]})
            continue
        out = dvc("repro", "generator_quality", cwd=repo).stdout
        ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
        assert ran == {"generate", "generator_quality"}, key
        set_params(repo, **{key: original[key.split(".")[1]]})
        for path, kept in saved.items():  # the outputs of the original prompt, as generating again would make them
            shutil.rmtree(repo / path) if (repo / path).is_dir() else (repo / path).unlink()
            shutil.move(kept, repo / path)
    assert "Data and pipelines are up to date" in dvc("repro", "generator_quality", cwd=repo).stdout


def test_same_params_same_bytes(generator_repo):
    repo = generator_repo
    before = {p: sha(repo / p) for p in GENERATED}
    dvc("repro", "-f", "-s", "finetune_lora", cwd=repo)
    dvc("repro", "-f", "-s", "generate", cwd=repo)
    dvc("repro", "-f", "-s", "generator_quality", cwd=repo)
    assert {p: sha(repo / p) for p in GENERATED} == before


def test_a_client_alone_gets_the_bytes_of_the_stages_loop(generator_repo, tmp_path, monkeypatch):
    # finetune_lora and generate run every client in one process; a client's adapter and images must not depend
    # on the clients before it (its seeds are keyed by (seed, client), and each client loads the base afresh).
    # Run here in pytest's process, after whatever the other tests left in torch's global state.
    repo = generator_repo
    monkeypatch.chdir(tmp_path)  # the stages' checkpoints go under the working directory
    inputs = ["--params", str(repo / "params.yaml"), "--generator", str(repo / "models/generator"),
              "--clients", str(repo / "data/clients"), "--client", "1"]
    runner = CliRunner()
    result = runner.invoke(load_stage("finetune_lora"), inputs + ["--out", str(tmp_path / "lora")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(load_stage("generate"), inputs + [
        "--lora", str(tmp_path / "lora"), "--out", str(tmp_path / "synthetic"),
        "--vanilla-out", str(tmp_path / "vanilla"), "--grids", str(tmp_path / "grids")])
    assert result.exit_code == 0, result.output
    adapter = "client_1/pytorch_lora_weights.safetensors"
    assert sha(tmp_path / "lora" / adapter) == sha(repo / "models/lora" / adapter)
    for folder in ("synthetic", "vanilla"):
        assert sha(tmp_path / folder / "client_1.parquet") == sha(repo / "data" / folder / "client_1.parquet"), folder


@pytest.mark.parametrize("stage_name, changes, message", [
    ("generate", {"generate": {"prompt": "a photo"}}, "generate.prompt = 'a photo': must contain {class}"),
    ("generate", {"generate": {"lora_scale": 2.5}}, "generate.lora_scale = 2.5: must be >= 0 and <= 2"),
    ("generate", {"generate": {"images_per_class": 0}}, "generate.images_per_class = 0: must be >= 1"),
    ("finetune_lora", {"finetune": {"caption": "a photo"}}, "finetune.caption = 'a photo': must contain {class}"),
    ("pretrain_generator", {"generator": {"base": "/no/such/folder"}},
     "generator.base = '/no/such/folder': folder not found"),
])
def test_bad_input_one_clear_error_nothing_written(generator_repo, tmp_path, monkeypatch, stage_name, changes,
                                                   message):
    params = yaml.safe_load((generator_repo / "params.yaml").read_text())
    for section, values in changes.items():
        params[section] = {**params[section], **values}
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params))
    out = tmp_path / "out"
    args = {"generate": ["--client", "0", "--out", str(out), "--vanilla-out", str(out), "--grids", str(out)],
            "finetune_lora": ["--client", "0", "--out", str(out)],
            "pretrain_generator": ["--out", str(out)]}[stage_name]
    monkeypatch.chdir(generator_repo)
    result = CliRunner().invoke(load_stage(stage_name), ["--params", str(bad), *args])
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert not out.exists()
