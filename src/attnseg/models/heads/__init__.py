"""Heads of attnseg's segmentation models."""
