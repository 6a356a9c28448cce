"""Exceptions that describe a problem with the user's input, meant to be printed without a traceback."""


import re

# What torch's ExceptionWrapper.reraise hands to an exception raised in a DataLoader worker (or another background
# thread): "Caught <Type> in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n ...
# <module>.<Type>: <message>". The message is what the user needs; the traceback is torch's internals.
_WRAPPED = re.compile(r"^Caught (\w+) in [^\n]*\.\nOriginal Traceback \(most recent call last\):\n", re.DOTALL)


def _unwrap_background_message(message: object, type_name: str) -> object:
    if not isinstance(message, str) or _WRAPPED.match(message) is None:
        return message
    marker = f".{type_name}: "
    start = message.rfind(marker)
    if start < 0:
        return message
    return message[start + len(marker):].rstrip("\n")


class AttnsegError(Exception):
    """Base class: a problem with a file, an option or a dataset that the message explains.

    Raised in a DataLoader worker, torch re-raises it in the main process as ``type(error)(wrapped_text)`` with a
    traceback inside the text; the constructor recovers the original message, so the CLI still prints one line.
    """

    def __init__(self, *args: object):
        if len(args) == 1:
            args = (_unwrap_background_message(args[0], type(self).__name__),)
        super().__init__(*args)


class ConfigError(AttnsegError, ValueError):
    """A configuration file or override is invalid (unknown key, wrong type)."""


class DatasetError(AttnsegError):
    """A dataset folder is laid out wrongly or holds a bad file; the message names the file."""


class BadFilesError(DatasetError):
    """Several files of a dataset are bad: a one-line summary, then one indented line per problem.

    The one error whose message is meant to span lines: the CLI prints it as it is rather than folding it.
    """


class WeightsError(AttnsegError):
    """A weights file cannot be read, is unsafe to unpickle, or does not fit the model."""


# Optional packages and the pyproject extra that installs each.
OPTIONAL_PACKAGE_EXTRAS: dict[str, str] = {
    "onnx": "export",
    "onnxruntime": "export",
    "openvino": "openvino",
    "nncf": "int8",
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
