"""Fixtures shared by every test folder; plain helpers live in tests/helpers.py."""

import sys

import pytest


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
