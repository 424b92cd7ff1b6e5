"""Bad params stop with one line naming the key and what would be valid."""

from pathlib import Path

import pytest
import yaml

from regl.core.errors import ReglError
from regl.core.params import ExperimentParams, load_experiment, load_section, parse
from regl.data.partition import PartitionParams
from regl.data.prepare import PrepareParams


def error_of(model, raw, prefix=""):
    with pytest.raises(ReglError) as info:
        parse(model, raw, prefix)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("beta", [0, -1, -0.5])
def test_beta_must_be_positive(beta):
    assert "beta" in error_of(ExperimentParams, {"beta": beta}) and "> 0" in error_of(ExperimentParams, {"beta": beta})


def test_clients_empty_or_duplicated():
    assert "clients" in error_of(ExperimentParams, {"clients": []})
    message = error_of(ExperimentParams, {"clients": [0, 1, 1, 2]})
    assert "clients" in message and "[1]" in message


def test_section_errors_name_the_key_and_range():
    message = error_of(PrepareParams, {"public_fraction": 1.5}, "prepare")
    assert message.endswith("prepare.public_fraction = 1.5: must be >= 0 and < 1")
    assert "partition.scheme" in error_of(PartitionParams, {"scheme": "random"}, "partition")


def test_unknown_key_is_a_typo():
    message = error_of(PartitionParams, {"min_sise": 3}, "partition")
    assert "unknown key partition.min_sise" in message


