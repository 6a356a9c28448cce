"""The branches of a multi-scale OpenVINO graph, checked against the resolution each scale runs at."""

import pytest
import torch

pytest.importorskip("openvino")

from attnseg.benchmark import benchmark_image, calibrate_batchnorm  # noqa: E402
from attnseg.errors import AttnsegError  # noqa: E402
from attnseg.export.openvino import export_openvino  # noqa: E402
from attnseg.export.scale_branches import float_scale_operations, match_scales, scale_branches  # noqa: E402
from attnseg.models import create_model  # noqa: E402

KWARGS = {"ocr_mid_channels": 32, "ocr_key_channels": 16, "attention_channels": 16}


@pytest.fixture(scope="module")
def three_scale_graph(tmp_path_factory):
    import openvino as ov

    torch.manual_seed(0)
    model = create_model("mscale_ocr_hrnet_w18_small_v1", num_classes=19, **KWARGS).eval()
    calibrate_batchnorm(model, benchmark_image(64, 128, seed=1))
    target = tmp_path_factory.mktemp("branches") / "fp32.xml"
    export_openvino(model, target, (1, 3, 64, 128), scales=(0.5, 1.0, 2.0), verify=False)
    return ov.Core().read_model(str(target))


def test_each_branch_is_the_network_at_its_own_resolution(three_scale_graph):
    """A branch's largest convolution output is the stride-2 stem's, half of the scaled 64x128 input; the lower
    scales also run the scale attention, and no operation belongs to two branches."""
    branches = scale_branches(three_scale_graph, (1, 3, 64, 128))
    assert sorted(branches) == [0.5, 1.0, 2.0]
    assert len(branches[0.5]) == len(branches[1.0]) > len(branches[2.0]) > 50
    shapes = {op.get_friendly_name(): op.get_output_partial_shape(0).to_shape()
              for op in three_scale_graph.get_ops() if op.get_type_name() == "Convolution"}  # fmt: skip
    for scale, names in branches.items():
        largest = max(shapes[name][2] * shapes[name][3] for name in names if name in shapes)
        assert largest == (64 * scale / 2) * (128 * scale / 2)
    assert len(set().union(*branches.values())) == sum(len(names) for names in branches.values())


def test_float_scale_operations_are_the_named_branches(three_scale_graph):
    branches = scale_branches(three_scale_graph, (1, 3, 64, 128))
    names = float_scale_operations(three_scale_graph, (1, 3, 64, 128), (0.5, 1.0))
    assert sorted(names) == sorted(branches[0.5] + branches[1.0])


@pytest.mark.parametrize("requested, message", [
    ((0.75,), "--float-scales 0.75: the graph runs scales 0.5, 1, 2"),
    ((0.5, 1.0, 2.0), "--float-scales names every scale of the graph"),
])  # fmt: skip
def test_scales_the_graph_does_not_run_are_refused(requested, message):
    with pytest.raises(AttnsegError, match=message):
        match_scales(requested, (0.5, 1.0, 2.0))
