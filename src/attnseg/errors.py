"""Exceptions that describe a problem with the user's input, meant to be printed without a traceback."""


class AttnsegError(Exception):
    """Base class: a problem with a file, an option or a dataset that the message explains."""


class ConfigError(AttnsegError, ValueError):
    """A configuration file or override is invalid (unknown key, wrong type)."""


class DatasetError(AttnsegError):
    """A dataset folder is laid out wrongly or holds a bad file; the message names the file."""


class WeightsError(AttnsegError):
    """A weights file cannot be read, is unsafe to unpickle, or does not fit the model."""
