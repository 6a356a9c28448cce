"""attnseg: attention-based semantic segmentation of street scenes.

Public API:
    create_model, list_models      -- build registered models (`attnseg.models`)
    SegmentationOutput             -- the named output every model returns
"""

from attnseg.models import SegmentationOutput, create_model, list_models

__version__ = "0.1.0"

__all__ = ["SegmentationOutput", "create_model", "list_models", "__version__"]
