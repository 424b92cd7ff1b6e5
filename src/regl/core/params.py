"""Typed params: one loader for params.yaml, validated at stage start; each section's model lives with the
code that reads it.

A bad value stops the stage before any work with one line naming the key and the valid range, e.g.
``params.yaml: beta = -1: must be > 0``.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

import annotated_types
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from regl.core.errors import ReglError

DEFAULT_PARAMS = Path("params.yaml")


def _known_device(device: str) -> str:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        raise ValueError("must be auto, cpu, cuda, cuda:<index> or mps")
    return device


Device = Annotated[str, AfterValidator(_known_device)]


# Strict: YAML's `true`, `"3"` or `1.0` where an integer belongs is a mistake to report, not to coerce; `.inf` and
# `.nan` are never a valid setting.
_STRICT = ConfigDict(frozen=True, strict=True, allow_inf_nan=False)


class Section(BaseModel):
    """A params section: unknown keys are typos, so they are errors."""

    model_config = ConfigDict(extra="forbid", **_STRICT)

    # The top-level section whose keys this model's fields also take: params.yaml writes them once, there, and
    # the loader copies them in; written in this model's own section they are an error (ComputeParams: `compute`,
    # shared by every stage that trains or scores).
    shared_section: ClassVar[str | None] = None


class ExperimentParams(BaseModel):
    """The top-level keys: the skew strength, the clients taking part and the CPU threads each stage uses."""

    model_config = ConfigDict(extra="ignore", **_STRICT)

    beta: float = Field(0.01, gt=0, description="Dirichlet concentration of the label skew")
    clients: list[int] = Field(default_factory=lambda: list(range(10)), min_length=1)
    threads: int = Field(2, ge=1, le=1024, description="torch CPU threads of every stage that computes")

    @field_validator("clients")
    @classmethod
    def _distinct_ids(cls, ids: list[int]) -> list[int]:
        if any(i < 0 for i in ids):
            raise ValueError("client ids must be integers >= 0")
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"client ids must be distinct, repeated: {dup}")
        return ids


# Every top-level key of params.yaml: the shared keys, the shared compute section and one section per stage.
# Anything else is a typo (a misspelled section would otherwise leave its stage on the defaults without a word).
TOP_LEVEL_KEYS = ("beta", "clients", "threads", "compute", "prepare", "partition", "generator", "finetune",
                  "generate", "reference_classifier", "train", "personalize", "evaluate")

T = TypeVar("T", bound=BaseModel)
S = TypeVar("S", bound="Section")


def read_yaml(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ReglError(f"{path}: params file not found (run from the repository root or pass --params)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ReglError(f"{path}: not UTF-8 text (byte {raw[exc.start]:#04x} on line {line}); "
                        f"save it as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ReglError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ReglError(f"{path}: expected a mapping of sections at the top level, got {_short(data)}")
    unknown = [k for k in data if k not in TOP_LEVEL_KEYS]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), TOP_LEVEL_KEYS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ReglError(f"{path}: unknown section {key!r}{hint}; valid top-level keys: {', '.join(TOP_LEVEL_KEYS)}")
    return data


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


def _walk(model: type[BaseModel], raw: Any, loc: list[str | int]) -> tuple[type[BaseModel], Any]:
    """Follow ``loc`` into nested sections and lists; returns (the innermost section's model, the value)."""
    value = raw
    for part in loc:
        if isinstance(value, dict) and part in value:
            info = model.model_fields.get(str(part))
            sub = info.annotation if info is not None else None
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                model = sub
            value = value[part]
        elif isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
            value = value[part]
        else:
            return model, "<missing>"
    return model, value


def _key(prefix: str, loc: list[str | int]) -> str:
    """``train.fedprox.mu``, ``clients[1]``."""
    key = prefix
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


_BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _one_line(exc: ValidationError, model: type[BaseModel], prefix: str, path: Path, raw: dict) -> str:
    err = exc.errors()[0]
    loc = list(err["loc"])
    key = _key(prefix, loc)
    if err["type"] == "extra_forbidden":
        leaf_model, _ = _walk(model, raw, loc[:-1])
        known = ", ".join(leaf_model.model_fields)
        return f"{path}: unknown key {key} (known keys here: {known})"
    leaf_model, value = _walk(model, raw, loc)
    if err["type"] == "missing":
        return f"{path}: {key} missing"
    field = leaf_model.model_fields.get(str(loc[-1])) if loc else None
    if value == "<missing>" and field is not None and not field.is_required():  # a default that another key rules out
        value = field.get_default(call_default_factory=True)
    why = _valid_range(leaf_model, str(loc[-1])) if loc and err["type"] in _BOUND_ERRORS else ""
    if not why:
        why = err["msg"].removeprefix("Value error, ")
        if err["type"] == "literal_error":
            why = "must be one of " + err["msg"].removeprefix("Input should be ")
        elif why.startswith("Input should be"):
            why = "must be" + why.removeprefix("Input should be")
    return f"{path}: {key} = {_short(value)}: {why}"


def parse(model: type[T], raw: dict[str, Any], prefix: str = "", path: Path = DEFAULT_PARAMS) -> T:
    """Validate ``raw`` against ``model``; any problem becomes a one-line :class:`ReglError`."""
    if not isinstance(raw, dict):
        raise ReglError(f"{path}: {prefix or 'the top level'} = {_short(raw)}: must be a mapping of keys "
                        f"(or left empty for the defaults)")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ReglError(_one_line(exc, model, prefix, path, raw)) from None


@dataclass(frozen=True)
class Params:
    """A params file read once; its parts are validated when asked for."""

    path: Path
    data: dict[str, Any]

    def experiment(self) -> ExperimentParams:
        return parse(ExperimentParams, self.data, "", self.path)

    def section(self, name: str, model: type[S]) -> S:
        """The validated section ``name`` as ``model`` (missing keys take their defaults), with the keys of the
        model's shared section (``model.shared_section``) taken from there."""
        raw = self.data.get(name)
        raw = {} if raw is None else raw  # `name:` with nothing under it: the defaults
        shared = model.shared_section
        if shared and shared != name and isinstance(raw, dict):
            base = next(c for c in reversed(model.__mro__) if c.__dict__.get("shared_section") == shared)
            written = next((k for k in raw if k in base.model_fields), None)
            if written is not None:
                raise ReglError(f"{self.path}: unknown key {name}.{written}: it is set once for every stage, "
                                f"as {shared}.{written}")
            raw = {**raw, **self.section(shared, base).model_dump()}
        return parse(model, raw, name, self.path)


def read_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    path = Path(path)
    return Params(path, read_yaml(path))


def load_experiment(path: str | Path = DEFAULT_PARAMS) -> ExperimentParams:
    return read_params(path).experiment()


def load_section(path: str | Path, name: str, model: type[S]) -> S:
    """The validated section ``name`` of params.yaml as ``model`` (see :meth:`Params.section`).

    Each section's model lives beside the code that reads it (PrepareParams in prepare.py, ...), so a stage
    depends on its own params model and this loader, not on every other stage's."""
    return read_params(path).section(name, model)
