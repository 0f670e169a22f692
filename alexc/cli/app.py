"""The `alexc` typer app, the options several commands share, and `main`, which turns every
AlexcError into one line on stderr and exit code 1.

Commands are declared in one style throughout: parameters typed with `Annotated[..., typer.X]`,
registered with `@app.command()` in one module per command group (show.py, train.py,
predict.py, onnx.py, bench.py; `alexc.cli` imports them all).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..errors import AlexcError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="alexc: compile convolutional networks declared in YAML to a NumPy trainer and to ONNX.",
)
console = Console()


@app.callback()
def _root():
    """alexc: compile convolutional networks declared in YAML to a NumPy trainer and to ONNX."""


GraphPath = Annotated[Path, typer.Argument(help="graph file (YAML), e.g. graphs/alexnet.yaml")]
Threads = Annotated[
    int, typer.Option("--threads", "-t", min=1, help="threads for BLAS and the kernels")
]


def wrote(path: Path, as_json: bool) -> None:
    """Say where a picture went: on stderr when stdout carries JSON."""
    print(f"wrote {path}", file=sys.stderr if as_json else sys.stdout)


def weights_graph(graph_path: Path, weights: Path):
    """The graph (sized to the checkpoint's classes) and its checked parameters."""
    from ..serial.frontend import load_graph
    from ..training.checkpoint import load_for_graph

    return load_for_graph(weights, load_graph(graph_path))


def main() -> None:
    """Entry point: run the app, turning AlexcError into one line and exit code 1 (under MPI,
    naming the rank and ending the other ranks too)."""
    from ..training.distributed import fail

    try:
        app(standalone_mode=False)
    except AlexcError as e:
        fail(e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        # typer's (or, in older typer, click's) exceptions, recognised by shape: their classes
        # moved between versions. `alexc` alone prints the help (exit code 2, as click does).
        if type(e).__name__ == "NoArgsIsHelpError":
            e.show()
            sys.exit(e.exit_code)
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            ctx = getattr(e, "ctx", None)
            hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            print(f"error: {e.format_message()}{hint}", file=sys.stderr)
            sys.exit(1)
        if type(e).__name__ == "Abort":
            sys.exit(1)
        raise
