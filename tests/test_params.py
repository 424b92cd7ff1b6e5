"""Bad params stop with one line naming the key and what would be valid."""

import pytest

from regl.errors import ReglError
from regl.params import ExperimentParams, load_experiment, load_section, parse
from regl.partition import PartitionParams
from regl.prepare import PrepareParams


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
