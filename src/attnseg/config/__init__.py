"""Experiment configuration: typed schema (`schema`) and YAML loading with overrides (`loader`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from attnseg.config.loader import apply_overrides, from_data, read_yaml_with_base, to_data, to_yaml
from attnseg.config.schema import (
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    ExportConfig,
    LossTermConfig,
    ModelConfig,
    TrainConfig,
)


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read an experiment YAML file (or the defaults when path is None), apply ``section.key=value`` overrides.

    Raises:
        ConfigError: unknown key (the message lists the valid ones), wrong type, or unreadable file.
    """
    data = read_yaml_with_base(path) if path is not None else {}
    return from_data(ExperimentConfig, apply_overrides(data, overrides), "config")


def save_config(config: ExperimentConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (every run keeps one next to its outputs), atomically."""
    from attnseg.fileio import atomic_write_text

    return atomic_write_text(path, to_yaml(config), durable=True)


__all__ = [
    "DataConfig",
    "EvalConfig",
    "ExperimentConfig",
    "ExportConfig",
    "LossTermConfig",
    "ModelConfig",
    "TrainConfig",
    "load_config",
    "save_config",
    "to_data",
    "to_yaml",
]
