"""Loading a checkpoint file of any supported layout into a model: read, detect, convert, report."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from torch import nn

from attnseg.errors import WeightsError
from attnseg.weights.formats import NATIVE, check_source, convert_state_dict, detect_source
from attnseg.weights.report import LoadReport, load_state_dict_report
from attnseg.weights.safe_load import read_checkpoint_file


def _resolve_source(state_dict: Mapping[str, Any], model: nn.Module, source: str) -> str:
    if source != "auto":
        check_source(source)
        return source
    if set(map(str, state_dict)) == set(model.state_dict()):
        return NATIVE
    return detect_source(state_dict)


def load_weights(model: nn.Module, path: str | os.PathLike, source: str = "auto", strict: bool = True) -> LoadReport:
    """Load a checkpoint of any supported layout into ``model``.

    Args:
        model: the model to fill, built with the matching architecture and class count.
        path: checkpoint file (see `read_checkpoint_file`).
        source: ``"auto"`` (detect from keys) or one of `SOURCES`.
        strict: require every model entry to be loaded and nothing left over.

    Raises:
        WeightsError: unreadable or unsafe file, conversion failure, or (``strict``) a mismatch.
    """
    state = read_checkpoint_file(path)
    resolved = _resolve_source(state, model, source)
    try:
        converted = convert_state_dict(state, resolved)
        return load_state_dict_report(model, converted, path=str(path), source=resolved, strict=strict)
    except WeightsError as error:
        raise WeightsError(f"{path}: {error}") from error


def load_pretrained(
    model: nn.Module, path: str | os.PathLike, source: str = "auto", verbose: bool = True
) -> LoadReport:
    """Initialise ``model`` from a checkpoint trained for another task or class count.

    Loads every entry whose name and shape match (e.g. a Mapillary-trained classifier with 65 classes is
    skipped for a 19-class model, as is an ImageNet backbone's missing head), prints `LoadReport.summary`.

    Raises:
        WeightsError: unreadable or unsafe file, or nothing at all could be loaded.
    """
    report = load_weights(model, path, source=source, strict=False)
    if verbose:
        print(report.summary())
    if not report.loaded:
        raise WeightsError(f"{path}: no entry of this checkpoint fits {type(model).__name__}:\n{report.summary()}")
    return report


__all__ = ["load_pretrained", "load_weights"]
