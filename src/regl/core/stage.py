"""What every stage entrypoint shares: logging, timing, and turning a ReglError into one line and exit 2."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import yaml

from regl.core.atomic import write_text
from regl.core.errors import ReglError
from regl.core.params import load_experiment

log = logging.getLogger("regl")


@contextlib.contextmanager
def stage(name: str, params: Path | None = None) -> Iterator[logging.Logger]:
    """Run a stage body: log start and end, report user errors as ``error: <one line>`` and exit 2.

    Given the params file, torch uses its top-level ``threads`` count: float sums run in an order that depends
    on the thread count, so outputs are bit-identical only at the same count, and two stages at full thread
    count side by side on the same cores spin-wait each other (docs/experiments.md)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    stage_log = logging.getLogger(f"regl.{name}")
    start = time.perf_counter()
    stage_log.info("start")
    try:
        if params is not None:
            use_threads(load_experiment(params).threads)
        yield stage_log
    except ReglError as exc:
        report(exc)
        raise SystemExit(2) from None
    stage_log.info("done in %.1f s", time.perf_counter() - start)


def pipeline_paths(root: str | Path) -> SimpleNamespace:
    """The pipeline's files as the ``vars: paths`` block of ``root``/dvc.yaml names them, the one place they are
    written: ``pipeline_paths(root).data.clients`` is ``Path("data/clients")``, relative to ``root``. The stage
    scripts' path options default to these, and dvc.yaml's deps and outs use the same block."""
    dvc_yaml = Path(root) / "dvc.yaml"
    try:
        spec = yaml.safe_load(dvc_yaml.read_text())
        paths = next(v["paths"] for v in spec["vars"] if isinstance(v, dict) and "paths" in v)
        return _as_paths(paths)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError, AttributeError, StopIteration):
        raise ReglError(f"{dvc_yaml}: no `vars: - paths:` block naming the pipeline's files") from None


def _as_paths(node: dict) -> SimpleNamespace:
    return SimpleNamespace(**{k: _as_paths(v) if isinstance(v, dict) else Path(v) for k, v in node.items()})


def use_threads(count: int) -> None:
    import torch

    torch.set_num_threads(count)


def report(exc: ReglError) -> None:
    """``error: <one line>`` on stderr, on a line of its own: progress bars cut short are closed first."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
    print(f"error: {exc}", file=sys.stderr, flush=True)


def write_json(path: str | Path, data: Any) -> None:
    """Metrics JSON: sorted keys would scramble the headline-first order, so keys keep insertion order."""
    write_text(path, json.dumps(data, indent=2) + "\n")
