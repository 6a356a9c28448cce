"""attnseg: attention-based semantic segmentation of street scenes.

Public API:
    create_model, list_models      -- build registered models (`attnseg.models`)
    SegmentationOutput             -- the named output every model returns
    convert_state_dict             -- remap an NVIDIA / PaddleSeg / semseg state dict onto our layout
    load_weights, load_pretrained  -- load NVIDIA / PaddleSeg / semseg / native checkpoints (`attnseg.weights`)
    save_checkpoint, load_model    -- native .safetensors + .json sidecar checkpoints (`attnseg.weights`)
    Predictor                      -- checkpoint -> image segmenter (`attnseg.inference.predictor`, imported lazily)
    Prediction                     -- what `Predictor.predict` returns: labels, probabilities, confidence, attention
"""

from attnseg._version import __version__
from attnseg.models import SegmentationOutput, create_model, list_models
from attnseg.weights import LoadReport, convert_state_dict, load_model, load_pretrained, load_weights, save_checkpoint

__all__ = ["SegmentationOutput", "create_model", "list_models", "__version__"]
__all__ += ["LoadReport", "convert_state_dict", "load_model", "load_pretrained", "load_weights", "save_checkpoint"]
__all__ += ["Predictor", "Prediction"]


def __getattr__(name: str):
    # Predictor pulls in OpenCV and the inference stack; import it only when asked for.
    if name in ("Predictor", "Prediction"):
        from attnseg.inference import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'attnseg' has no attribute {name!r}")
