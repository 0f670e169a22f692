"""The `alexc` command line (typer): app.py holds the app and `main`; each command group's
module adds its commands to the app when imported, here, in the order `alexc --help` lists."""

# isort: off
from . import show, train, predict, onnx, bench  # noqa: F401 - each registers its commands

# isort: on
from .app import app, main

__all__ = ["app", "main"]
