"""attnseg.cli.main: a missing optional package ends in one line that names the extra, not a traceback."""

import argparse
import sys

import pytest

from attnseg.cli import main as cli_main
from attnseg.errors import require_optional


def _parser_running(func):
    parser = argparse.ArgumentParser(prog="attnseg")
    subparsers = parser.add_subparsers(dest="command")
    subparsers.add_parser("export").set_defaults(func=func)
    return parser


def test_missing_optional_package_names_its_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now fails as if it were not installed
    monkeypatch.setattr(cli_main, "build_parser", lambda: _parser_running(lambda args: require_optional("onnx")))
    assert cli_main.main(["export"]) == 2
    message = capsys.readouterr().err
    assert "attnseg export: error" in message and "'onnx'" in message and "attnseg[export]" in message


def test_other_missing_modules_still_raise(monkeypatch):
    def needs_something_else(args):
        raise ModuleNotFoundError("No module named 'nothing_like_it'", name="nothing_like_it")

    monkeypatch.setattr(cli_main, "build_parser", lambda: _parser_running(needs_something_else))
    with pytest.raises(ModuleNotFoundError):
        cli_main.main(["export"])
