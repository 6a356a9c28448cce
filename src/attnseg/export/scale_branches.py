"""The branches of a multi-scale graph: which operations each scale runs on its own.

`attnseg quantize --float-scales` keeps whole scales in floating point: NNCF is told to leave every quantizable
operation of those scales' branches alone (its ignored scope, by node name). The branches are read off the OpenVINO
graph itself rather than off node names, which follow the order in which tracing met each scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from attnseg.errors import AttnsegError
from attnseg.export.openvino import require_openvino

# Operation types NNCF runs on int8: what keeping a scale's branch in floating point leaves unquantized.
QUANTIZABLE_TYPES = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul")


def scale_branches(model: Any, input_shape: Sequence[int]) -> dict[float, list[str]]:
    """The quantizable operations (`QUANTIZABLE_TYPES`) that each scale of a multi-scale graph runs on its own.

    A scale's branch begins where the input image enters it: the resize of the input to that scale, or for scale 1
    the operations that read the input as it is. An operation belongs to a scale when that branch alone reaches it;
    the fusion of the branches' predictions belongs to none. A single-scale graph is one branch, scale 1.

    Args:
        model: an OpenVINO model whose one input is the normalised image (left unchanged).
        input_shape: (N, C, H, W) at which the resizes' output sizes, hence their scales, are read.

    Returns:
        Sorted node names, keyed by scale (the input resize's ratio, rounded to 3 decimals).
    """
    ov = require_openvino()
    probe = model.clone()
    probe.reshape(ov.PartialShape([int(size) for size in input_shape]))
    height = int(input_shape[2])
    entries: dict[float, list[Any]] = {}
    for target in probe.get_parameters()[0].output(0).get_target_inputs():
        node = target.get_node()
        if node.get_type_name() == "ShapeOf":  # size arithmetic, not image data
            continue
        scale = 1.0
        if node.get_type_name() == "Interpolate":
            scale = round(node.get_output_partial_shape(0)[2].get_length() / height, 3)
        entries.setdefault(scale, []).append(node)
    reached = {scale: _downstream(nodes) for scale, nodes in entries.items()}
    branches = {}
    for scale, nodes in reached.items():
        elsewhere = set().union(*(other for key, other in reached.items() if key != scale))
        branches[scale] = sorted(name for name, kind in nodes - elsewhere if kind in QUANTIZABLE_TYPES)
    return branches


def _downstream(starts: Sequence[Any]) -> set[tuple[str, str]]:
    """(name, type) of `starts` and of every operation their outputs feed, not following shape computations."""
    seen: set[tuple[str, str]] = set()
    pending = list(starts)
    while pending:
        node = pending.pop()
        key = (node.get_friendly_name(), node.get_type_name())
        if key in seen or key[1] == "ShapeOf":
            continue
        seen.add(key)
        pending += [target.get_node() for output in node.outputs() for target in output.get_target_inputs()]
    return seen


def float_scale_operations(model: Any, input_shape: Sequence[int], scales: Sequence[float]) -> list[str]:
    """The operations of `scales`' branches (`scale_branches`), for NNCF's ignored scope.

    Raises:
        AttnsegError: a scale the graph does not run, or every scale it runs (nothing would be quantized).
    """
    branches = scale_branches(model, input_shape)
    # A resize rounds its output size to whole pixels, so a branch's measured scale is within a pixel of its own.
    chosen = match_scales(scales, tuple(branches), tolerance=1.0 / int(input_shape[2]) + 1e-3)
    return [name for key in sorted(chosen) for name in branches[key]]


def match_scales(requested: Sequence[float], graph_scales: Sequence[float], tolerance: float = 1e-3) -> set[float]:
    """The scales of `graph_scales` that `requested` (``--float-scales``) names.

    Raises:
        AttnsegError: a scale the graph does not run, or every scale it runs (nothing would be quantized).
    """
    chosen = set()
    for scale in requested:
        match = [key for key in graph_scales if abs(key - scale) <= tolerance]
        if not match:
            raise AttnsegError(f"--float-scales {scale:g}: the graph runs scales "
                               f"{', '.join(f'{key:g}' for key in sorted(graph_scales))}")  # fmt: skip
        chosen.add(match[0])
    if chosen == set(graph_scales):
        raise AttnsegError("--float-scales names every scale of the graph: nothing would be quantized "
                           "(leave the largest scale out)")  # fmt: skip
    return chosen
