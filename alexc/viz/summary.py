"""`alexc summary`: every node's output shape, parameters, FLOPs and activation memory."""

from __future__ import annotations

import math

from ..ir import Graph


def summarize(graph: Graph, batch_size: int = 1) -> dict:
    """Per-layer rows and totals, as plain data (what `summary --json` prints)."""
    params_of = {}
    for p in graph.params:
        node = p.name.rsplit(".", 1)[0]
        params_of[node] = params_of.get(node, 0) + math.prod(p.shape)
    layers = []
    for n in graph.nodes:
        shape = graph.shapes[n.name]
        layers.append(
            {
                "name": n.name,
                "op": n.op.value,
                "output_shape": [batch_size, *shape],
                "params": params_of.get(n.name, 0),
                "flops": graph.flops[n.name] * batch_size,
                "activation_bytes": math.prod(shape) * batch_size * 4,
            }
        )
    input_bytes = math.prod(graph.input.shape) * batch_size * 4
    return {
        "graph": graph.name,
        "batch_size": batch_size,
        "input_shape": [batch_size, *graph.input.shape],
        "total_params": graph.num_params,
        "flops": graph.total_flops * batch_size,
        "param_bytes": graph.num_params * 4,
        "activation_bytes": input_bytes + sum(layer["activation_bytes"] for layer in layers),
        "layers": layers,
    }


def _mb(n: int) -> str:
    return f"{n / 2**20:,.2f} MB"


def render(summary: dict, console) -> None:
    """Print the summary as a table like torchsummary's."""
    from rich.table import Table

    table = Table(title=f"{summary['graph']}  (input {tuple(summary['input_shape'])}, float32)")
    for col, justify in [
        ("node", "left"),
        ("op", "left"),
        ("output shape", "left"),
        ("params", "right"),
        ("FLOPs", "right"),
        ("activations", "right"),
    ]:
        table.add_column(col, justify=justify, no_wrap=True)
    for layer in summary["layers"]:
        table.add_row(
            layer["name"],
            layer["op"],
            str(tuple(layer["output_shape"])),
            f"{layer['params']:,}",
            f"{layer['flops']:,}",
            _mb(layer["activation_bytes"]),
        )
    console.print(table)
    console.print(f"total parameters:   {summary['total_params']:,}")
    console.print(
        f"forward GFLOPs:     {summary['flops'] / 1e9:,.3f}  (batch {summary['batch_size']})"
    )
    console.print(f"parameter memory:   {_mb(summary['param_bytes'])}")
    console.print(
        f"activation memory:  {_mb(summary['activation_bytes'])}  (every output, input included)"
    )
