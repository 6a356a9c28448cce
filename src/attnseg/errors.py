"""Exceptions that describe a problem with the user's input, meant to be printed without a traceback."""


class AttnsegError(Exception):
    """Base class: a problem with a file, an option or a dataset that the message explains."""


class ConfigError(AttnsegError, ValueError):
    """A configuration file or override is invalid (unknown key, wrong type)."""


class DatasetError(AttnsegError):
    """A dataset folder is laid out wrongly or holds a bad file; the message names the file."""


class WeightsError(AttnsegError):
    """A weights file cannot be read, is unsafe to unpickle, or does not fit the model."""


# Optional packages and the pyproject extra that installs each.
OPTIONAL_PACKAGE_EXTRAS: dict[str, str] = {
    "onnx": "export",
    "onnxruntime": "export",
    "openvino": "openvino",
}


def install_hint(package: str) -> str:
    """How to install an optional package (a key of `OPTIONAL_PACKAGE_EXTRAS`): its pip extra."""
    extra = OPTIONAL_PACKAGE_EXTRAS[package]
    return f"pip install 'attnseg[{extra}]' (from a checkout: pip install -e '.[{extra}]')"


def require_optional(package: str):
    """Import an optional package (a key of `OPTIONAL_PACKAGE_EXTRAS`), or raise an `AttnsegError` naming the
    extra that installs it."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError:
        raise AttnsegError(f"this needs the optional package {package!r}: {install_hint(package)}") from None
