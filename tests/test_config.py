"""params.yaml parsing: defaults, and errors that name the key before any work starts."""

import re
from pathlib import Path

import pytest
import yaml

from gan_core.config import ConfigError, Params, load_params

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_repo_params_parse_and_match_defaults():
    params = load_params(ROOT / "params.yaml")
    assert params.train.batch_size == 64
    assert params.generate.rejection.enabled is False
    # params.yaml spells out every default, so the file and the code cannot drift apart silently.
    assert params == Params()


@pytest.mark.parametrize("text, fragment", [
    ("train:\n  lr_g: -1\n", "train.lr_g: input should be greater than 0 (got -1)"),
    ("train:\n  lr_gg: 0.1\n", "unknown key train.lr_gg"),
    ("model:\n  latent_dim: 0\n", "model.latent_dim"),
    ("train:\n  batch_size: sixty\n", "train.batch_size"),
    ("train:\n  lr_d: .nan\n", "train.lr_d"),
    ("generate:\n  rejection:\n    target_acceptance: 1.5\n", "generate.rejection.target_acceptance"),
    ("prepare:\n  dataset: ../etc\n", "prepare.dataset"),
    ("evaluate:\n  num_samples: -5\n", "evaluate.num_samples"),
    ("trian:\n  epochs: 1\n", "unknown key trian"),
    ("train: 5\n", "train: input should be a valid dictionary"),
    ("generate:\n  shard_size: -50\n", "generate.shard_size: input should be greater than or equal to 1"),
    ("train:\n  lr_g: .inf\n", "train.lr_g: input should be a finite number"),
    ("generate:\n  name: a..b\n", "generate.name: use letters, digits"),
])
def test_bad_values_name_the_key(tmp_path, text, fragment):
    with pytest.raises(ConfigError) as info:
        load_params(write(tmp_path, text))
    assert fragment in str(info.value)
    assert str(tmp_path / "params.yaml") in str(info.value)


@pytest.mark.parametrize("text, message", [
    ("train:\n  epoch: 3\n", "unknown key train.epoch (did you mean train.epochs?)"),
    ("trian:\n  epochs: 1\n", "unknown key trian (did you mean train?)"),
    ("generate:\n  rejection:\n    enable: true\n",
     "unknown key generate.rejection.enable (did you mean generate.rejection.enabled?)"),
])
def test_a_misspelt_key_suggests_the_closest(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load_params(write(tmp_path, text))
    assert str(info.value).endswith(message)


def test_an_unknown_key_far_from_every_field_gets_no_suggestion(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_params(write(tmp_path, "train:\n  xyzzy: 3\n"))
    assert str(info.value).endswith("unknown key train.xyzzy")


def test_yaml_syntax_error_names_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"not valid YAML at line 3: mapping values are not allowed"):
        load_params(write(tmp_path, "train:\n  epochs: 1\n    lr_g: 2\n"))


def test_a_key_given_twice_is_an_error(tmp_path):
    # yaml.safe_load would keep the last one silently; DVC's parser refuses it too.
    with pytest.raises(ConfigError, match=r"not valid YAML at line 4: found duplicate key 'lr_g'"):
        load_params(write(tmp_path, "train:\n  lr_g: 0.1\n  epochs: 1\n  lr_g: 0.2\n"))


def test_missing_file_and_empty_sections(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    params = load_params(write(tmp_path, "train:\nmodel:\n"))
    assert params.train == Params().train


def test_override_keeps_other_defaults(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"]["epochs"] = 3
    params = load_params(write(tmp_path, yaml.safe_dump(raw)))
    assert params.train.epochs == 3 and params.train.lr_g == raw["train"]["lr_g"]


def test_split_fractions_must_leave_a_training_split(tmp_path):
    with pytest.raises(ConfigError, match=r"prepare: validation_fraction \+ test_fraction must be below 1 "
                                          r"\(got 0\.5 \+ 0\.5\)"):
        load_params(write(tmp_path, "prepare:\n  validation_fraction: 0.5\n  test_fraction: 0.5\n"))
    with pytest.raises(ConfigError, match="unknown key prepare.holdout_fraction"):
        load_params(write(tmp_path, "prepare:\n  holdout_fraction: 0.3\n"))


def test_the_dataset_name_follows_the_data_unless_set(tmp_path):
    # "Your own data": only prepare.dataset and prepare.source change in the repository's params.yaml.
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare"] |= {"dataset": "faces", "source": "data/raw/faces"}
    (tmp_path / "own.yaml").write_text(yaml.safe_dump(params))
    assert load_params(tmp_path / "own.yaml").generate.name == "faces-synthetic"
    params["generate"]["name"] = "portraits"
    (tmp_path / "named.yaml").write_text(yaml.safe_dump(params))
    assert load_params(tmp_path / "named.yaml").generate.name == "portraits"


@pytest.mark.parametrize("text, fragment", [
    ("prepare:\n  resolution: 28\n", "prepare.resolution: must be auto or a power of two >= 8 (got 28)"),
    ("prepare:\n  resolution: 4\n", "prepare.resolution: must be auto or a power of two >= 8 (got 4)"),
    ("prepare:\n  transform: stretch\n", "prepare.transform: input should be 'pad', 'center-crop' or 'resize'"),
])
def test_resolution_and_transform_are_checked(tmp_path, text, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_params(write(tmp_path, text))
    assert load_params(write(tmp_path, "prepare:\n  resolution: 64\n")).prepare.resolution == 64
