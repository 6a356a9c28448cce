"""Reading, converting, loading and saving model weights.

One module per job:

* `safe_load`: `read_checkpoint_file` reads NVIDIA ``.pth``, PaddleSeg ``.pdparams``, semseg ``.pth``, ImageNet
  HRNet ``.pth`` and ``.safetensors`` without executing code from the file (`torch_load_weights_only` for any
  other torch file).
* `formats`: the table of checkpoint formats (`FORMATS`): `detect_source` names the layout from its keys and
  `convert_state_dict` remaps it with the converter that lives beside the model family.
* `report` and `load`: `load_weights` / `load_pretrained` put the result into a model and say what matched
  (`LoadReport`).
* `native`: `save_checkpoint` writes ``<path>.safetensors`` plus a ``<path>.json`` sidecar that records how to
  rebuild the model and how to preprocess images for it; `load_model` rebuilds it.

Call graph of a load::

    load_weights(model, path)
      read_checkpoint_file(path)          # torch weights_only / restricted pickle / safetensors
      detect_source(state)                # "nvidia" | "paddle" | "semseg" | "hrnet_imagenet" | "native"
      convert_state_dict(state, source)   # -> our key layout, torch tensors
      compare with model.state_dict()     # -> LoadReport; strict raises WeightsError
"""

from attnseg.weights.formats import FORMATS, SOURCES, CheckpointFormat, convert_state_dict, detect_source, paddle_family
from attnseg.weights.load import load_pretrained, load_weights
from attnseg.weights.native import (
    CheckpointSidecar,
    ModelDescription,
    checkpoint_paths,
    load_model,
    read_sidecar,
    save_checkpoint,
)
from attnseg.weights.report import LoadReport, load_state_dict_report
from attnseg.weights.safe_load import read_checkpoint_file, torch_load_weights_only

__all__ = [
    "FORMATS",
    "CheckpointFormat",
    "CheckpointSidecar",
    "LoadReport",
    "ModelDescription",
    "SOURCES",
    "checkpoint_paths",
    "convert_state_dict",
    "detect_source",
    "load_model",
    "load_pretrained",
    "load_state_dict_report",
    "load_weights",
    "paddle_family",
    "read_checkpoint_file",
    "read_sidecar",
    "save_checkpoint",
    "torch_load_weights_only",
]
