"""What loading a state dict into a model did: `LoadReport`, and the loading step every loader shares."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from attnseg.errors import WeightsError


@dataclass
class LoadReport:
    """What happened when a state dict was loaded into a model.

    Attributes:
        path: the checkpoint file (empty when loaded from memory).
        source: the layout it was read as (`SOURCES`).
        loaded: model keys that received a value.
        missing: model keys the checkpoint did not provide (they keep their current values).
        unexpected: converted checkpoint keys the model does not have (ignored).
        shape_mismatches: ``(key, checkpoint shape, model shape)`` for keys present in both (not loaded).
    """

    path: str
    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatches: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every model key was loaded and nothing was left over."""
        return not (self.missing or self.unexpected or self.shape_mismatches)

    def summary(self, max_keys: int = 10) -> str:
        """Readable multi-line summary; long key lists are shortened to ``max_keys`` entries each."""
        total = len(self.loaded) + len(self.missing) + len(self.shape_mismatches)
        lines = [f"{self.path or '<state dict>'} ({self.source}): loaded {len(self.loaded)}/{total} model entries"]

        def listing(title: str, items: list[str]) -> None:
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines.extend(f"    {item}" for item in items[:max_keys])
                if len(items) > max_keys:
                    lines.append(f"    ... and {len(items) - max_keys} more")

        mismatches = [f"{k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in self.shape_mismatches]
        listing("shape mismatches, skipped", mismatches)
        listing("missing from checkpoint", _collapse_keys(self.missing))
        listing("unexpected in checkpoint", _collapse_keys(self.unexpected))
        return "\n".join(lines)


def _collapse_keys(keys: list[str]) -> list[str]:
    """Group keys by module prefix so that a missing head reads as one line, not dozens."""
    groups: dict[str, int] = {}
    for key in keys:
        prefix = ".".join(key.split(".")[:2])
        groups[prefix] = groups.get(prefix, 0) + 1
    return [f"{prefix}.* ({count} entries)" if count > 1 else next(k for k in keys if k.startswith(prefix))
            for prefix, count in groups.items()]


def load_state_dict_report(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    path: str = "",
    source: str = "native",
    strict: bool = True,
) -> LoadReport:
    """Load an already converted state dict; the loading step shared by `load_weights` and `load_pretrained`.

    Entries whose shape differs from the model's are never loaded (listed in ``shape_mismatches``).

    Raises:
        WeightsError: ``strict`` and the checkpoint does not match the model exactly.
    """
    own = model.state_dict()
    report = LoadReport(path=path, source=source)
    usable: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key not in own:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            report.shape_mismatches.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            usable[key] = value
    report.missing = [key for key in own if key not in state_dict]
    report.loaded = [key for key in own if key in usable]
    if strict and not report.complete:
        raise WeightsError(f"checkpoint does not match {type(model).__name__} exactly:\n{report.summary()}")
    model.load_state_dict(usable, strict=False)
    return report


__all__ = ["LoadReport", "load_state_dict_report"]
