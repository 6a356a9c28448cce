"""Datasets (Cityscapes, Mapillary Vistas, plain folders), dataset preparation and synthetic street scenes.

Submodules are imported directly (``from attnseg.data.cityscapes import CityscapesDataset``) so that importing one
dataset does not pull in the others.
"""
