"""The names the README and the issues promise at the top level of the package."""

import attnseg


def test_public_api_names():
    for name in ["create_model", "list_models", "convert_state_dict", "load_weights", "load_pretrained", "load_model",
                 "save_checkpoint", "Predictor", "Prediction", "SegmentationOutput"]:  # fmt: skip
        assert hasattr(attnseg, name), name
        assert name in attnseg.__all__, name


def test_convert_state_dict_nvidia_strips_the_data_parallel_prefix():
    model = attnseg.create_model("ocr_hrnet_w18_small", num_classes=3)
    released = {"state_dict": {f"module.{key}": value for key, value in model.state_dict().items()}}
    converted = attnseg.convert_state_dict(released, "nvidia")
    assert set(converted) == set(model.state_dict())
    model.load_state_dict(converted, strict=True)
