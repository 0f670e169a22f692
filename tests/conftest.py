"""Fixtures shared by every test folder; plain helpers live in tests/helpers.py."""

import sys

import pytest

import alexc
from tests.helpers import TINY_TRAINABLE, color_folder


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run the `alexc` CLI in-process; returns (exit code, stdout, stderr)."""
    from alexc.cli.app import main

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["alexc", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def tiny(tmp_path):
    """(graph, path) of TINY_TRAINABLE, written to a graph file."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_TRAINABLE)
    return alexc.load_graph(path), path


@pytest.fixture
def folder(tmp_path):
    """An image folder of three color classes (tests.helpers.color_folder)."""
    return color_folder(tmp_path / "images")
