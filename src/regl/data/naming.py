"""Per-client file names, shared by every stage that reads or writes a client's files."""

from __future__ import annotations

from pathlib import Path


def client_name(client: int) -> str:
    """``client_<id>``, unpadded: every per-client file and folder of the pipeline is named with it."""
    return f"client_{client}"


def client_file(folder: str | Path, client: int, suffix: str = ".parquet") -> Path:
    """``<folder>/client_<id><suffix>``: a client's shard (or model, with another suffix) in a stage's folder."""
    return Path(folder) / f"{client_name(client)}{suffix}"
