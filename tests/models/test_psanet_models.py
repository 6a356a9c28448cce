"""PSANet builders: output contract, gradients to every parameter, semseg checkpoint layout, ONNX export."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from psanet_reference_layouts import fill_layout, semseg_psanet_layout

from attnseg.models import MODEL_BUILDERS, SegmentationOutput, create_model
from attnseg.models.heads.psa import PointwiseSpatialAttention
from attnseg.models.ops.psamask import COLLECT, DISTRIBUTE
from attnseg.models.psanet import (
    PSANET_BUILDERS,
    convert_paddle_psanet_state_dict,
    convert_semseg_psanet_state_dict,
    semseg_psanet_build_args,
)

PSANET_NAMES = sorted(PSANET_BUILDERS)


def test_all_psanet_builders_are_registered():
    assert set(PSANET_NAMES) == {"psanet_r50_vd", "psanet_r50", "psanet_r101", "psanet_r18_narrow"}
    assert all(MODEL_BUILDERS[name] is PSANET_BUILDERS[name] for name in PSANET_NAMES)


@pytest.mark.parametrize("name", PSANET_NAMES)
def test_every_parameter_gets_a_gradient(name):
    model = create_model(name, num_classes=5).train()
    images = torch.randn(1, 3, 32, 40)
    out = model(images)
    assert isinstance(out, SegmentationOutput)
    assert out.logits.shape == out.aux_logits.shape == (1, 5, 32, 40)
    (out.logits.square().mean() + 0.4 * out.aux_logits.square().mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no (finite) gradient for {missing[:5]}"
    zero = [n for n, p in model.named_parameters() if not p.grad.any()]
    assert not zero, f"all-zero gradient for {zero[:5]}"


def test_eval_output_contract_at_odd_size():
    model = create_model("psanet_r18_narrow", num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 57, 83))
    assert out.logits.shape == out.aux_logits.shape == (1, 3, 57, 83)
    assert out.scale_logits == {} and out.scale_attention == {}


@pytest.mark.parametrize("psa_type,branches", [(0, ["collect"]), (1, ["distribute"]), (2, ["collect", "distribute"])])
def test_psa_types_build_their_branches(psa_type, branches):
    psa = PointwiseSpatialAttention(16, 8, psa_type, (5, 5), 2, None)
    present = sorted({n.split("_")[0] for n, _ in psa.named_children() if n != "project"})
    assert present == branches
    assert psa.project.conv.in_channels == 8 * len(branches)
    assert psa.normalization_factor == 25.0  # None -> mask area
    assert psa(torch.randn(1, 16, 7, 9)).shape == (1, 32, 7, 9)


def test_compact_attention_uses_the_prediction_as_the_map():
    psa = PointwiseSpatialAttention(8, 4, 2, (3, 4), 2, compact=True, use_softmax=False)
    logits = torch.randn(1, 12, 3, 4)
    collect = psa.attention_map(logits, COLLECT)
    distribute = psa.attention_map(logits, DISTRIBUTE)
    assert torch.equal(collect, logits)
    assert torch.equal(distribute.reshape(12, 12), logits.reshape(12, 12).t())
    assert psa(torch.randn(1, 8, 5, 8)).shape == (1, 16, 5, 8)  # grid (5-1)//2+1 x (8-1)//2+1 = 3x4
    with pytest.raises(ValueError, match="compact"):
        psa(torch.randn(1, 8, 6, 6))


def test_semseg_checkpoint_layout_loads_strictly():
    layout = semseg_psanet_layout(mask=89)
    source = fill_layout(layout)
    checkpoint = {"epoch": 200, "state_dict": source, "optimizer": {}}
    name, kwargs = semseg_psanet_build_args(checkpoint)
    assert (name, kwargs) == ("psanet_r50", {"num_classes": 19, "mask_size": (89, 89), "psa_type": 2})
    model = create_model(name, **kwargs)
    model.load_state_dict(convert_semseg_psanet_state_dict(checkpoint), strict=True)
    pairs = {
        "backbone.stem.conv2.weight": "layer0.3.weight",
        "backbone.stem.bn3.running_var": "layer0.7.running_var",
        "backbone.layer2.0.downsample.conv.weight": "layer2.0.downsample.0.weight",
        "psa.collect_reduce.bn.bias": "psa.reduce.1.bias",
        "psa.distribute_hidden.conv.weight": "psa.attention_p.0.weight",
        "psa.distribute_logits.weight": "psa.attention_p.3.weight",
        "psa.project.conv.weight": "psa.proj.0.weight",
        "head.classifier.bias": "cls.4.bias",
        "aux_head.conv.bn.num_batches_tracked": "aux.1.num_batches_tracked",
    }
    state = model.state_dict()
    for ours, theirs in pairs.items():
        assert torch.equal(state[ours], source[f"module.{theirs}"]), ours
    deep = {key: torch.zeros(shape) for key, shape in semseg_psanet_layout((3, 4, 23, 3), classes=21, mask=59).items()}
    assert semseg_psanet_build_args(deep) == ("psanet_r101", {"num_classes": 21, "mask_size": (59, 59), "psa_type": 2})


def test_paddle_converter_permutes_the_projection_branches():
    layout = {"psa.proj._conv.weight": np.arange(2 * 4, dtype=np.float32).reshape(2, 4, 1, 1)}
    converted = convert_paddle_psanet_state_dict(layout)["psa.project.conv.weight"]
    # Paddle input channels [distribute 0-1, collect 2-3] -> ours [collect, distribute].
    assert converted[0, :, 0, 0].tolist() == [2.0, 3.0, 0.0, 1.0]


def _export_and_run(model: torch.nn.Module, images: torch.Tensor) -> None:
    import onnx
    import onnxruntime

    class Outputs(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.net(x)
            return out.logits, out.aux_logits

    wrapper = Outputs(model).eval()  # export and reference both in eval mode
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (images,), buffer, input_names=["images"], opset_version=17, dynamo=False)
    graph = onnx.load_from_string(buffer.getvalue()).graph
    assert {node.domain for node in graph.node} <= {"", "ai.onnx"}, "non-standard operator domain"
    assert not {node.op_type for node in graph.node} & {"ATen", "PythonOp"}
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    results = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        expected = wrapper(images)
    for result, reference in zip(results, expected):
        reference = reference.numpy()
        assert result.shape == reference.shape
        assert np.abs(result - reference).max() <= 1e-4 * np.abs(reference).max()


def test_onnx_export_narrow():
    _export_and_run(create_model("psanet_r18_narrow"), torch.randn(1, 3, 64, 128))


def test_onnx_export_psanet_r50_small_input():
    # 64x128 -> 8x16 features -> 4x8 attention grid under the 89x89 window (over-complete path).
    _export_and_run(create_model("psanet_r50"), torch.randn(1, 3, 64, 128))
