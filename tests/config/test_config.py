from pathlib import Path

import pytest

from attnseg.cli.main import main
from attnseg.config import ExperimentConfig, load_config, save_config
from attnseg.config.loader import parse_override
from attnseg.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_without_a_file():
    config = load_config(None)
    assert config == ExperimentConfig()


def test_base_then_file_then_overrides(tmp_path):
    write(tmp_path / "base.yaml", "train: {lr: 0.01, iters: 100}\neval: {scales: [1.0]}\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\ntrain: {lr: 0.02}\n")
    config = load_config(child, ["eval.scales=[0.5,1.0,2.0]", "train.precision=bf16"])
    assert config.train.lr == 0.02
    assert config.train.iters == 100  # kept from the base
    assert config.eval.scales == (0.5, 1.0, 2.0)
    assert config.train.precision == "bf16"


def test_only_one_base_level(tmp_path):
    write(tmp_path / "a.yaml", "train: {lr: 0.01}\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    child = write(tmp_path / "c.yaml", "base: b.yaml\n")
    with pytest.raises(ConfigError, match="one level"):
        load_config(child)


def test_unknown_key_names_key_and_lists_valid_ones(tmp_path):
    path = write(tmp_path / "x.yaml", "train: {learning_rate: 0.1}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "config.train" in message and "'learning_rate'" in message
    assert "lr" in message and "weight_decay" in message


def test_unknown_section_and_override_key():
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        load_config(None, ["trian.lr=0.1"])
    with pytest.raises(ConfigError, match="unknown key 'lrr'"):
        load_config(None, ["train.lrr=0.1"])


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.lr=abc", "expected a number"),
        ("train.iters=1.5", "expected an integer"),
        ("train.sync_bn=3", "expected true or false"),
        ("eval.mode=tiles", "not one of"),
        ("data.crop_size=[1,2,3]", "expected 2 values"),
        ("train.iters=0", "config.train.iters=0: must be an integer >= 1"),
        ("data.class_uniform_fraction=2", "class_uniform_fraction"),
    ],
)
def test_wrong_types_are_errors(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, [override])


def test_loss_terms_are_typed():
    losses = "[{output: logits, loss: rmi}, {output: aux_logits, loss: cross_entropy, weight: 0.4}]"
    config = load_config(None, [f"train.losses={losses}"])
    assert [t.loss for t in config.train.losses] == ["rmi", "cross_entropy"]
    assert config.train.losses[1].weight == 0.4
    with pytest.raises(ConfigError, match="required key 'loss'"):
        load_config(None, ["train.losses=[{output: logits}]"])


def test_scalar_scale_becomes_a_series():
    assert load_config(None, ["eval.scales=1.0"]).eval.scales == (1.0,)


def test_saved_config_loads_back_identically(tmp_path):
    config = load_config(None, ["train.lr=0.05", "eval.scales=[0.5,1.0]", "eval.crop_size=[256,512]"])
    path = save_config(config, tmp_path / "run" / "config.yaml")
    assert load_config(path) == config


def test_override_syntax():
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    with pytest.raises(ConfigError):
        parse_override("no_equals_sign")


def test_print_config_cli(tmp_path, capsys):
    path = write(tmp_path / "x.yaml", "model: {name: psanet_r50_vd}\n")
    assert main(["print-config", str(path), "train.lr=0.5"]) == 0
    out = capsys.readouterr().out
    assert "name: psanet_r50_vd" in out and "lr: 0.5" in out
    assert main(["print-config", str(path), "train.nope=1"]) == 2
    assert "unknown key 'nope'" in capsys.readouterr().err


def test_exponent_numbers_without_a_dot_are_numbers(tmp_path):
    """YAML 1.1 reads `1e-3` as a string; a float field takes it as the number it spells, in overrides and files."""
    assert load_config(None, ["train.lr=1e-3"]).train.lr == pytest.approx(1e-3)
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 5E-4\n  weight_decay: 1e-4\n")
    config = load_config(path)
    assert config.train.lr == pytest.approx(5e-4) and config.train.weight_decay == pytest.approx(1e-4)
    with pytest.raises(ConfigError, match="config.train.lr: expected a number, got 'nan'"):
        load_config(None, ["train.lr=nan"])  # a plain string, not YAML's .nan; both are refused


@pytest.mark.parametrize("override, fragment", [
    ("train.lr=.inf", "config.train.lr=inf: must be a positive finite number"),
    ("train.momentum=1.5", "config.train.momentum=1.5: must be below 1"),
    ("train.ema_decay=1", "config.train.ema_decay=1.0: must be in [0, 1)"),
    ("eval.stride=[64,64]", "config.eval.stride=(64, 64): must not exceed crop_size"),
    ("eval.scales=[0.5,0.5,1.0]", "appears more than once"),
    ("export.input_shape=[1,3,20000,64]", "config.export.input_shape=(1, 3, 20000, 64): more than the 16384 px"),
    ("data.mapillary_classes=vistas", "config.data.mapillary_classes='vistas': applies to data.dataset 'mapillary'"),
])
def test_ranges_name_the_key_and_the_value(override, fragment):
    overrides = [override] + (["eval.crop_size=[32,32]"] if override.startswith("eval.stride") else [])
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert fragment in str(info.value)
