"""Evaluation throughput and where the time goes around the model (target: <= 10 % outside the forward).

Writes a few synthetic full-size (1024x2048) image/label PNG pairs, then for each image times, separately:
decode (cv2 PNG image + label), normalise, model forward (narrow model; its logits upsample is inside), argmax
(`scores_to_labels`), confusion update, dump (colour + overlay + labelIds PNGs via `PredictionDumper`). A second pass
runs the real `evaluate_model` loop with the dumper to report end-to-end images/s. Prints medians and shares.

    python -m attnseg.benchmark.eval [--images 3] [--model ocr_hrnet_w18_small] [--precision fp32|bf16]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from attnseg.data.labels import CITYSCAPES_PALETTE, train_id_to_id
from attnseg.data.statistics import IMAGENET_MEAN as MEAN
from attnseg.data.statistics import IMAGENET_STD as STD
from attnseg.inference.dump import PredictionDumper
from attnseg.inference.evaluate import InferenceRecipe, eval_mode, evaluate_model, model_forward, scores_to_labels
from attnseg.inference.preprocess import normalize_image
from attnseg.metrics.confusion import ConfusionMatrix
from attnseg.models import create_model


def write_images(folder: Path, count: int, height: int, width: int) -> list[tuple[Path, Path]]:
    rng = np.random.default_rng(0)
    pairs = []
    for index in range(count):
        coarse = rng.integers(0, 256, (height // 32, width // 32, 3), dtype=np.uint8)
        image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
        image = cv2.add(image, rng.integers(0, 20, image.shape, dtype=np.uint8))
        labels = cv2.resize(rng.integers(0, 19, (height // 64, width // 64), dtype=np.uint8), (width, height),
                            interpolation=cv2.INTER_NEAREST)  # fmt: skip
        image_path, label_path = folder / f"img{index}.png", folder / f"lab{index}.png"
        cv2.imwrite(str(image_path), image)
        cv2.imwrite(str(label_path), labels)
        pairs.append((image_path, label_path))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--model", default="ocr_hrnet_w18_small")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = create_model(args.model, num_classes=19).eval()
    recipe = InferenceRecipe(precision=args.precision)
    times: dict[str, list[float]] = {k: [] for k in ("decode", "normalise", "forward", "argmax", "confusion", "dump")}
    upsample_times = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pairs = write_images(folder, args.images, args.height, args.width)
        dumper = PredictionDumper(folder / "dump", CITYSCAPES_PALETTE, MEAN, STD,
                                  kinds=("color", "overlay", "labelIds"), train_id_to_label_id=train_id_to_id)
        confusion = ConfusionMatrix(19)
        forward = model_forward(model, recipe)
        with eval_mode(model), torch.inference_mode():
            for image_path, label_path in pairs:
                clock = time.perf_counter()
                image = cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB)
                label = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
                times["decode"].append(time.perf_counter() - clock)

                clock = time.perf_counter()
                x = normalize_image(image, MEAN, STD)[None]
                target = torch.from_numpy(label.astype(np.int64))[None]
                times["normalise"].append(time.perf_counter() - clock)

                clock = time.perf_counter()
                autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
                with autocast:
                    logits = forward(x).logits.float()
                times["forward"].append(time.perf_counter() - clock)

                low = torch.randn(1, 19, args.height // 4, args.width // 4)
                clock = time.perf_counter()
                F.interpolate(low, size=(args.height, args.width), mode="bilinear", align_corners=False)
                upsample_times.append(time.perf_counter() - clock)

                clock = time.perf_counter()
                prediction = scores_to_labels(logits)
                times["argmax"].append(time.perf_counter() - clock)

                clock = time.perf_counter()
                confusion.update(prediction, target)
                times["confusion"].append(time.perf_counter() - clock)

                clock = time.perf_counter()
                batch = {"image": x, "label": target, "name": [image_path.stem], "image_path": [str(image_path)]}
                dumper([image_path.stem], prediction.numpy(), {"batch": batch})
                times["dump"].append(time.perf_counter() - clock)

        loader = [{"image": normalize_image(cv2.cvtColor(cv2.imread(str(i)), cv2.COLOR_BGR2RGB), MEAN, STD)[None],
                   "label": torch.from_numpy(cv2.imread(str(l), cv2.IMREAD_UNCHANGED).astype(np.int64))[None],
                   "name": [i.stem], "image_path": [str(i)]} for i, l in pairs]  # fmt: skip
        clock = time.perf_counter()
        evaluate_model(model, loader, 19, precision=args.precision, progress=False, on_prediction=dumper)
        loop_seconds = time.perf_counter() - clock

    medians = {key: statistics.median(values) for key, values in times.items()}
    total = sum(medians.values())
    print(f"{args.model} {args.precision} {args.height}x{args.width}, {args.images} images, {args.threads} threads")
    print(f"{'stage':<12} {'median s':>9} {'share':>7}")
    for key, value in medians.items():
        print(f"{key:<12} {value:>9.3f} {value / total:>7.1%}")
    outside = total - medians["forward"]
    print(f"{'total':<12} {total:>9.3f}")
    print(f"outside the forward: {outside:.3f} s = {outside / total:.1%} (target <= 10%)")
    print(f"  (logits upsample 1/4 -> full, inside the forward: {statistics.median(upsample_times):.3f} s)")
    print(f"evaluate_model loop with dumps: {args.images / loop_seconds:.3f} images/s "
          f"({loop_seconds / args.images:.2f} s/image, decode excluded)")  # fmt: skip


if __name__ == "__main__":
    main()
