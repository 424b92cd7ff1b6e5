"""Typed params: one loader for params.yaml, one model per section, validated at stage start.

A bad value stops the stage before any work with one line naming the key and the valid range, e.g.
``params.yaml: beta = -1: must be > 0``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import annotated_types
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from regl.errors import ReglError

DEFAULT_PARAMS = Path("params.yaml")


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


class PrepareParams(Section):
    source: str = "fashion-mnist"
    fashion_mnist_dir: str = "/usr/share/datasets/fashion-mnist"
    image_size: int = Field(32, ge=8, le=1024)
    channels: Literal["auto", 1, 3] = "auto"
    max_train: int | None = Field(None, ge=1)
    max_test: int | None = Field(None, ge=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    public_fraction: float = Field(0.1, ge=0, lt=1)
    seed: int = Field(0, ge=0)


class PartitionParams(Section):
    scheme: Literal["dirichlet", "iid", "pathological"] = "dirichlet"
    seed: int = Field(0, ge=0)
    min_size: int = Field(10, ge=0)
    max_tries: int = Field(1000, ge=1)
    classes_per_client: int = Field(2, ge=1)
    local_test_size: int = Field(200, ge=0)


def _has_class_slot(text: str) -> str:
    if "{class}" not in text:
        raise ValueError("must contain {class}, where each class name goes")
    try:
        text.format(**{"class": "x"})
    except (KeyError, IndexError, ValueError):
        raise ValueError("may hold no other {...} field than {class}") from None
    return text


class GeneratorParams(Section):
    """Stage pretrain_generator: tiny-sd's pre-training, or the checkpoint to use instead."""

    base: str = "tiny"
    revision: str | None = None
    public_style: Literal["none", "lowcontrast", "blur", "invert"] = "lowcontrast"
    vae_steps: int = Field(200, ge=1)
    unet_steps: int = Field(2500, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(1e-3, gt=0, le=1)
    ema_decay: float = Field(0.995, ge=0, lt=1)
    empty_caption_share: float = Field(0.1, ge=0, lt=1)
    seed: int = Field(0, ge=0)


class FinetuneParams(Section):
    """Stage finetune_lora: one LoRA per client on its real images."""

    caption: str = "a photo of {class}"
    target_modules: list[str] = Field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"],
                                      min_length=1)
    rank: int = Field(8, ge=1)
    alpha: float = Field(8.0, gt=0)
    steps: int = Field(150, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0, le=1)
    empty_caption_share: float = Field(0.1, ge=0, lt=1)
    prior_images_per_class: int = Field(0, ge=0)
    prior_guidance_scale: float = Field(5.0, ge=0)
    seed: int = Field(0, ge=0)

    _caption = field_validator("caption")(classmethod(lambda cls, v: _has_class_slot(v)))


class GenerateParams(Section):
    """Stage generate: synthetic images of every class from the base + the client's LoRA."""

    prompt: str = "A photo of {class}, real world images, high resolution"
    lora_scale: float = Field(0.8, ge=0, le=2)
    guidance_scale: float = Field(5.0, ge=0)
    scheduler: Literal["dpm", "ddim", "euler", "pndm"] = "dpm"
    steps: int = Field(20, ge=1)
    images_per_class: int = Field(40, ge=1)
    batch_size: int = Field(64, ge=1)
    seed: int = Field(0, ge=0)

    _prompt = field_validator("prompt")(classmethod(lambda cls, v: _has_class_slot(v)))


class ReferenceClassifierParams(Section):
    """Stage reference_classifier: the classifier that judges synthetic images (and that evaluation reuses)."""

    model: Literal["cnn", "resnet18"] = "cnn"
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    seed: int = Field(0, ge=0)


SECTIONS: dict[str, type[Section]] = {
    "prepare": PrepareParams,
    "partition": PartitionParams,
    "generator": GeneratorParams,
    "finetune": FinetuneParams,
    "generate": GenerateParams,
    "reference_classifier": ReferenceClassifierParams,
}

T = TypeVar("T", bound=BaseModel)


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
    if parts:
        return "must be " + " and ".join(parts)
    return ""


def _one_line(exc: ValidationError, model: type[BaseModel], prefix: str, path: Path, raw: dict) -> str:
    err = exc.errors()[0]
    loc = [str(x) for x in err["loc"]]
    key = ".".join(([prefix] if prefix else []) + loc)
    if err["type"] == "extra_forbidden":
        known = ", ".join(model.model_fields)
        return f"{path}: unknown key {key} (known keys in {prefix}: {known})"
    value = raw.get(loc[0], "<missing>") if loc else raw
    why = _valid_range(model, loc[0]) if loc and err["type"] in {
        "greater_than", "greater_than_equal", "less_than", "less_than_equal"} else ""
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


def load_section(name: str, path: str | Path = DEFAULT_PARAMS) -> Section:
    """The validated section ``name`` of params.yaml (missing keys take their defaults)."""
    path = Path(path)
    raw = read_yaml(path).get(name) or {}
    return parse(SECTIONS[name], raw, name, path)
