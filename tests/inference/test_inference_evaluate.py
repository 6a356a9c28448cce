import numpy as np
import pytest
import torch
from torch import nn

from attnseg.config.build import EvalSampleDataset, ShardSampler, build_eval_loader, collate_eval_batch
from attnseg.config.schema import DataConfig
from attnseg.errors import ConfigError
from attnseg.inference.evaluate import evaluate_model, scores_to_labels
from attnseg.models.outputs import SegmentationOutput

NUM_CLASSES = 4


class ThresholdModel(nn.Module):
    """Pointwise: class = bucket of channel 0 (flip/scale/window equivariant up to resampling)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(3.0))

    def forward(self, x):
        centres = torch.arange(NUM_CLASSES, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return SegmentationOutput(logits=-self.scale * (x[:, :1] - centres) ** 2)


class FakeMscale(ThresholdModel):
    """Records the scales it is called with, through the scales seam (`attnseg.models.fuses_scales`)."""

    FUSES_SCALES = True
    eval_scales = (0.5, 1.0, 2.0)

    def __init__(self):
        super().__init__()
        self.seen_scales = []
        self.seen_keep = []

    def forward(self, x, scales=None, keep_scale_outputs=False):
        self.seen_scales.append(self.eval_scales if scales is None else tuple(scales))
        self.seen_keep.append(keep_scale_outputs)
        return super().forward(x)


def _batches(n=3, h=8, w=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for i in range(n):
        # blocks of 4x4 pixels: resampling at other scales blends only block borders
        coarse = torch.randint(0, NUM_CLASSES, (1, h // 4, w // 4), generator=g)
        labels = coarse.repeat_interleave(4, 1).repeat_interleave(4, 2)
        image = labels.float().unsqueeze(1).expand(1, 3, h, w).clone()
        image += 0.1 * torch.randn(image.shape, generator=g)
        labels[0, 0, :3] = 255
        batches.append({"image": image, "label": labels, "name": [f"img{i}"]})
    return batches


def test_perfect_model_scores_one_and_callback_gets_predictions():
    model = ThresholdModel().train()
    seen = {}

    def on_prediction(names, predictions, extras):
        assert predictions.dtype == np.uint8 and predictions.shape == (1, 8, 12)
        assert extras["scores"].shape == (1, NUM_CLASSES, 8, 12)
        seen[names[0]] = predictions

    metrics = evaluate_model(model, _batches(), NUM_CLASSES, progress=False, on_prediction=on_prediction)
    assert metrics.miou == pytest.approx(1.0) and metrics.acc == pytest.approx(1.0)
    assert metrics.num_images == 3 and metrics.num_pixels == 3 * (8 * 12 - 3)
    assert sorted(seen) == ["img0", "img1", "img2"]
    assert model.training  # mode restored for the training loop


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(flip=True),
        dict(scales=(1.0, 2.0), multi_scale="average", flip=True, fusion="logits"),
        dict(mode="slide", crop_size=(5, 5), stride=(3, 4)),
        dict(precision="bf16"),
    ],
)
def test_recipes_keep_a_pointwise_model_perfect(kwargs):
    metrics = evaluate_model(ThresholdModel(), _batches(), NUM_CLASSES, progress=False, **kwargs)
    assert metrics.miou == pytest.approx(1.0)


def test_hierarchical_passes_the_scales_to_the_model():
    model = FakeMscale()
    evaluate_model(model, _batches(1), NUM_CLASSES, scales=(0.5, 1.0), progress=False)
    assert model.seen_scales == [(0.5, 1.0)] and model.seen_keep == [False]  # per-scale logits only on request
    model.seen_scales.clear()
    evaluate_model(model, _batches(1), NUM_CLASSES, scales=(0.5, 1.0), multi_scale="average", progress=False,
                   keep_scale_outputs=True)
    assert model.seen_scales == [(1.0,), (1.0,)] and model.seen_keep[-1] is True


def test_hierarchical_without_model_support_is_a_config_error():
    with pytest.raises(ConfigError, match="average"):
        evaluate_model(ThresholdModel(), _batches(1), NUM_CLASSES, scales=(0.5, 1.0), progress=False)
    with pytest.raises(ConfigError, match="crop_size"):
        evaluate_model(ThresholdModel(), _batches(1), NUM_CLASSES, mode="slide", progress=False)


def test_unlabelled_batches_reach_callback_without_metrics():
    batches = [dict(b, label=None) for b in _batches(2)]
    names = []
    metrics = evaluate_model(ThresholdModel(), batches, NUM_CLASSES, progress=False,
                             on_prediction=lambda n, p, e: names.extend(n))
    assert names == ["img0", "img1"] and metrics.num_pixels == 0


def test_scores_to_labels_resizes_and_matches_argmax():
    scores = torch.randn(2, 5, 6, 10)
    assert torch.equal(scores_to_labels(scores).long(), scores.argmax(1))
    assert scores_to_labels(scores, (12, 20)).shape == (2, 12, 20)


class _RawDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 5

    def __getitem__(self, index):
        image = np.full((6, 8), index * 10, np.uint8)  # grayscale on purpose
        return {"image": image, "label": np.full((6, 8), index % 3, np.uint8), "name": f"n{index}"}


def test_eval_dataset_loader_and_shards():
    dataset = EvalSampleDataset(_RawDataset(), mean=(10.0, 10.0, 10.0), std=(2.0, 2.0, 2.0))
    item = dataset[2]
    assert item["image"].shape == (3, 6, 8) and float(item["image"][0, 0, 0]) == pytest.approx(5.0)
    assert item["label"].dtype == torch.int64
    loader = build_eval_loader(DataConfig(num_workers=0), batch_size=2, dataset=dataset)
    batches = list(loader)
    assert [b["name"] for b in batches] == [["n0", "n1"], ["n2", "n3"], ["n4"]]
    assert batches[0]["image"].shape == (2, 3, 6, 8) and batches[0]["label"].shape == (2, 6, 8)
    shards = [list(ShardSampler(5, rank, 2)) for rank in range(2)]
    assert shards == [[0, 2, 4], [1, 3]]
    unlabelled = collate_eval_batch([dict(item, label=None)])
    assert unlabelled["label"] is None


def test_folder_dataset_layouts(tmp_path):
    import cv2

    from attnseg.config.build import build_eval_dataset
    from attnseg.errors import ConfigError

    for split in ("val",):
        (tmp_path / split / "images" / "sub").mkdir(parents=True)
        (tmp_path / split / "labels" / "sub").mkdir(parents=True)
        cv2.imwrite(str(tmp_path / split / "images" / "sub" / "a.png"), np.zeros((4, 6, 3), np.uint8))
        cv2.imwrite(str(tmp_path / split / "labels" / "sub" / "a.png"), np.full((4, 6), 2, np.uint8))
    dataset = build_eval_dataset(DataConfig(dataset="folder", root=str(tmp_path)), "val")
    item = dataset[0]
    assert item["image"].shape == (3, 4, 6) and int(item["label"][0, 0]) == 2
    (tmp_path / "test.txt").write_text("val/images/sub/a.png\n")
    unlabelled = build_eval_dataset(DataConfig(dataset="folder", root=str(tmp_path)), "test")
    assert unlabelled[0]["label"] is None
    with pytest.raises(ConfigError, match="needs"):
        build_eval_dataset(DataConfig(dataset="folder", root=str(tmp_path)), "train")


def test_bf16_runs_only_the_model_in_bf16():
    from attnseg.inference.evaluate import InferenceRecipe, predict_scores

    seen = []

    def model(x):
        out = torch.nn.functional.conv2d(x, torch.ones(NUM_CLASSES, 3, 1, 1))
        seen.append(out.dtype)
        return out

    recipe = InferenceRecipe(flip=True, precision="bf16")
    result = predict_scores(model, torch.randn(1, 3, 4, 6), recipe, NUM_CLASSES)
    assert seen == [torch.bfloat16, torch.bfloat16]
    assert result.scores.dtype == torch.float32 and result.are_probabilities
    torch.testing.assert_close(result.scores.sum(1), torch.ones(1, 4, 6))


def test_fp16_is_float16_autocast_on_cuda_and_refused_elsewhere():
    """The CUDA path itself needs a GPU (not in this test run); what decides it is checked here: the dtype chosen
    for each device type, and the refusal on CPU before any pass."""
    from attnseg.config.schema import EvalConfig
    from attnseg.inference.evaluate import InferenceRecipe, autocast_dtype, predict_scores

    assert autocast_dtype("fp16", "cuda") is torch.float16
    assert autocast_dtype("bf16", "cuda") is torch.bfloat16 and autocast_dtype("bf16", "cpu") is torch.bfloat16
    assert autocast_dtype("fp32", "cuda") is None
    for device_type in ("cpu", "mps"):
        with pytest.raises(ConfigError, match=f"fp16 evaluation needs a CUDA device, not {device_type}"):
            autocast_dtype("fp16", device_type)
    with pytest.raises(ConfigError, match="'fp32', 'bf16' or 'fp16'"):
        autocast_dtype("int8", "cuda")
    assert EvalConfig(precision="fp16").precision == "fp16"
    calls = []
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        predict_scores(lambda x: calls.append(x), torch.randn(1, 3, 4, 6), InferenceRecipe(precision="fp16"), 4)
    assert calls == []  # refused before the model ran
