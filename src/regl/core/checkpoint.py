"""Resumable training state: saved atomically after every round, outside DVC's outputs, keyed by a
fingerprint of everything the run depends on (params, input data, and the code: the stage script and the
library modules it runs), so a stale checkpoint is never resumed, and a finished run leaves none behind.
A checkpoint that does not fit is ignored with a log line saying why."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
import yaml

import regl
from regl.core.atomic import atomic_file

CHECKPOINT_DIR = Path(".regl/checkpoints")
PACKAGE_DIR = Path(regl.__file__).resolve().parent

log = logging.getLogger(__name__)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(config: dict[str, Any], files: list[Path]) -> str:
    """sha256 over the run's config and the bytes of its input files."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for f in files:
        h.update(f"{f}:{file_digest(f)}".encode())
    return h.hexdigest()


def _stage_code(stage: str, dvc_yaml: Path) -> list[str] | None:
    """The Python files among ``stage``'s deps in ``dvc_yaml`` (None where there is no such file or stage)."""
    try:
        stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError, AttributeError):
        return None
    entry = stages.get(stage) if isinstance(stages, dict) else None
    if not isinstance(entry, dict):
        return None
    deps = (entry.get("do") if isinstance(entry.get("do"), dict) else entry).get("deps") or []
    return sorted(d for d in deps if isinstance(d, str) and d.endswith(".py"))


def _running_file(dep: str, root: Path) -> Path:
    """Where the code of a dvc.yaml dep runs from: a ``src/regl/...`` module from the imported package (the
    code Python actually runs), anything else (the stage script) from the repository."""
    parts = Path(dep).parts
    if "regl" in parts[:-1]:
        return PACKAGE_DIR.joinpath(*parts[parts.index("regl") + 1:])
    return root / dep


def code_fingerprint(stage: str, dvc_yaml: Path = Path("dvc.yaml")) -> dict[str, str]:
    """sha256 of each source file the stage runs, by name: the Python files ``dvc.yaml`` lists as the stage's
    deps (its script and the library modules it uses); without a ``dvc.yaml`` that names the stage, every
    module of the regl package."""
    deps = _stage_code(stage, dvc_yaml)
    if deps is None:
        files = {f"regl/{p.relative_to(PACKAGE_DIR)}": p for p in sorted(PACKAGE_DIR.rglob("*.py"))}
    else:
        files = {d: _running_file(d, dvc_yaml.parent) for d in deps}
    return {name: file_digest(path) if path.is_file() else "missing" for name, path in files.items()}


class Checkpoint:
    """``key``: the fingerprint of params and data; ``code``: :func:`code_fingerprint` of the stage. The saved
    state is resumed only where both are the same."""

    def __init__(self, path: Path, key: str, code: dict[str, str] | None = None, start: str = "round 0"):
        self.path, self.key, self.code, self.start = path, key, dict(code or {}), start  # start: what a fresh run does

    def load(self) -> dict[str, Any] | None:
        """The saved state if it belongs to this run, else None (and a log line saying why it was ignored)."""
        if not self.path.is_file():
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=False)
            key, code, state = saved["key"], saved.get("code", {}), saved["state"]
        except Exception as exc:  # a checkpoint from another version or a torn disk: start over
            log.info("ignoring the checkpoint %s: not readable (%s); starting from %s", self.path,
                     exc.__class__.__name__, self.start)
            return None
        if key != self.key:
            log.info("ignoring the checkpoint %s: it was made with other params or input data; starting from %s",
                     self.path, self.start)
            return None
        if code != self.code:
            changed = sorted(n for n in set(code) | set(self.code) if code.get(n) != self.code.get(n))
            log.info("ignoring the checkpoint %s: it was made by other code (changed since: %s); starting from %s",
                     self.path, ", ".join(changed), self.start)
            return None
        return state

    def save(self, state: dict[str, Any]) -> None:
        with atomic_file(self.path) as tmp:
            torch.save({"key": self.key, "code": self.code, "state": state}, tmp)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