def test_defaults_and_loading(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("beta: 0.5\nclients: [3, 4]\npartition:\n  seed: 2\n")
    assert load_experiment(path).clients == [3, 4]
    assert load_section(path, "partition", PartitionParams).seed == 2
    assert load_section(path, "prepare", PrepareParams).image_size == 32


def test_missing_params_file(tmp_path):
    with pytest.raises(ReglError, match="params file not found"):
        load_experiment(tmp_path / "nope.yaml")


def test_top_level_keys_are_the_sections_of_params_yaml_and_dvc_yaml():
    """A misspelled section is refused against this list, so it must name every section the pipeline reads."""
    import yaml

    from regl.core.params import TOP_LEVEL_KEYS, read_yaml

    root = Path(__file__).resolve().parents[1]
    assert set(read_yaml(root / "params.yaml")) == set(TOP_LEVEL_KEYS)
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    read = {p.split(".")[0] for s in stages.values() for p in (s.get("do") or s).get("params", [])}
    assert read <= set(TOP_LEVEL_KEYS)


@pytest.mark.parametrize("value", ["0", "false", '""', "[]"])
def test_falsy_train_section_is_an_error_not_the_defaults(tmp_path, value):
    from regl.federated.train_params import TrainParams

    path = tmp_path / "params.yaml"
    path.write_text(f"train: {value}\n")
    with pytest.raises(ReglError, match=r"train = .*: must be a mapping of keys") as info:
        load_section(path, "train", TrainParams)
    assert "\n" not in str(info.value)
    path.write_text("train:\n")  # a section left empty: the defaults
    assert load_section(path, "train", TrainParams).rounds == TrainParams().rounds


def test_a_stage_computes_with_the_threads_of_params_yaml(tmp_path):
    import torch

    from regl.core.stage import stage

    before = torch.get_num_threads()
    (tmp_path / "params.yaml").write_text("threads: 1\n")
    try:
        torch.set_num_threads(2)
        with stage("test", tmp_path / "params.yaml"):
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_threads_below_one_stop_the_stage_in_one_line(tmp_path, capsys):
    from regl.core.stage import stage

    (tmp_path / "params.yaml").write_text("threads: 0\n")
    with pytest.raises(SystemExit) as info:
        with stage("test", tmp_path / "params.yaml"):
            raise AssertionError("the body must not run")
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().endswith("threads = 0: must be >= 1 and <= 1024")


def test_a_default_another_key_rules_out_is_named_with_its_value():
    """generator.attention_heads = 3 leaves the default unet_widths (32, 64, 128) unbuildable: the error names
    unet_widths, the value it has, and what it must be."""
    from regl.generator.pretrain import GeneratorParams

    with pytest.raises(ReglError) as info:
        parse(GeneratorParams, {"attention_heads": 3}, "generator")
    assert str(info.value) == ("params.yaml: generator.unet_widths = [32, 64, 128]: each width must be a positive "
                               "multiple of 24 (8 normalization groups, attention_heads = 3)")
    assert parse(GeneratorParams, {"attention_heads": 2, "unet_widths": [16, 32]}, "generator").unet_widths == [16, 32]


# --- params.yaml is the one source of defaults ----------------------------------------------------------------
def section_models() -> dict:
    """Each part of params.yaml and the model that reads it."""
    from regl.data.partition import PartitionParams
    from regl.evaluation.personalize import PersonalizeParams
    from regl.evaluation.reference_classifier import ReferenceClassifierParams
    from regl.evaluation.scoring import EvaluateParams
    from regl.federated.train_params import TrainParams
    from regl.generator.lora import FinetuneParams
    from regl.generator.pretrain import GeneratorParams
    from regl.generator.sample import GenerateParams

    from regl.training.compute import ComputeParams

    return {"compute": ComputeParams, "prepare": PrepareParams, "partition": PartitionParams, "generator": GeneratorParams,
            "finetune": FinetuneParams, "generate": GenerateParams, "reference_classifier": ReferenceClassifierParams,
            "train": TrainParams, "personalize": PersonalizeParams, "evaluate": EvaluateParams}


def default_mismatches(model, raw: dict, prefix: str) -> list[str]:
    """Keys of ``raw`` (a params.yaml section) whose code default differs from the value params.yaml sets."""
    found = []
    for key, value in raw.items():
        info = model.model_fields.get(key)
        if info is None:
            found.append(f"{prefix}{key}: no such field in {model.__name__}")
            continue
        if isinstance(value, dict):
            found += default_mismatches(info.annotation, value, f"{prefix}{key}.")
            continue
        default = info.get_default(call_default_factory=True)
        same_type = type(default) is type(value) or (type(default) is float and type(value) is int)
        if not (same_type and default == value):
            found.append(f"{prefix}{key}: code default {default!r}, params.yaml {value!r}")
    return found


def test_code_defaults_equal_params_yaml():
    """params.yaml is the one source of defaults: where a model has a default, it is the value params.yaml sets
    (a run without params.yaml, or with a section left empty, computes what the committed params.yaml says)."""
    root = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((root / "params.yaml").read_text())
    found = default_mismatches(ExperimentParams, {k: params[k] for k in ("beta", "clients", "threads")}, "")
    for name, model in section_models().items():
        found += default_mismatches(model, params[name], f"{name}.")
    assert not found, "code defaults that disagree with params.yaml:\n" + "\n".join(found)


# --- the compute section: written once, read by every stage that trains or scores ----------------------------
def test_compute_keys_come_from_the_compute_section(tmp_path):
    from regl.evaluation.scoring import EvaluateParams
    from regl.federated.train_params import TrainParams

    path = tmp_path / "params.yaml"
    path.write_text("compute:\n  cache_mb: 7\n  precision: fp32\ntrain:\n  rounds: 3\nevaluate:\n  device: cpu\n")
    train = load_section(path, "train", TrainParams)
    assert (train.cache_mb, train.precision, train.rounds, train.scoring_batch) == (7, "fp32", 3, 256)
    assert load_section(path, "evaluate", EvaluateParams).cache_mb == 7
    path.write_text("train:\n  rounds: 3\n")  # no compute section: its defaults
    assert load_section(path, "train", TrainParams).cache_mb == 64


def test_a_compute_key_in_a_stage_section_or_a_bad_one_is_one_line(tmp_path):
    from regl.federated.train_params import TrainParams

    path = tmp_path / "params.yaml"
    path.write_text("train:\n  cache_mb: 7\n")
    with pytest.raises(ReglError, match=r"unknown key train.cache_mb: it is set once for every stage, as "
                                        r"compute.cache_mb") as info:
        load_section(path, "train", TrainParams)
    assert "\n" not in str(info.value)
    path.write_text("compute:\n  cache_mb: -1\ntrain:\n  rounds: 3\n")
    with pytest.raises(ReglError) as info:
        load_section(path, "train", TrainParams)
    assert str(info.value).endswith("compute.cache_mb = -1: must be >= 0 and <= 1048576")
    path.write_text("compute: 3\n")
    with pytest.raises(ReglError, match=r"compute = 3: must be a mapping of keys"):
        load_section(path, "train", TrainParams)


def test_compute_is_read_by_exactly_the_stages_that_train_or_score():
    root = Path(__file__).resolve().parents[1]
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    reading = {name for name, s in stages.items() if "compute" in (s.get("do") or s).get("params", [])}
    assert reading == {"reference_classifier", "generator_quality", "federated_train", "personalize", "evaluate"}
