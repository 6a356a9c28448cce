"""Every hyper-parameter of every recipe config, pinned to the upstream line it comes from.

Each table row is (dotted key, expected value, source). The source names the upstream file and field (NVIDIA
``NVIDIA/semantic-segmentation``, PaddleSeg ``PaddlePaddle/PaddleSeg contrib/CityscapesSOTA``, PSANet
``justld/PSANet_paddle``) or the seed README (../shared/seeds/) line the value was checked against; the values
themselves live here, nothing upstream is read at test time. The test compares the loaded config (base files
resolved), so a drifting value fails; and every key a recipe file sets must have a row (or an entry in `NOT_PINNED`
saying why it is no hyper-parameter), so a new key cannot arrive without its source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from attnseg.config import load_config
from attnseg.config.loader import read_yaml_with_base, to_data

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
IMAGENET_MEAN_255 = [123.675, 116.28, 103.53]  # config.py DATASET.MEAN [0.485, 0.456, 0.406] x 255
IMAGENET_STD_255 = [58.395, 57.12, 57.375]  # config.py DATASET.STD [0.229, 0.224, 0.225] x 255

NV_FINE = "NVIDIA scripts/train_cityscapes.yml"
NV_SOTA = "NVIDIA scripts/train_cityscapes_sota.yml"
NV_MAP_TRAIN = "NVIDIA scripts/train_mapillary.yml"
NV_MAP_EVAL = "NVIDIA scripts/eval_mapillary.yml"
NV_TRAIN_PY = "NVIDIA train.py"
NV_CONFIG_PY = "NVIDIA config.py"
PADDLE_CFG = "PaddleSeg contrib/CityscapesSOTA/configs/mscale_ocr_cityscapes_autolabel_mapillary.yml"
PADDLE_README = "seed 001 (PaddleSeg CityscapesSOTA README)"
PSA_CFG = "PSANet_paddle configs/psanet/psanet_resnet50_os8_cityscapes_1024x512_80k.yml"
PSA_BASE = "PSANet_paddle configs/_base_/cityscapes.yml"
PSA_README = "seed 004 (PSANet_paddle README)"


def rmi(output: str, weight: float, do_rmi: bool) -> dict[str, Any]:
    return {"output": output, "loss": "rmi", "weight": weight, "options": {"do_rmi": do_rmi}}


NVIDIA_LOSSES = [rmi("aux_logits", 0.4, False), rmi("logits", 1.0, True),
                 rmi("scale_logits[0.5]", 0.05, False), rmi("scale_logits[1.0]", 0.05, False)]  # fmt: skip

# Shared by the fine recipe and the sota recipe that inherits it (the sota rows below override some).
NVIDIA_CITYSCAPES = [
    ("model.name", "mscale_ocr_hrnet_w48", f"{NV_FINE}: arch ocrnet.HRNet_Mscale"),
    ("model.num_classes", 19, "NVIDIA datasets/cityscapes.py: Loader.num_classes = 19"),
    ("model.kwargs.eval_scales", [0.5, 1.0, 2.0], f"{NV_FINE}: n_scales '0.5,1.0,2.0'"),
    ("model.kwargs.train_scales", [0.5, 1.0], f"{NV_TRAIN_PY}: --mscale_lo_scale default 0.5 (two_scale_forward)"),
    ("model.pretrained", "pretrained/ocrnet.HRNet_industrious-chicken.pth",
     f"{NV_FINE}: snapshot ASSETS_PATH/seg_weights/ocrnet.HRNet_industrious-chicken.pth"),
    ("model.pretrained_source", "nvidia", f"{NV_FINE}: snapshot is an NVIDIA checkpoint"),
    ("data.dataset", "cityscapes", f"{NV_FINE}: dataset cityscapes"),
    ("data.cv_split", 0, f"{NV_FINE}: cv 0"),
    ("data.add_val", False, "NVIDIA datasets/cityscapes.py: cv 0 trains on the train cities only"),
    ("data.crop_size", [1024, 2048], f"{NV_FINE}: crop_size '1024,2048'"),
    ("data.scale_range", [0.5, 2.0], f"{NV_TRAIN_PY}: --scale_min default 0.5, --scale_max default 2.0"),
    ("data.pre_size", 0, f"{NV_TRAIN_PY}: --pre_size default None"),
    ("data.resize_interpolation", "bicubic", "NVIDIA transforms/joint_transforms.py RandomSizeAndCrop: Image.BICUBIC"),
    ("data.horizontal_flip", True, "NVIDIA datasets/__init__.py: joint_transforms.RandomHorizontallyFlip()"),
    ("data.class_uniform_fraction", 0.5, f"{NV_TRAIN_PY}: --class_uniform_pct default 0.5"),
    ("data.class_uniform_tile", 1024, f"{NV_TRAIN_PY}: --class_uniform_tile default 1024"),
    ("data.color_jitter", 0.25, f"{NV_TRAIN_PY}: --color_aug default 0.25 (brightness, contrast, saturation)"),
    ("data.hue_jitter", 0.25, "NVIDIA datasets/__init__.py: ColorJitter(hue=args.color_aug)"),
    ("data.color_jitter_prob", 1.0, "NVIDIA datasets/__init__.py: ColorJitter is applied to every image"),
    ("data.gaussian_blur", False, f"{NV_TRAIN_PY}: --gblur default False"),
    ("data.pad_value", [0.0, 0.0, 0.0], "NVIDIA transforms/joint_transforms.py RandomCrop: pad_color (0, 0, 0)"),
    ("data.mean", IMAGENET_MEAN_255, f"{NV_CONFIG_PY}: DATASET.MEAN"),
    ("data.std", IMAGENET_STD_255, f"{NV_CONFIG_PY}: DATASET.STD"),
    ("data.ignore_index", 255, "NVIDIA datasets/cityscapes.py: Loader.ignore_label = 255"),
    ("data.num_workers", 4, f"{NV_TRAIN_PY}: --num_workers default 4"),
    ("data.coarse", "none", f"{NV_FINE}: no coarse_boost_classes (fine only)"),
    # NVIDIA DistributedSampler(pad=True): ceil(2975 / 8 GPUs) = 372 steps of bs_trn 1 per epoch.
    ("train.iters", 175 * 372, f"{NV_FINE}: max_epoch 175 x ceil(2975 / 8) (datasets/sampler.py pad=True)"),
    ("train.batch_size", 1, f"{NV_FINE}: bs_trn 1 (per GPU, nproc_per_node=8)"),
    ("train.optimizer", "sgd", f"{NV_TRAIN_PY}: --optimizer default sgd"),
    ("train.lr", 0.005, f"{NV_FINE}: lr 5e-3"),
    ("train.momentum", 0.9, f"{NV_TRAIN_PY}: --momentum default 0.9"),
    ("train.weight_decay", 0.0001, f"{NV_TRAIN_PY}: --weight_decay default 1e-4"),
    ("train.poly_power", 2.0, f"{NV_FINE}: poly_exp 2 (--lr_schedule default poly)"),
    ("train.end_lr", 0.0, "NVIDIA loss/optimizer.py: poly decays to 0"),
    ("train.warmup_iters", 0, "NVIDIA loss/optimizer.py: no warm-up"),
    ("train.precision", "fp16", f"{NV_FINE}: fp16 true (apex amp)"),
    ("train.sync_bn", True, f"{NV_FINE}: syncbn true"),
    ("train.grad_clip_norm", None, "NVIDIA train.py: no gradient clipping"),
    ("train.losses", NVIDIA_LOSSES, f"{NV_FINE}: rmi_loss true, supervised_mscale_loss_wt 0.05; "
     f"{NV_CONFIG_PY}: LOSS.OCR_ALPHA 0.4, OCR_AUX_RMI False"),
    ("train.eval_interval", 372, f"{NV_TRAIN_PY}: --val_freq default 1 (every epoch of 372 steps)"),
    ("train.save_interval", 372, "NVIDIA utils/misc.py eval_metrics: logx.save_model after each validation"),
    ("eval.split", "val", "NVIDIA scripts/eval_cityscapes.yml: eval val"),
    ("eval.scales", [0.5, 1.0, 2.0], "NVIDIA scripts/eval_cityscapes.yml: n_scales '0.5,1.0,2.0'"),
    ("eval.multi_scale", "hierarchical", "NVIDIA network/ocrnet.py: MscaleOCR nscale_forward"),
    ("eval.flip", False, "NVIDIA scripts/eval_cityscapes.yml: no do_flip"),
    ("eval.fusion", "logits", "NVIDIA utils/trnval_utils.py eval_minibatch: flipped passes averaged as logits"),
]

NVIDIA_SOTA = [
    ("data.coarse", "autolabelled", f"{NV_SOTA}: custom_coarse_prob set -> train_extra labels from "
     "CITYSCAPES_CUSTOMCOARSE (datasets/cityscapes.py find_cityscapes_images)"),
    ("data.coarse_mix", "boost", "NVIDIA datasets/cityscapes.py: with class_uniform_pct, coarse centroids only "
     "extend the coarse_boost_classes pools"),
    ("data.coarse_boost_classes", [3, 4, 6, 7, 9, 11, 12, 13, 14, 15, 16, 17, 18],
     f"{NV_SOTA}: coarse_boost_classes '3,4,6,7,9,11,12,13,14,15,16,17,18'"),
    ("data.coarse_max_epoch", 150, f"{NV_SOTA}: max_cu_epoch 150"),
    ("data.autolabel_min_confidence", 0.5, f"{NV_SOTA}: custom_coarse_prob 0.5"),
    ("data.autolabel_gtcoarse_classes", [14, 15, 16], f"{NV_SOTA}: custom_coarse_dropout_classes '14,15,16'"),
    ("data.autolabel_mask_border", True, f"{NV_SOTA}: mask_out_cityscapes true"),
    # 16 GPUs: ceil(2975 / 16) = 186 steps per epoch.
    ("train.iters", 175 * 186, f"{NV_SOTA}: max_epoch 175 x ceil(2975 / 16) (nproc_per_node=16, sampler pad=True)"),
    ("train.lr", 0.01, f"{NV_SOTA}: lr 1e-2"),
    ("train.eval_interval", 186, f"{NV_TRAIN_PY}: --val_freq default 1 (every epoch of 186 steps)"),
    ("train.save_interval", 186, "NVIDIA utils/misc.py eval_metrics: logx.save_model after each validation"),
]

NVIDIA_MAPILLARY_EVAL = [
    ("model.name", "mscale_ocr_hrnet_w48", f"{NV_MAP_EVAL}: arch ocrnet.HRNet_Mscale"),
    ("model.num_classes", 65, "NVIDIA datasets/mapillary.py: Loader.num_classes = 65"),
    ("model.kwargs.eval_scales", [0.25, 0.5, 1.0, 2.0], f"{NV_MAP_EVAL}: n_scales '0.25,0.5,1.0,2.0'"),
    ("model.pretrained_source", "nvidia",
     f"{NV_MAP_EVAL}: snapshot seg_weights/mapillary_ocrnet.HRNet_Mscale_fast-rattlesnake.pth"),
    ("data.dataset", "mapillary", f"{NV_MAP_EVAL}: dataset mapillary"),
    ("data.mapillary_classes", "vistas", "NVIDIA datasets/mapillary.py: the 65 Vistas classes of config.json"),
    ("data.mapillary_version", "v1.2", "NVIDIA datasets/mapillary.py: config.json, <split>/labels"),
    ("data.pre_size", 2177, f"{NV_MAP_EVAL}: pre_size 2177"),
    ("data.num_workers", 4, f"{NV_TRAIN_PY}: --num_workers default 4"),
    ("eval.split", "val", f"{NV_MAP_EVAL}: eval val"),
    ("eval.scales", [0.25, 0.5, 1.0, 2.0], f"{NV_MAP_EVAL}: n_scales '0.25,0.5,1.0,2.0'"),
    ("eval.multi_scale", "hierarchical", "NVIDIA network/ocrnet.py: MscaleOCR nscale_forward"),
    ("eval.flip", True, f"{NV_MAP_EVAL}: do_flip true"),
    ("eval.fusion", "logits", "NVIDIA utils/trnval_utils.py eval_minibatch: flipped passes averaged as logits"),
    ("eval.batch_size", 1, f"{NV_MAP_EVAL}: bs_val 1"),
]

NVIDIA_MAPILLARY_TRAIN = [
    ("model.name", "mscale_ocr_hrnet_w48", f"{NV_MAP_TRAIN}: arch ocrnet.HRNet_Mscale"),
    ("model.num_classes", 65, "NVIDIA datasets/mapillary.py: Loader.num_classes = 65"),
    ("model.kwargs.eval_scales", [0.5, 1.0, 2.0], f"{NV_MAP_TRAIN}: n_scales '0.5,1.0,2.0'"),
    ("model.kwargs.train_scales", [0.5, 1.0], f"{NV_TRAIN_PY}: --mscale_lo_scale default 0.5 (two_scale_forward)"),
    ("model.pretrained", "pretrained/hrnetv2_w48_imagenet_pretrained.pth",
     f"{NV_MAP_TRAIN}: no snapshot -> {NV_CONFIG_PY} MODEL.HRNET_CHECKPOINT seg_weights/"
     "hrnetv2_w48_imagenet_pretrained.pth (network/hrnetv2.py init_weights)"),
    ("model.pretrained_source", "auto", "ImageNet HRNet keys are detected as hrnet_imagenet (backbone only)"),
    ("data.dataset", "mapillary", f"{NV_MAP_TRAIN}: dataset mapillary"),
    ("data.mapillary_classes", "vistas", "NVIDIA datasets/mapillary.py: the 65 Vistas classes of config.json"),
    ("data.mapillary_version", "v1.2", "NVIDIA datasets/mapillary.py: config.json, training/labels"),
    ("data.pre_size", 2177, f"{NV_MAP_TRAIN}: pre_size 2177"),
    ("data.crop_size", [1024, 1024], f"{NV_MAP_TRAIN}: crop_size '1024,1024'"),
    ("data.scale_range", [0.5, 2.0], f"{NV_TRAIN_PY}: --scale_min default 0.5, --scale_max default 2.0"),
    ("data.resize_interpolation", "bicubic", "NVIDIA transforms/joint_transforms.py RandomSizeAndCrop: Image.BICUBIC"),
    ("data.horizontal_flip", True, "NVIDIA datasets/__init__.py: joint_transforms.RandomHorizontallyFlip()"),
    ("data.class_uniform_fraction", 0.5, f"{NV_TRAIN_PY}: --class_uniform_pct default 0.5"),
    ("data.class_uniform_tile", 1024, f"{NV_TRAIN_PY}: --class_uniform_tile default 1024"),
    ("data.color_jitter", 0.25, f"{NV_TRAIN_PY}: --color_aug default 0.25"),
    ("data.hue_jitter", 0.25, "NVIDIA datasets/__init__.py: ColorJitter(hue=args.color_aug)"),
    ("data.color_jitter_prob", 1.0, "NVIDIA datasets/__init__.py: ColorJitter is applied to every image"),
    ("data.gaussian_blur", True, f"{NV_MAP_TRAIN}: gblur true"),
    ("data.pad_value", [0.0, 0.0, 0.0], "NVIDIA transforms/joint_transforms.py RandomCrop: pad_color (0, 0, 0)"),
    ("data.mean", IMAGENET_MEAN_255, f"{NV_CONFIG_PY}: DATASET.MEAN"),
    ("data.std", IMAGENET_STD_255, f"{NV_CONFIG_PY}: DATASET.STD"),
    ("data.num_workers", 4, f"{NV_TRAIN_PY}: --num_workers default 4"),
    ("data.coarse", "none", "NVIDIA datasets/mapillary.py: no coarse data"),
    # 18000 Vistas training images: ceil(18000 / 8) = 2250 per GPU, 1125 batches of 2 (drop_last) per epoch.
    ("train.iters", 200 * 1125, f"{NV_MAP_TRAIN}: max_epoch 200 x ceil(18000 / 8) / bs_trn 2"),
    ("train.batch_size", 2, f"{NV_MAP_TRAIN}: bs_trn 2 (per GPU, nproc_per_node=8)"),
    ("train.optimizer", "sgd", f"{NV_MAP_TRAIN}: optimizer sgd"),
    ("train.lr", 0.005, f"{NV_MAP_TRAIN}: lr 5e-3"),
    ("train.momentum", 0.9, f"{NV_TRAIN_PY}: --momentum default 0.9"),
    ("train.weight_decay", 0.0001, f"{NV_TRAIN_PY}: --weight_decay default 1e-4"),
    ("train.poly_power", 1.0, f"{NV_MAP_TRAIN}: lr_schedule poly, poly_exp 1.0"),
    ("train.end_lr", 0.0, "NVIDIA loss/optimizer.py: poly decays to 0"),
    ("train.precision", "fp16", f"{NV_MAP_TRAIN}: fp16 true (apex amp)"),
    ("train.sync_bn", True, f"{NV_MAP_TRAIN}: syncbn true"),
    ("train.losses", [rmi("aux_logits", 0.4, False), rmi("logits", 1.0, True)],
     f"{NV_MAP_TRAIN}: rmi_loss true, no supervised_mscale_loss_wt ({NV_CONFIG_PY}: LOSS.SUPERVISED_MSCALE_WT 0, "
     "OCR_ALPHA 0.4, OCR_AUX_RMI False)"),
    ("train.eval_interval", 1125, f"{NV_TRAIN_PY}: --val_freq default 1 (every epoch of 1125 steps)"),
    ("train.save_interval", 1125, "NVIDIA utils/misc.py eval_metrics: logx.save_model after each validation"),
    ("eval.split", "val", "NVIDIA datasets/__init__.py: val_name 'val' while training"),
    ("eval.scales", [0.5, 1.0, 2.0], f"{NV_MAP_TRAIN}: n_scales '0.5,1.0,2.0'"),
    ("eval.multi_scale", "hierarchical", "NVIDIA network/ocrnet.py: MscaleOCR nscale_forward"),
    ("eval.flip", False, f"{NV_MAP_TRAIN}: no do_flip"),
    ("eval.fusion", "logits", "NVIDIA utils/trnval_utils.py eval_minibatch: flipped passes averaged as logits"),
    ("eval.batch_size", 1, f"{NV_TRAIN_PY}: --bs_val default 1"),
]

BOOT = {"min_K": 100000, "loss_th": 0.05}
PADDLE_SOTA = [
    ("model.name", "mscale_ocr_hrnet_w48", f"{PADDLE_CFG}: model MscaleOCRNet, backbone HRNet_W48_NV"),
    ("model.num_classes", 19, f"{PADDLE_CFG}: model.num_classes 19"),
    ("model.kwargs.eval_scales", [0.5, 1.0, 2.0], f"{PADDLE_CFG}: model.n_scales [0.5,1.0,2.0]"),
    ("model.kwargs.train_scales", [0.5, 1.0], "PaddleSeg contrib/CityscapesSOTA/models/mscale_ocrnet.py: "
     "two_scale_forward at scale_factor 0.5 and 1.0"),
    ("model.pretrained", "pretrain/ocrnet_hrnetw48_mapillary_pretrain.pdparams",
     f"{PADDLE_CFG}: model.pretrained pretrain/pretrained.pdparams, the {PADDLE_README} download "
     "ocrnet_hrnetw48_mapillary/pretrained.pdparams (renamed here)"),
    ("model.pretrained_source", "paddle", f"{PADDLE_CFG}: a PaddleSeg .pdparams"),
    ("data.dataset", "cityscapes", f"{PADDLE_CFG}: train_dataset.type CityscapesAutolabeling"),
    ("data.cv_split", 0, "PaddleSeg CityscapesAutolabeling: the official train/val folders"),
    ("data.add_val", False, "PaddleSeg contrib/CityscapesSOTA/datasets/cityscapes_autolabeling.py: add_val default "
     f"False ({PADDLE_CFG} does not set it)"),
    ("data.coarse", "autolabelled", "PaddleSeg cityscapes_autolabeling.py: convert_autolabelled labels of "
     "leftImg8bit_trainextra in training"),
    ("data.coarse_mix", "equal", "PaddleSeg cityscapes_autolabeling.py: len = num_files x (1 + coarse_multiple), "
     "coarse list reshuffled each epoch"),
    ("data.coarse_multiple", 1.0, "PaddleSeg cityscapes_autolabeling.py: coarse_multiple default 1"),
    ("data.class_uniform_fraction", 0.0, "PaddleSeg CityscapesAutolabeling: no class-uniform sampling"),
    ("data.crop_size", [1024, 2048], f"{PADDLE_CFG}: RandomPaddingCrop crop_size [2048, 1024] (width, height)"),
    ("data.scale_range", [0.5, 2.0], f"{PADDLE_CFG}: ResizeStepScaling min/max_scale_factor 0.5 / 2.0"),
    ("data.scale_step", 0.0, f"{PADDLE_CFG}: ResizeStepScaling scale_step_size 0"),
    ("data.resize_interpolation", "bilinear", "PaddleSeg paddleseg/transforms/transforms.py ResizeStepScaling: "
     "cv2.INTER_LINEAR"),
    ("data.horizontal_flip", True, f"{PADDLE_CFG}: RandomHorizontalFlip"),
    ("data.color_jitter", 0.25, f"{PADDLE_CFG}: RandomDistort brightness/contrast/saturation_range 0.25"),
    ("data.hue_jitter", 0.246, f"{PADDLE_CFG}: RandomDistort hue_range 63 (of PIL's 256-step hue circle)"),
    ("data.color_jitter_prob", 1.0, f"{PADDLE_CFG}: RandomDistort *_prob 1"),
    ("data.gaussian_blur", False, f"{PADDLE_CFG}: no blur transform"),
    ("data.mean", IMAGENET_MEAN_255, f"{PADDLE_CFG}: Normalize mean [0.485, 0.456, 0.406]"),
    ("data.std", IMAGENET_STD_255, f"{PADDLE_CFG}: Normalize std [0.229, 0.224, 0.225]"),
    ("data.pad_value", [127.5, 127.5, 127.5], "PaddleSeg transforms.py RandomPaddingCrop: im_padding_value default "
     "127.5"),
    ("data.ignore_index", 255, "PaddleSeg cityscapes_autolabeling.py: ignore_index = 255"),
    ("data.num_workers", 5, f"{PADDLE_README}: training command --num_workers 5"),
    ("train.iters", 65000, f"{PADDLE_CFG}: iters 65000"),
    ("train.batch_size", 1, f"{PADDLE_CFG}: batch_size 1 (per GPU; {PADDLE_README}: 8 GPUs)"),
    ("train.optimizer", "sgd", f"{PADDLE_CFG}: optimizer.type sgd"),
    ("train.lr", 0.005, f"{PADDLE_CFG}: lr_scheduler.learning_rate 0.005"),
    ("train.momentum", 0.9, f"{PADDLE_CFG}: optimizer.momentum 0.9"),
    ("train.weight_decay", 0.0001, f"{PADDLE_CFG}: optimizer.weight_decay 0.0001"),
    ("train.poly_power", 2.0, f"{PADDLE_CFG}: lr_scheduler PolynomialDecay power 2"),
    ("train.end_lr", 0.0, f"{PADDLE_CFG}: lr_scheduler.end_lr 0.0"),
    ("train.warmup_iters", 0, f"{PADDLE_CFG}: no warm-up scheduler"),
    ("train.precision", "fp32", "PaddleSeg contrib/CityscapesSOTA/train.py: no AMP option"),
    ("train.sync_bn", True, "PaddleSeg paddleseg/models/layers ConvBNReLU: layers.SyncBatchNorm on GPU"),
    ("train.losses", [
        {"output": "logits", "loss": "dice_2021", "weight": 1.0, "options": {}},
        {"output": "aux_logits", "loss": "dice_2021", "weight": 0.4, "options": {}},
        {"output": "scale_logits[0.5]", "loss": "dice_2021", "weight": 0.05, "options": {}},
        {"output": "scale_logits[1.0]", "loss": "dice_2021", "weight": 0.05, "options": {}},
        {"output": "logits", "loss": "bootstrapped_cross_entropy", "weight": 1.0, "options": BOOT},
        {"output": "aux_logits", "loss": "bootstrapped_cross_entropy", "weight": 0.4, "options": BOOT},
        {"output": "scale_logits[0.5]", "loss": "bootstrapped_cross_entropy", "weight": 0.05, "options": BOOT},
        {"output": "scale_logits[1.0]", "loss": "bootstrapped_cross_entropy", "weight": 0.05, "options": BOOT},
    ], f"{PADDLE_CFG}: loss.types 4 x DiceLoss, 4 x BootstrappedCrossEntropyLoss (min_K 100000, loss_th 0.05), "
       "coef [1, 0.4, 0.05, 0.05, 1, 0.4, 0.05, 0.05]"),
    ("train.eval_interval", 2000, f"{PADDLE_README}: training command --save_interval 2000 --do_eval"),
    ("train.save_interval", 2000, f"{PADDLE_README}: training command --save_interval 2000"),
    ("train.log_interval", 10, "PaddleSeg contrib/CityscapesSOTA/train.py: --log_iters default 10"),
    ("eval.split", "val", f"{PADDLE_CFG}: val_dataset mode val"),
    ("eval.scales", [0.5, 1.0, 2.0], f"{PADDLE_README}: 'The reported mIoU should be 86.89 ... scales of 0.5, 1.0 "
     "and 2.0'"),
    ("eval.multi_scale", "hierarchical", "PaddleSeg contrib/CityscapesSOTA/models/mscale_ocrnet.py: nscale_forward"),
    ("eval.flip", False, f"{PADDLE_README}: the 86.89 command has no --flip_horizontal"),
    ("eval.fusion", "softmax", f"{PADDLE_README}: 86.99 / 87.00 measured with PaddleSeg <= 2.7 aug_eval "
     "(mean of softmax)"),
]

PSANET = [
    ("model.name", "psanet_r50_vd", f"{PSA_CFG}: model PSANet, backbone ResNet50_vd"),
    ("model.num_classes", 19, "PaddleSeg paddleseg/datasets/cityscapes.py: NUM_CLASSES 19"),
    ("model.kwargs.output_stride", 8, f"{PSA_CFG}: backbone.output_stride 8"),
    ("model.kwargs.psa_type", 2, f"{PSA_CFG}: psa_type 2"),
    ("model.kwargs.mask_size", [59, 59], f"{PSA_CFG}: mask_h 59, mask_w 59"),
    ("model.kwargs.shrink_factor", 2, f"{PSA_CFG}: shrink_factor 2"),
    ("model.kwargs.normalization_factor", 1.0, f"{PSA_CFG}: normalization_factor 1.0"),
    ("model.pretrained", "pretrained/resnet50_vd_ssld_v2.pdparams",
     f"{PSA_CFG}: backbone.pretrained .../resnet50_vd_ssld_v2.tar.gz"),
    ("model.pretrained_source", "paddle", f"{PSA_CFG}: a PaddleSeg backbone"),
    ("data.dataset", "cityscapes", f"{PSA_BASE}: train_dataset.type Cityscapes"),
    ("data.crop_size", [512, 1024], f"{PSA_BASE}: RandomPaddingCrop crop_size [1024, 512] (width, height)"),
    ("data.scale_range", [0.5, 2.0], f"{PSA_BASE}: ResizeStepScaling min/max_scale_factor 0.5 / 2.0"),
    ("data.scale_step", 0.25, f"{PSA_BASE}: ResizeStepScaling scale_step_size 0.25"),
    ("data.resize_interpolation", "bilinear", "PSANet_paddle paddleseg/transforms ResizeStepScaling: cv2.INTER_LINEAR"),
    ("data.horizontal_flip", True, f"{PSA_BASE}: RandomHorizontalFlip"),
    ("data.color_jitter", 0.4, f"{PSA_BASE}: RandomDistort brightness/contrast/saturation_range 0.4"),
    ("data.hue_jitter", 0.07, "PSANet_paddle paddleseg/transforms/transforms.py RandomDistort: hue_range default 18"),
    ("data.color_jitter_prob", 0.5, "PSANet_paddle paddleseg/transforms/transforms.py RandomDistort: *_prob "
     "default 0.5"),
    ("data.mean", [127.5, 127.5, 127.5], f"{PSA_BASE}: Normalize (defaults mean 0.5)"),
    ("data.std", [127.5, 127.5, 127.5], f"{PSA_BASE}: Normalize (defaults std 0.5)"),
    ("data.pad_value", [127.5, 127.5, 127.5], "PSANet_paddle paddleseg/transforms/transforms.py RandomPaddingCrop: "
     "im_padding_value default (127.5, 127.5, 127.5)"),
    ("data.coarse", "none", f"{PSA_BASE}: Cityscapes fine only"),
    ("train.iters", 80000, f"{PSA_CFG}: iters 80000"),
    ("train.batch_size", 8, f"{PSA_CFG}: batch_size 8 ({PSA_README}: 1 card)"),
    ("train.optimizer", "sgd", f"{PSA_BASE}: optimizer.type sgd"),
    ("train.lr", 0.01, f"{PSA_CFG}: lr_scheduler.learning_rate 0.01"),
    ("train.momentum", 0.9, f"{PSA_BASE}: optimizer.momentum 0.9"),
    ("train.weight_decay", 0.00004, f"{PSA_BASE}: optimizer.weight_decay 4.0e-5"),
    ("train.poly_power", 0.9, f"{PSA_CFG}: lr_scheduler.power 0.9"),
    ("train.end_lr", 0.00001, f"{PSA_CFG}: lr_scheduler.end_lr 1.0e-5"),
    ("train.precision", "fp32", "PSANet_paddle train.py: --precision default fp32"),
    ("train.sync_bn", True, "PSANet_paddle paddleseg/models/backbones/resnet_vd.py: layers.SyncBatchNorm"),
    ("train.losses", [{"output": "logits", "loss": "cross_entropy", "weight": 1.0, "options": {}},
                      {"output": "aux_logits", "loss": "cross_entropy", "weight": 0.4, "options": {}}],
     f"{PSA_CFG}: loss.types 2 x CrossEntropyLoss, coef [1, 0.4]"),
    ("train.eval_interval", 4000, f"{PSA_README}: python train.py ... --do_eval --save_interval 4000"),
    ("train.save_interval", 4000, f"{PSA_README}: python train.py ... --save_interval 4000"),
    ("train.log_interval", 100, f"{PSA_README}: python train.py ... --log_iter 100"),
    ("eval.split", "val", f"{PSA_BASE}: val_dataset mode val"),
    ("eval.scales", [1.0], f"{PSA_README}: python val.py without --aug_eval (single scale)"),
    ("eval.multi_scale", "average", "PaddleSeg aug_eval: the only multi-scale mode of a non-attention model"),
    ("eval.flip", False, f"{PSA_README}: python val.py without --flip_horizontal"),
    ("eval.fusion", "softmax", "PaddleSeg <= 2.7 aug_eval averages softmax (the PaddleSeg PSANet_paddle builds on)"),
]


def _override(base: list[tuple], rows: list[tuple]) -> list[tuple]:
    keys = {row[0] for row in rows}
    return [row for row in base if row[0] not in keys] + rows


RECIPES = {
    "nvidia_cityscapes_fine.yaml": NVIDIA_CITYSCAPES,
    "nvidia_cityscapes_sota.yaml": _override(NVIDIA_CITYSCAPES, NVIDIA_SOTA),
    "nvidia_mapillary_eval.yaml": NVIDIA_MAPILLARY_EVAL,
    "nvidia_mapillary_train.yaml": NVIDIA_MAPILLARY_TRAIN,
    "paddle_cityscapes_sota.yaml": PADDLE_SOTA,
    "psanet_r50_cityscapes_80k.yaml": PSANET,
}

# Keys the recipe files set that are not hyper-parameters of the reference (paths, logging, engineering choices).
NOT_PINNED = {
    "data.root": "where the data lives on this machine",
    "train.out_dir": "where this run writes",
    "train.log_interval": "how often to log (NVIDIA logs every iteration; pinned where the reference sets it)",
    "train.seed": "NVIDIA train.py and PaddleSeg CityscapesSOTA train.py set no seed; attnseg's choice",
    "data.num_workers": "loader processes do not change results (pinned where the reference sets them)",
}


def _value(data: dict[str, Any], dotted: str) -> Any:
    value: Any = data
    for part in dotted.split("."):
        assert isinstance(value, dict) and part in value, f"{dotted}: no such key in the loaded config"
        value = value[part]
    return value


def _set_keys(data: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys of the leaves a YAML file sets (model.kwargs entries one by one; lists as one value)."""
    keys = []
    for key, value in data.items():
        if key == "base" and not prefix:
            continue
        if isinstance(value, dict) and f"{prefix}{key}" != "train.losses":
            keys += _set_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def test_every_recipe_config_has_a_table():
    recipe_files = {path.name for path in CONFIGS.glob("*.yaml")} - {
        path.name for path in CONFIGS.glob("demo_*.yaml")} - {path.name for path in CONFIGS.glob("synthetic_*.yaml")}
    assert recipe_files == set(RECIPES)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_values_match_their_sources(recipe):
    loaded = to_data(load_config(CONFIGS / recipe))
    wrong = [f"{key}: config has {_value(loaded, key)!r}, {source} gives {expected!r}"
             for key, expected, source in RECIPES[recipe] if _value(loaded, key) != expected]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_key_a_recipe_sets_is_pinned(recipe):
    pinned = {row[0] for row in RECIPES[recipe]}
    unpinned = [key for key in _set_keys(read_yaml_with_base(CONFIGS / recipe))
                if key not in pinned and key not in NOT_PINNED]
    assert not unpinned, f"{recipe}: keys without a source row: {unpinned}"


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_rows_are_unique_and_name_a_source(recipe):
    keys = [row[0] for row in RECIPES[recipe]]
    assert len(keys) == len(set(keys))
    assert all(len(row) == 3 and isinstance(row[2], str) and len(row[2]) > 10 for row in RECIPES[recipe])


def test_a_drifting_value_is_caught(tmp_path):
    # The comparison really reads the file: a recipe with one value changed no longer matches its table.
    drifted = tmp_path / "nvidia_cityscapes_fine.yaml"
    text = (CONFIGS / "nvidia_cityscapes_fine.yaml").read_text()
    assert "  iters: 65100\n" in text
    drifted.write_text(text.replace("  iters: 65100\n", "  iters: 64925\n"))
    loaded = to_data(load_config(drifted))
    mismatched = [key for key, expected, _ in NVIDIA_CITYSCAPES if _value(loaded, key) != expected]
    assert mismatched == ["train.iters"]
