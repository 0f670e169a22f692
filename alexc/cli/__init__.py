"""The `alexc` command line (typer): app.py holds the app and `main`, one module per command
group adds its commands."""

from .app import app, main

__all__ = ["app", "main"]
