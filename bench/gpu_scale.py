"""The paper-scale path on one GPU, one prepared run of a few minutes: classifier rounds at 224 px and generation
of a few thousand 512 px images through the chunked generate path. Prints one JSON summary to stdout.

1. ``classifier``: a FedAvg round of torchvision's ResNet-18 at 224 px on colour images (4 clients, one local
   epoch each, the global model averaged), in torch directly: images/s and peak GPU memory in fp32, fp32
   channels-last, bf16 and fp16 (autocast; fp16 with a gradient scaler) channels-last.
2. ``stage``: the federated_train stage itself (``compute.precision`` fp32 / bf16 / fp16) on
   224 px shards that prepare and partition wrote, one round per precision: seconds and peak GPU memory.
3. ``generate``: a randomly initialised pipeline of Stable Diffusion 1.5's sizes (bench/gpu_sd15.py builds it, no
   downloads) behind a manifest, a LoRA saved from a few fine-tuning steps, then ``synthesize`` — what
   the stage generate runs for each client — writing chunk by chunk: images/s, peak GPU memory, and the host's resident memory after
   every chunk (it should stay flat: one chunk of encoded images is held, never the shard).

    python bench/gpu_scale.py                 # needs CUDA; over 4.5 min on an H100 (classifier 73 s, stage ~45 s,
                                              # generate cut short at 270 s: bench/results/gpu_scale_h100_partial.json)
    python bench/gpu_scale.py --skip stage    # parts can be skipped; --per-class 60 halves the generation
    python bench/gpu_scale.py --smoke         # tiny sizes, runs on the CPU (checks the script, not the figures)
    python bench/gpu_scale.py --out s.json    # s.json rewritten after every part: a run cut short keeps its parts
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class RssSampler:
    """The process's resident memory, sampled every ``every`` seconds in a thread."""

    def __init__(self, every: float = 0.5):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def _run(self, every: float) -> None:
        while not self._stop.is_set():
            self.samples.append(rss_mib())
            self._stop.wait(every)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def peak_gib(dev: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if dev.type == "cuda" else None


def reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


# --- 1. classifier rounds in torch ------------------------------------------------------------------------


def colour_data(n: int, side: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (n, 3, side, side) noise with a colour cue per class (pinned where CUDA is present)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=gen)
    x = torch.randint(0, 120, (n, 3, side, side), generator=gen, dtype=torch.uint8)
    x[torch.arange(n), y % 3] += 100
    return (x.pin_memory(), y) if torch.cuda.is_available() else (x, y)


def local_epoch(model, x, y, batch: int, dev, precision: str, channels_last: bool, seed: int) -> int:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.train()
    for idx in order.split(batch):
        xb = x[idx].to(dev, non_blocking=True).float().div_(255).contiguous(memory_format=fmt)
        yb = y[idx].to(dev, non_blocking=True)
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return len(y)


def fedavg_round(global_model, clients, batch, dev, precision, channels_last) -> int:
    total, avg = 0, None
    start = {k: v.clone() for k, v in global_model.state_dict().items()}
    for c, (x, y) in enumerate(clients):
        global_model.load_state_dict(start)
        total += local_epoch(global_model, x, y, batch, dev, precision, channels_last, seed=c)
        state = global_model.state_dict()
        w = len(y)
        avg = ({k: v.float() * w for k, v in state.items()} if avg is None
               else {k: avg[k] + state[k].float() * w for k in avg})
    n = sum(len(y) for _, y in clients)
    global_model.load_state_dict({k: (v / n).to(start[k].dtype) for k, v in avg.items()})
    return total


def classifier_bench(args, dev) -> list[dict]:
    from regl.training.models import build_model

    clients = [colour_data(args.per_client, args.side, 10, seed=c) for c in range(args.clients)]
    variants = [("fp32", False), ("fp32", True), ("bf16", True), ("fp16", True)]
    if dev.type != "cuda":
        variants = [("fp32", False), ("bf16", True)]
    rows = []
    for precision, channels_last in variants:
        torch.manual_seed(0)
        model = build_model("resnet18", 3, 10, args.side).to(dev)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        warm = [(x[: args.batch * 3], y[: args.batch * 3]) for x, y in clients[:1]]
        fedavg_round(model, warm, args.batch, dev, precision, channels_last)  # kernels, cuDNN autotune
        sync(dev)
        reset_peak(dev)
        start = time.perf_counter()
        images = fedavg_round(model, clients, args.batch, dev, precision, channels_last)
        sync(dev)
        secs = time.perf_counter() - start
        finite = all(torch.isfinite(p).all().item() for p in model.parameters())
        rows.append({"precision": precision, "channels_last": channels_last, "images": images,
                     "seconds": round(secs, 2), "images_per_s": round(images / secs, 1), "peak_gib": peak_gib(dev),
                     "finite": finite})
        print("classifier:", rows[-1], file=sys.stderr, flush=True)
        del model
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# --- 2. the federated_train stage at each compute.precision ------------------------------


def run_stage(name: str, args: list[str]) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"stage_{name}", REPO / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.app(args, standalone_mode=False)


def federated_stage_bench(args, dev, root: Path) -> dict:
    """The stage itself, one round per precision, on shards prepare and partition wrote at ``args.side`` px."""
    from prepare_bench import make_source

    work = root / "stage"
    work.mkdir()
    make_source(work / "source.parquet", args.stage_images)
    params = {"clients": list(range(args.clients)), "beta": 1000.0,
              "prepare": {"source": f"parquet:{work / 'source.parquet'}", "image_size": args.side, "channels": 3,
                          "public_fraction": 0.05, "test_fraction": 0.05, "val_size": 0},
              "partition": {"scheme": "iid", "local_test_size": 10},
              "train": {"model": "resnet18", "synthetic": False, "rounds": 1, "local_epochs": 1,
                        "batch_size": args.batch, "device": str(dev)}}
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    run_stage("prepare", ["--params", str(path), "--out", str(work / "prepared")])
    run_stage("partition", ["--params", str(path), "--prepared", str(work / "prepared"), "--clients-out",
                            str(work / "clients"), "--local-test-out", str(work / "local_test"), "--metrics",
                            str(work / "partition.json"), "--plot", str(work / "partition.png")])
    rows = []
    for precision in ("fp32", "bf16", "fp16") if dev.type == "cuda" else ("fp32",):
        params["compute"] = {"precision": precision, "channels_last": dev.type == "cuda"}
        path.write_text(yaml.safe_dump(params))
        reset_peak(dev)
        start = time.perf_counter()
        try:
            run_stage("federated_train", [
                "--params", str(path), "--clients-dir", str(work / "clients"), "--synthetic-dir",
                str(work / "none"), "--test-file", str(work / "prepared/test.parquet"), "--val-file",
                str(work / "prepared/val.parquet"), "--model-out", str(work / "model.safetensors"), "--metrics",
                str(work / "train.json"), "--curve-dir", str(work / "curve")])
        except (Exception, SystemExit) as exc:  # a param the stage refuses: record it, go on
            rows.append({"precision": precision, "error": f"{exc.__class__.__name__}: {exc}"[:300]})
            continue
        sync(dev)
        secs = time.perf_counter() - start
        images = json.loads((work / "train.json").read_text()).get("real_images", args.stage_images)
        rows.append({"precision": precision, "images": images, "seconds": round(secs, 2),
                     "images_per_s_incl_setup": round(images / secs, 1), "peak_gib": peak_gib(dev)})
        print("stage:", rows[-1], file=sys.stderr, flush=True)
    return {"rows": rows}


# --- 3. generation through the chunked generate path ------------------------------------------------------


def build_generator(root: Path, smoke: bool) -> Path:
    """A diffusers folder: SD 1.5's sizes (random weights), or tiny-sd sizes with --smoke."""
    from regl.generator import tinysd

    folder = root / "sd-random"
    if smoke:
        torch.manual_seed(0)
        tok = tinysd.build_tokenizer(["a photo of class_0", "A photo of {class}, real world images"])
        pipe = tinysd.assemble(tinysd.build_vae(3, 16, widths=(8, 16, 16)), tinysd.build_text_encoder(tok, width=32),
                               tok, tinysd.build_unet(4, widths=(16, 32), text_width=32))
        pipe.save_pretrained(folder)
    else:
        from gpu_sd15 import sd15_random

        sd15_random(folder)
    return folder


def generate_bench(args, dev, root: Path) -> dict:
    from regl.core.chunks import Chunks
    from regl.generator.base import MANIFEST, checkpoint_manifest, load_pipeline, resolution
    from regl.generator.generate import synthesize
    from regl.generator.lora import FinetuneParams, finetune, save_lora
    from regl.generator.sample import GenerateParams
    from regl.data.images import encode_many
    from regl.data.shards import Shard, write_shard

    classes = [f"class_{k}" for k in range(10)]
    checkpoint = build_generator(root, args.smoke)
    (root / "generator").mkdir()
    (root / "generator" / MANIFEST).write_text(json.dumps(checkpoint_manifest(str(checkpoint), None)))
    gen = np.random.default_rng(0)
    pixels = gen.integers(0, 256, size=(16, args.data_side, args.data_side, 3), dtype=np.uint8)
    labels = np.zeros(16, np.int64)  # the client holds one class: vanilla = that class in full + one per other
    real = root / "client_0.parquet"
    write_shard(real, Shard(encode_many(pixels), labels, classes))
    pipe = load_pipeline(root / "generator", dev)
    g = GenerateParams(images_per_class=args.per_class, batch_size=args.gen_batch, chunk_size=args.chunk,
                       steps=args.steps)
    finetune(pipe, pixels, labels, classes, FinetuneParams(steps=2, batch_size=4), g, client=0)
    save_lora(pipe, root / "lora")
    del pipe
    pipe = load_pipeline(root / "generator", dev)

    after_chunk: list[float] = []
    times: list[float] = []
    reset_peak(dev)
    start = time.perf_counter()

    def hook(kind: str, index: int) -> None:
        after_chunk.append(round(rss_mib(), 1))
        times.append(time.perf_counter())

    with RssSampler() as sampler:
        result = synthesize(pipe, real, root / "lora", g, 0, root / "synthetic.parquet", root / "vanilla.parquet",
                            Chunks(root / "partial", "bench"), on_chunk=hook)
    secs = time.perf_counter() - start
    made = result.adapted + result.vanilla
    half = len(after_chunk) // 2
    return {
        "pipeline_side": resolution(pipe), "data_side": args.data_side,
        "adapted": result.adapted, "vanilla": result.vanilla, "chunk": g.chunk, "batch": g.batch_size,
        "steps": g.steps, "seconds": round(secs, 1), "images_per_s": round(made / secs, 2),
        "peak_gib": peak_gib(dev), "shard_mib": round((root / "synthetic.parquet").stat().st_size / 2**20, 1),
        "rss_mib_after_each_chunk": after_chunk,
        "rss_mib_sampled": {"min": round(min(sampler.samples), 1), "max": round(max(sampler.samples), 1),
                            "n": len(sampler.samples)},
        "rss_growth_mib_second_half": round(after_chunk[-1] - after_chunk[half], 1) if after_chunk else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on whatever device there is (CPU: checks)")
    ap.add_argument("--side", type=int, default=224, help="classifier image side")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--per-client", type=int, default=2500, help="images per client in the classifier round")
    ap.add_argument("--batch", type=int, default=128, help="classifier batch")
    ap.add_argument("--stage-images", type=int, default=2000, help="source images for the federated_train stage")
    ap.add_argument("--per-class", type=int, default=120, help="generated images per class (10 classes)")
    ap.add_argument("--gen-batch", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=256, help="generate.chunk_size")
    ap.add_argument("--steps", type=int, default=20, help="sampling steps")
    ap.add_argument("--data-side", type=int, default=224,
                    help="the client's image side (generated images come back at it)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["classifier", "stage", "generate"])
    ap.add_argument("--out", type=Path, help="also write the summary here, after every part (a run cut short "
                    "keeps the parts it finished)")
    args = ap.parse_args()
    if args.smoke:
        args.side, args.clients, args.per_client, args.batch, args.stage_images = 32, 2, 24, 8, 60
        args.per_class, args.gen_batch, args.chunk, args.steps, args.data_side = 3, 4, 8, 2, 32
    if not torch.cuda.is_available() and not args.smoke:
        raise SystemExit("error: no CUDA device (use --smoke to check the script on the CPU)")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    summary: dict = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
                     "torch": torch.__version__, "smoke": args.smoke, "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="gpu_scale.") as tmp:
        root = Path(tmp)
        for name, fn in (("classifier", classifier_bench), ("stage", federated_stage_bench),
                         ("generate", generate_bench)):
            if name in args.skip:
                continue
            start = time.perf_counter()
            try:
                summary[name] = fn(args, dev, root) if name != "classifier" else fn(args, dev)
            except Exception as exc:  # one part failing must not lose the others' figures
                summary[name] = {"error": f"{exc.__class__.__name__}: {exc}"[:500]}
            summary[f"{name}_wall_s"] = round(time.perf_counter() - start, 1)
            print(f"{name} done in {summary[f'{name}_wall_s']} s", file=sys.stderr, flush=True)
            if args.out:
                args.out.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    print(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()
