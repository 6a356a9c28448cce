"""Image normalisation statistics shared by configs, checkpoints and exported models."""

# ImageNet channel statistics on the 0-255 RGB scale: (0.485, 0.456, 0.406) and (0.229, 0.224, 0.225) x 255.
# NVIDIA's and PaddleSeg CityscapesSOTA's models are trained with them.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
