"""Resumable chunked output: a long job (generation) writes its result as numbered chunk shards in a folder beside
the output, each one atomically; killed, it resumes from the chunks already there. The folder's manifest holds a
fingerprint of everything the chunks depend on (params, inputs, code), so chunks of another run are never reused:
a folder with another fingerprint is emptied first. The finished output is assembled from the chunks, so an
interrupted and an uninterrupted run write the same bytes."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from regl.core.atomic import write_text
from regl.core.checkpoint import code_fingerprint, fingerprint
from regl.data.shards import Shard, write_shard

MANIFEST = "manifest.json"

log = logging.getLogger(__name__)


class Chunks:
    """Chunk shards ``<folder>/<name>-<index>.parquet`` of a run whose fingerprint is ``key``."""

    def __init__(self, folder: str | Path, key: str):
        self.folder, self.key = Path(folder), key
        manifest = self.folder / MANIFEST
        try:
            saved = json.loads(manifest.read_text()).get("key") if manifest.is_file() else None
        except (OSError, ValueError, AttributeError):
            saved = None
        if saved != key and self.folder.exists():
            log.info("discarding %s: its chunks belong to other params, inputs or code", self.folder)
            shutil.rmtree(self.folder)
        if not manifest.is_file():
            write_text(manifest, json.dumps({"key": key}, indent=1) + "\n")

    def path(self, name: str, index: int) -> Path:
        return self.folder / f"{name}-{index:05d}.parquet"

    def done(self, name: str, index: int) -> bool:
        return self.path(name, index).is_file()

    def write(self, name: str, index: int, shard: Shard) -> None:
        write_shard(self.path(name, index), shard)

    def remove(self) -> None:
        """Once the output is in place the chunks are no longer needed."""
        shutil.rmtree(self.folder, ignore_errors=True)


def run_key(stage: str, config: dict, inputs: list[Path]) -> str:
    """The fingerprint of a run of ``stage``: its config, the bytes of its input files (folders: every file in
    them) and its code (:func:`regl.core.checkpoint.code_fingerprint`)."""
    files = sorted(f for p in map(Path, inputs) for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
    return fingerprint({"config": config, "code": code_fingerprint(stage)}, files)
