"""The package version, in a module of its own so that package code can read it without importing `attnseg`."""

__version__ = "0.1.0"
