"""`attnseg demo`: budget arithmetic, attention shares, the deadline trainer, the page, and a tiny end-to-end run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from attnseg.demo import (
    FALLBACK_RECIPES,
    DeadlineTrainer,
    affordable_iters,
    choose_recipe,
    comparison_table,
    demo_recipes,
    effective_scale_weights,
    ensure_dataset,
    evaluation_reserve,
    recipe_choice_line,
    write_index_html,
)
from attnseg.errors import ConfigError
from attnseg.models.outputs import SegmentationOutput

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------------
# Pure arithmetic
# ---------------------------------------------------------------------------------------------------------------------


def _choose(steps: dict[str, float], seconds: float = 480.0, reserve: float = 40.0, iters: int = 1250):
    measured: list[str] = []

    def measure(recipe):
        measured.append(recipe.key)
        return steps[recipe.key], reserve, iters

    chosen, trials = choose_recipe(FALLBACK_RECIPES["mscale"], measure, lambda: seconds)
    return chosen, trials, measured


def test_bf16_cpu_keeps_the_default_recipe_and_measures_nothing_else():
    # 0.38 s per step (AVX-512 bf16 / AMX): 440 s buy 1157 of 1250 iterations.
    chosen, trials, measured = _choose({"default": 0.38, "crops96": 0.22, "crops64_narrow": 0.1})
    assert chosen.recipe.key == "default" and chosen.fits and measured == ["default"]
    line = recipe_choice_line(chosen, trials, "bf16", 2, "AMD EPYC 9B14 (AVX-512 bf16, no AMX)")
    assert "0.38 s" in line and "AVX-512 bf16" in line and "1157 of 1250" in line and "instead" not in line


def test_slow_fp32_cpu_keeps_the_default_recipe_while_a_third_of_its_iterations_fit():
    # Emulated AVX2 on a Sapphire Rapids: fp32 twice the bf16 step; 550 of 1250 iterations of the default recipe
    # learn more than 977 of the cheaper one.
    chosen, trials, measured = _choose({"default": 0.8, "crops96": 0.45, "crops64_narrow": 0.25})
    assert chosen.recipe.key == "default" and chosen.fits and measured == ["default"]
    assert [t.affordable for t in trials] == [550]


def test_much_slower_cpu_falls_back_to_the_first_recipe_that_fits():
    chosen, trials, measured = _choose({"default": 1.6, "crops96": 0.7, "crops64_narrow": 0.25})
    assert chosen.recipe.key == "crops96" and measured == ["default", "crops96"]
    assert [t.affordable for t in trials] == [275, 628]
    line = recipe_choice_line(chosen, trials, "fp32", 2, "AMD EPYC 7B13 (AVX2 only (no AVX-512, no bf16))")
    assert "1.60 s" in line and "275 of 1250" in line and "96x192 crops" in line and "fits" in line


def test_when_nothing_fits_the_cheapest_share_wins():
    # Emulated bf16 on an AVX2 CPU, ~6 s per step: nothing reaches 35% of its iterations.
    chosen, trials, measured = _choose({"default": 6.0, "crops96": 3.4, "crops64_narrow": 1.6})
    assert chosen.recipe.key == "crops64_narrow" and not chosen.fits and len(measured) == 3
    assert chosen.affordable == 275
    assert "none fits" in recipe_choice_line(chosen, trials, "fp32", 2, "cpu")


def test_fallback_recipes_are_valid_overrides_of_the_demo_configs():
    from attnseg.config import load_config

    for family, recipes in FALLBACK_RECIPES.items():
        assert recipes[0].key == "default" and not recipes[0].overrides
        for recipe in recipes[1:]:
            config = load_config(REPO / "configs" / f"demo_{family}.yaml", list(recipe.overrides))
            assert tuple(config.data.crop_size) < (128, 256)


def test_affordable_iters_limits():
    assert affordable_iters(10, seconds_left=100.0, seconds_per_iter=1.0, max_iters=50) == 50  # capped
    assert affordable_iters(10, seconds_left=20.5, seconds_per_iter=1.0, max_iters=50) == 30  # whole steps only
    assert affordable_iters(10, seconds_left=0.0, seconds_per_iter=1.0, max_iters=50) == 11  # step in progress ends
    assert affordable_iters(10, seconds_left=-5.0, seconds_per_iter=1.0, max_iters=50) == 11
    assert affordable_iters(0, seconds_left=0.0, seconds_per_iter=1.0, max_iters=50, min_iters=5) == 5
    assert affordable_iters(3, seconds_left=10.0, seconds_per_iter=0.0, max_iters=50) == 50  # nothing measured yet


def test_recipes_and_reserve():
    hierarchical = demo_recipes(True, [1.0, 0.5, 2.0])
    assert [r.key for r in hierarchical] == ["single", "hierarchical", "average_flip"]
    assert [r.scales for r in hierarchical] == [(1.0,), (0.5, 1.0, 2.0), (0.5, 1.0, 2.0)]
    assert hierarchical[1].title == "hierarchical attention 0.5/1/2"
    assert [r.relative_cost for r in hierarchical] == [1.0, 5.25, 10.5]
    assert [r.multi_scale for r in demo_recipes(False, [0.25, 0.5, 1.0])] == ["hierarchical", "average", "average"]
    flipped = demo_recipes(True, [0.25, 0.5, 1.0], flip=True)
    assert flipped[1].flip and flipped[1].title == "hierarchical attention 0.25/0.5/1 + flip"
    assert flipped[1].relative_cost == flipped[2].relative_cost  # learned attention vs averaging, both flipped
    with pytest.raises(ConfigError, match="must contain 1.0"):
        demo_recipes(True, [0.5, 2.0])
    assert evaluation_reserve(0.0, 30, hierarchical, fixed=7.0) == 7.0
    per_image = sum(r.relative_cost for r in hierarchical)
    assert evaluation_reserve(0.1, 10, hierarchical, margin=1.0, fixed=0.0) == pytest.approx(per_image)


def test_scale_shares_limiting_cases():
    scales = (0.5, 1.0, 2.0)
    ones = {1.0: torch.ones(1, 1, 4, 8), 0.5: torch.ones(1, 1, 2, 4)}
    zeros = {1.0: torch.zeros(1, 1, 4, 8), 0.5: torch.zeros(1, 1, 2, 4)}
    shares = effective_scale_weights(ones, scales)
    assert set(shares) == {0.5, 1.0, 2.0}
    assert torch.equal(shares[0.5], torch.ones(1, 1, 4, 8))  # the smallest scale is applied last: it wins
    assert shares[1.0].abs().max() == 0 and shares[2.0].abs().max() == 0
    shares = effective_scale_weights(zeros, scales)
    assert torch.equal(shares[2.0], torch.ones(1, 1, 4, 8))  # no attention anywhere: the largest scale stays
    half = {1.0: torch.full((1, 1, 4, 8), 0.5), 0.5: torch.rand(1, 1, 2, 4)}
    shares = effective_scale_weights(half, scales)
    total = shares[0.5] + shares[1.0] + shares[2.0]
    assert torch.allclose(total, torch.ones_like(total))
    assert torch.allclose(shares[1.0], shares[2.0])  # a_1 = 0.5 splits what 0.5x leaves evenly
    assert effective_scale_weights({}, (1.0,)) == {}
    with pytest.raises(ValueError):
        effective_scale_weights(ones, (0.5, 2.0))


def test_scale_shares_match_the_fusion():
    from attnseg.models.mscale.fusion import hierarchical_fusion

    torch.manual_seed(0)
    per_scale = {}

    def forward(images):  # constant logits per scale, random attention
        scale = images.shape[-1] / 16
        logits = torch.full((1, 1, *images.shape[-2:]), float(scale))
        attention = torch.rand(1, 1, *images.shape[-2:])
        per_scale[scale] = attention
        return logits, None, attention

    fused = hierarchical_fusion(forward, torch.zeros(1, 3, 8, 16), (0.5, 1.0, 2.0))
    shares = effective_scale_weights(fused.scale_attention, (0.5, 1.0, 2.0))
    expected = sum(scale * share for scale, share in shares.items())
    assert torch.allclose(fused.logits, expected, atol=1e-6)


def test_comparison_table_lists_every_recipe():
    table = comparison_table({"single": {"title": "single scale", "mIoU": 0.5, "Acc": 0.9, "mDice": 0.6,
                                         "seconds": 1.0},
                              "ms": {"title": "hierarchical", "mIoU": None, "Acc": 0.8, "mDice": 0.5}})
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["recipe", "mIoU"]
    assert "0.5000" in lines[2] and "single scale" in lines[2]
    assert "hierarchical" in lines[3] and " - " in lines[3] + " "


def test_index_html_references_pictures(tmp_path):
    record = {"model": "m<x>", "iterations": 5, "planned_iterations": 9, "stopped_by_deadline": True,
              "seconds": {"data": 1, "train": 2, "evaluate": 3, "total": 6}, "threads": 2, "run_dir": "r",
              "results": {"single": {"title": "single", "mIoU": 0.4, "Acc": 0.9, "mDice": 0.5, "Kappa": 0.8,
                                     "seconds": 1, "classes": {"road": {"IoU": 0.9}, "sky": {"IoU": None}}}}}
    pictures = [{"name": "a", "overlay": "pictures/overlay/a.png", "compare": "pictures/compare/a.png",
                 "attention": {"0.5": "pictures/attention/a_attn_0.5x.png"}, "weights": {},
                 "scale_predictions": {}, "shares_rgb": "pictures/attention/a_shares_rgb.png"}]
    page = write_index_html(tmp_path, record, pictures).read_text()
    for src in ("pictures/overlay/a.png", "pictures/compare/a.png", "pictures/attention/a_attn_0.5x.png",
                "pictures/attention/a_shares_rgb.png"):
        assert f'src="{src}"' in page
    assert "m&lt;x&gt;" in page and "m<x>" not in page  # escaped
    assert "0.4000" in page and "stopped for the time budget" in page


# ---------------------------------------------------------------------------------------------------------------------
# Deadline trainer
# ---------------------------------------------------------------------------------------------------------------------


class _TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, images):
        return SegmentationOutput(logits=self.conv(images))


class _Sampler:
    batch_size, world_size = 1, 1

    def set_epoch(self, epoch, start_batch=0):
        pass

    def num_batches(self):
        return 4

    def epoch_plan(self, epoch):
        return list(range(4))


class _SlowLoader:
    def __init__(self, delay: float):
        self.delay = delay

    def __iter__(self):
        for _ in range(4):
            time.sleep(self.delay)
            yield {"image": torch.randn(1, 3, 4, 4), "label": torch.randint(0, 2, (1, 4, 4))}


def _trainer(tmp_path, deadline, delay=0.0, max_iters=12, reserve=0.0):
    model = _TinyNet()

    def criterion(output, labels):
        loss = nn.functional.cross_entropy(output.logits, labels)
        return {"ce": loss, "loss": loss}

    return DeadlineTrainer(model, criterion, torch.optim.SGD(model.parameters(), lr=0.1), _SlowLoader(delay),
                           _Sampler(), max_iters=max_iters, run_dir=tmp_path, progress=False, tensorboard=False,
                           log_interval=100, deadline=deadline, reserve=reserve, warmup_steps=2,
                           replan_every=2)  # fmt: skip


def test_deadline_trainer_without_deadline_runs_all_iterations(tmp_path):
    trainer = _trainer(tmp_path, None)
    assert trainer.train()["iteration"] == 12
    assert not trainer.stopped_by_deadline


def test_deadline_trainer_stops_at_a_past_deadline(tmp_path):
    trainer = _trainer(tmp_path, time.perf_counter() - 1.0)
    assert trainer.train()["iteration"] == 1
    assert trainer.stopped_by_deadline and trainer.planned_iters == 12


def test_deadline_trainer_replans_from_step_time(tmp_path):
    # 50 ms per step and 0.4 s left: about 8 steps fit of the 40 planned; the poly schedule follows the new end.
    trainer = _trainer(tmp_path, time.perf_counter() + 0.4, delay=0.05, max_iters=40)
    iterations = trainer.train()["iteration"]
    assert 3 <= iterations < 20
    assert trainer.stopped_by_deadline
    assert trainer.schedule["max_iters"] == trainer.max_iters == iterations


def test_deadline_trainer_keeps_the_reserve_it_is_told(tmp_path):
    calls = []

    def reserve():  # what follows training suddenly needs more than the whole budget
        calls.append(1)
        return 1000.0

    trainer = _trainer(tmp_path, time.perf_counter() + 100.0, max_iters=40, reserve=reserve)
    assert trainer.train()["iteration"] <= 4  # stops at the first re-plan (after 2 warm-up steps)
    assert calls and trainer.stopped_by_deadline
    fixed = _trainer(tmp_path / "fixed", time.perf_counter() + 100.0, max_iters=5, reserve=50.0)
    assert fixed.train()["iteration"] == 5 and fixed.training_deadline < fixed.deadline


# ---------------------------------------------------------------------------------------------------------------------
# End to end at tiny settings
# ---------------------------------------------------------------------------------------------------------------------


def test_demo_data_is_reused_only_when_drawn_by_the_same_generator(tmp_path):
    root = tmp_path / "data"
    assert ensure_dataset(root, 1, 1, 32, 64, seed=0, workers=1, progress=False)
    assert not ensure_dataset(root, 1, 1, 32, 64, seed=0, workers=1, progress=False)
    marker = root / "demo_dataset.json"
    older = {**json.loads(marker.read_text()), "scenes_version": 0}  # written by an earlier release
    marker.write_text(json.dumps(older))
    assert ensure_dataset(root, 1, 1, 32, 64, seed=0, workers=1, progress=False)
    assert not ensure_dataset(root, 1, 1, 32, 64, seed=0, workers=1, progress=False)


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    from attnseg.cli.main import main

    out = tmp_path_factory.mktemp("demo")
    code = main(["demo", "--out", str(out), "--minutes", "5", "--train-images", "2", "--val-images", "1",
                 "--size", "32x64", "--pictures", "1", "--no-progress", "train.iters=2", "train.batch_size=2",
                 "data.crop_size=[32,64]", "data.class_uniform_tile=32"])  # fmt: skip
    assert code == 0
    return out


def test_demo_writes_page_pictures_metrics_and_run_dir(tiny_demo, capsys):
    out = tiny_demo
    record = json.loads((out / "demo_metrics.json").read_text())
    assert list(record["results"]) == ["single", "hierarchical", "average_flip"]
    for result in record["results"].values():
        assert 0.0 <= result["mIoU"] <= 1.0 and result["numImages"] == 1
    assert record["iterations"] == 2
    page = (out / "index.html").read_text()
    sources = re.findall(r'src="([^"]+)"', page)
    # The demo config's pyramid 0.25/0.5/1: attention for the two smaller scales, a prediction for each.
    assert any("attn_0.25x" in s for s in sources) and any("compare" in s for s in sources)
    assert any("shares_rgb" in s for s in sources) and any("_pred_1x" in s for s in sources)
    assert "scale shares (R 0.25x, G 0.5x, B 1x)" in page
    for source in sources:
        assert (out / source).is_file(), source
    run = out / "run"
    for name in ("config.yaml", "checkpoints/best.safetensors", "checkpoints/best.json", "checkpoints/last.json"):
        assert (run / name).is_file(), name


def test_demo_run_dir_feeds_attnseg_eval(tiny_demo, capsys):
    from attnseg.cli.main import main

    run = tiny_demo / "run"
    assert main(["eval", str(run / "config.yaml"), "--weights", str(run), "--no-progress", "--scales", "1.0",
                 "--json", str(tiny_demo / "eval.json")]) == 0  # fmt: skip
    again = json.loads((tiny_demo / "eval.json").read_text())
    single = json.loads((tiny_demo / "demo_metrics.json").read_text())["results"]["single"]
    # bf16 evaluation in the demo, fp32 here: same trained weights, the confusion may differ by a few pixels.
    assert again["numImages"] == 1 and abs(again["Acc"] - single["Acc"]) < 0.05
    predictions = tiny_demo / "predict"
    assert main(["predict", str(run), str(tiny_demo / "data" / "leftImg8bit" / "val"), "--out", str(predictions),
                 "--no-progress"]) == 0  # fmt: skip
    assert len(list(predictions.rglob("*_labels.png"))) == 1


def test_demo_rejects_an_existing_run(tiny_demo, capsys):
    from attnseg.cli.main import main

    assert main(["demo", "--out", str(tiny_demo), "--train-images", "2", "--val-images", "1", "--size", "32x64",
                 "--no-progress", "train.iters=1"]) == 2  # fmt: skip
    assert "already holds a training run" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_page_screenshot(tiny_demo, tmp_path):
    """Headless Chromium renders index.html with its pictures (needs `apt-get install -y chromium`)."""
    if shutil.which("chromium") is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium")
    png = tmp_path / "page.png"
    subprocess.run([str(REPO / "scripts" / "screenshot_demo.sh"), str(tiny_demo), str(png)], check=True, timeout=180)
    import cv2

    image = cv2.imread(str(png))
    assert image is not None and image.shape[0] >= 600
    assert image.std() > 10  # pictures and tables, not a blank page


def test_demo_psanet_averages_scales(tmp_path, capsys):
    from attnseg.cli.main import main

    code = main(["demo", "--model", "psanet_r18_narrow", "--out", str(tmp_path), "--train-images", "2",
                 "--val-images", "1", "--size", "32x64", "--pictures", "1", "--no-progress", "train.iters=1",
                 "train.batch_size=2", "data.crop_size=[32,64]", "data.class_uniform_tile=32"])  # fmt: skip
    assert code == 0
    record = json.loads((tmp_path / "demo_metrics.json").read_text())
    assert record["model"] == "psanet_r18_narrow"
    assert list(record["results"]) == ["single", "average3", "average_flip"]
    page = (tmp_path / "index.html").read_text()
    assert 'src="pictures/compare/' in page and "attn_" not in page
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith("[demo] open file://")


# ---------------------------------------------------------------------------------------------------------------------
# What the demo asks of models and datasets
# ---------------------------------------------------------------------------------------------------------------------


def test_single_scale_forward_is_the_scale_one_model_and_leaves_the_scales():
    from attnseg.demo.measure import model_fuses_scales, single_scale_forward
    from attnseg.models import create_model

    fused = create_model("mscale_ocr_hrnet_w18_small", num_classes=2, eval_scales=(0.5, 1.0)).eval()
    single = create_model("mscale_ocr_hrnet_w18_small", num_classes=2, eval_scales=(1.0,)).eval()
    single.load_state_dict(fused.state_dict())
    images = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        assert torch.allclose(single_scale_forward(fused, images).logits, single(images).logits, atol=1e-6)
        assert not torch.allclose(fused(images).logits, single(images).logits, atol=1e-4)  # 0.5 is fused again
    assert tuple(fused.eval_scales) == (0.5, 1.0) and model_fuses_scales(fused)
    plain = _TinyNet()
    assert not model_fuses_scales(plain) and torch.equal(single_scale_forward(plain, images).logits,
                                                         plain(images).logits)  # fmt: skip


def test_fallback_class_table_is_cityscapes_for_19_classes_else_numbered_greys():
    from attnseg.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, fallback_class_table
    from attnseg.export.onnx import default_checkpoint_info

    names, palette = fallback_class_table(19)
    assert names == list(CITYSCAPES_CLASSES) and np.array_equal(palette, CITYSCAPES_PALETTE)
    names, palette = fallback_class_table(3)
    assert names == ["class_0", "class_1", "class_2"] and palette.dtype == np.uint8
    assert palette.tolist() == [[0, 0, 0], [127, 127, 127], [255, 255, 255]]
    assert fallback_class_table(1)[1].tolist() == [[0, 0, 0]]
    info = default_checkpoint_info(3)  # models exported without a checkpoint carry the same table
    assert info["class_names"] == names and info["palette"] == palette.astype(int).tolist()
