"""Typed params: one loader for params.yaml, validated at stage start; each section's model lives with the
code that reads it.

A bad value stops the stage before any work with one line naming the key and the valid range, e.g.
``params.yaml: beta = -1: must be > 0``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, TypeVar

import annotated_types
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from regl.errors import ReglError

DEFAULT_PARAMS = Path("params.yaml")


def _known_device(device: str) -> str:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        raise ValueError("must be auto, cpu, cuda, cuda:<index> or mps")
    return device


Device = Annotated[str, AfterValidator(_known_device)]


class Section(BaseModel):
    """A params section: unknown keys are typos, so they are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ExperimentParams(BaseModel):
    """The top-level keys: the skew strength and the clients taking part."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    beta: float = Field(0.01, gt=0, description="Dirichlet concentration of the label skew")
    clients: list[int] = Field(default_factory=lambda: list(range(10)), min_length=1)

    @field_validator("clients")
    @classmethod
    def _distinct_ids(cls, ids: list[int]) -> list[int]:
        if any(i < 0 for i in ids):
            raise ValueError("client ids must be integers >= 0")
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"client ids must be distinct, repeated: {dup}")
        return ids


T = TypeVar("T", bound=BaseModel)
S = TypeVar("S", bound="Section")


def read_yaml(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ReglError(f"{path}: params file not found (run from the repository root or pass --params)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ReglError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ReglError(f"{path}: expected a mapping of sections at the top level")
    return data


def _valid_range(model: type[BaseModel], field: str) -> str:
    info = model.model_fields.get(field)
    if info is None:
        return ""
    parts = []
    for meta in info.metadata:
        for attr, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            bound = getattr(meta, attr, None)
            if bound is not None and isinstance(meta, annotated_types.BaseMetadata):
                parts.append(f"{sym} {bound}")
    return "must be " + " and ".join(parts) if parts else ""


def _walk(model: type[BaseModel], raw: Any, loc: list[str]) -> tuple[type[BaseModel], Any]:
    """Follow ``loc`` (all but its last part) into nested sections; returns (leaf's model, leaf's value)."""
    for part in loc[:-1]:
        info = model.model_fields.get(part)
        sub = info.annotation if info is not None else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            break
        model, raw = sub, raw.get(part, {}) if isinstance(raw, dict) else {}
    value = raw.get(loc[-1], "<missing>") if isinstance(raw, dict) and loc else raw
    return model, value


_BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _one_line(exc: ValidationError, model: type[BaseModel], prefix: str, path: Path, raw: dict) -> str:
    err = exc.errors()[0]
    loc = [str(x) for x in err["loc"]]
    key = ".".join(([prefix] if prefix else []) + loc)
    leaf_model, value = _walk(model, raw, loc)
    if err["type"] == "extra_forbidden":
        known = ", ".join(leaf_model.model_fields)
        return f"{path}: unknown key {key} (known keys here: {known})"
    why = _valid_range(leaf_model, loc[-1]) if loc and err["type"] in _BOUND_ERRORS else ""
    if not why:
        why = err["msg"].removeprefix("Value error, ")
        if err["type"] == "literal_error":
            why = "must be one of " + err["msg"].removeprefix("Input should be ")
    return f"{path}: {key} = {value!r}: {why}"


def parse(model: type[T], raw: dict[str, Any], prefix: str = "", path: Path = DEFAULT_PARAMS) -> T:
    """Validate ``raw`` against ``model``; any problem becomes a one-line :class:`ReglError`."""
    if not isinstance(raw, dict):
        raise ReglError(f"{path}: {prefix} must be a mapping of keys, got {raw!r}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ReglError(_one_line(exc, model, prefix, path, raw)) from None


def load_experiment(path: str | Path = DEFAULT_PARAMS) -> ExperimentParams:
    path = Path(path)
    return parse(ExperimentParams, read_yaml(path), "", path)


def load_section(path: str | Path, name: str, model: type[S]) -> S:
    """The validated section ``name`` of params.yaml as ``model`` (missing keys take their defaults).

    Each section's model lives beside the code that reads it (PrepareParams in prepare.py, ...), so a stage
    depends on its own params model and this loader, not on every other stage's."""
    path = Path(path)
    raw = read_yaml(path).get(name) or {}
    return parse(model, raw, name, path)
