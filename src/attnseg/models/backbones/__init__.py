"""Backbones of attnseg's segmentation models."""
