"""`alexc bench`: the executors side by side, the data pipeline, and training over MPI ranks."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import AlexcError
from .app import GraphPath, app

progress_console = Console(stderr=True)


def _console() -> Console:
    """stdout; when it is not a terminal, wide enough that no column is cut."""
    out = Console()
    return out if out.is_terminal else Console(width=160)


COLUMNS = (
    "executor",
    "mode",
    "batch",
    "images/s",
    "images/s min-max",
    "latency ms",
    "GFLOP/s",
    "% sgemm peak",
    "peak MB",
)


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(item) for item in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise AlexcError(
            f"{option} takes comma-separated positive integers, e.g. 1,16,64; got {text!r}"
        )
    return list(dict.fromkeys(values))


def _names(text: str, option: str, allowed: Sequence[str]) -> list[str]:
    names = [item.strip() for item in text.split(",") if item.strip()]
    for name in names or [text]:
        if name not in allowed:
            raise AlexcError(f"{option}: unknown name {name!r}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(names))


def _num(value: float | None, big: str = ",.0f", small: str = ".1f", cut: float = 100) -> str:
    if value is None:
        return "-"
    return format(value, big if abs(value) >= cut else small)


def _cells(r: dict) -> list[str]:
    return [
        r["executor"],
        r["mode"],
        str(r["batch_size"]),
        _num(r["images_per_s"]),
        f"{_num(r['images_per_s_min'])}-{_num(r['images_per_s_max'])}",
        _num(r["latency_ms"], cut=10, small=".2f", big=",.1f"),
        _num(r["gflops"]),
        f"{100 * r['share_of_peak']:.0f}%",
        _num(r["peak_mb"]),
    ]


def _title(result: dict) -> str:
    m, c = result["machine"], result["config"]
    return (
        f"{result['graph']['name']}: {c['threads']} thread(s) on {m['cores']} cores ({m['cpu']}), "
        f"sgemm peak {m['sgemm_peak_gflops']:.0f} GFLOP/s"
    )


def _caption(result: dict) -> str:
    c = result["config"]
    return (
        f"median of {c['repeats']} timed calls after {c['warmup']} warm-up; train = forward + "
        "backward + SGD update, counted as 3x forward FLOPs; peak MB: parameters + arena + "
        "tracemalloc (numpy), resident-memory growth (others)"
    )


COMPARISON_COLUMNS = (
    "mode",
    "batch",
    "peer",
    "numpy speed / peer",
    "range over rounds",
    "numpy memory / peer",
)


def _comparison_cells(c: dict) -> list[str]:
    memory = "-" if c["memory"] is None else f"{c['memory']:.2f}x"
    return [
        c["mode"],
        str(c["batch_size"]),
        c["peer"],
        f"{c['speed']:.2f}x",
        f"{c['speed_min']:.2f}-{c['speed_max']:.2f}x",
        memory,
    ]


COMPARISON_TITLE = "the NumPy executor against each peer, paired by round"
COMPARISON_CAPTION = (
    "speed: median over rounds of the peer's latency / NumPy's in the same round (above 1x: "
    "NumPy is faster); memory: peak MB over the peer's"
)


def data_lines(result: dict) -> list[str]:
    """One line per batch size timed by --data: the pipeline's images/s against the step's."""
    from ..bench.timing import DATA_TARGET

    workers = (result["config"].get("data") or {}).get("workers")
    return [
        f"data pipeline, batch {d['batch_size']}: {_num(d['images_per_s'])} images/s "
        f"({workers} loader threads); numpy train step {_num(d['step_images_per_s'])} "
        f"images/s; {_num(d['ratio'])}x the step (target >= {DATA_TARGET:g}x)"
        for d in result.get("data", [])
    ]


def render(result: dict, out: Console) -> None:
    """The results as a terminal table, then any skipped executors and the profile."""
    table = Table(title=_title(result), caption=_caption(result))
    for column in COLUMNS:
        table.add_column(
            column, justify="left" if column in ("executor", "mode") else "right", no_wrap=True
        )
    for r in result["results"]:
        table.add_row(*_cells(r))
    out.print(table)
    if result.get("comparisons"):
        pairs = Table(title=COMPARISON_TITLE, caption=COMPARISON_CAPTION)
        for column in COMPARISON_COLUMNS:
            pairs.add_column(column, justify="left" if column in ("mode", "peer") else "right")
        for c in result["comparisons"]:
            pairs.add_row(*_comparison_cells(c))
        out.print(pairs)
    for line in data_lines(result):
        out.print(line, highlight=False, soft_wrap=True)
    for note in result["skipped"]:
        out.print(f"note: {note['executor']}: {note['reason']}", highlight=False)
    for p in result.get("profile", []):
        render_profile(p, out)


def render_profile(p: dict, out: Console) -> None:
    table = Table(
        title=f"NumPy executor, {p['mode']} at batch {p['batch_size']}: {p['total_ms']:,.1f} ms "
        f"per call ({p['images_per_s']:,.1f} images/s), mean of {p['repeats']} calls"
    )
    for column in ("node", "op", "forward ms", "backward ms", "total ms", "share"):
        table.add_column(column, justify="left" if column in ("node", "op") else "right")
    for r in p["nodes"]:
        table.add_row(
            r["node"],
            r["op"],
            _num(r["forward_ms"], big=",.1f", small=".2f"),
            _num(r["backward_ms"], big=",.1f", small=".2f"),
            _num(r["ms"], big=",.1f", small=".2f"),
            f"{100 * r['share']:.1f}%",
        )
    out.print(table)
    shares = ", ".join(f"{o['op']} {100 * o['share']:.0f}%" for o in p["ops"])
    out.print(f"by op: {shares}", highlight=False, soft_wrap=True)


def markdown(result: dict) -> str:
    """The results table as GitHub Markdown (for a README), with its title and caption."""
    lines = [
        f"**{_title(result)}**",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(COLUMNS))) + "|",
    ]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in result["results"]]
    lines += ["", f"_{_caption(result)}._"]
    if result.get("comparisons"):
        lines += ["", f"**{COMPARISON_TITLE[0].upper()}{COMPARISON_TITLE[1:]}**", ""]
        lines += ["| " + " | ".join(COMPARISON_COLUMNS) + " |"]
        lines += ["|---|---:|---|---:|---:|---:|"]
        lines += ["| " + " | ".join(_comparison_cells(c)) + " |" for c in result["comparisons"]]
        lines += ["", f"_{COMPARISON_CAPTION[0].upper()}{COMPARISON_CAPTION[1:]}._"]
    lines += [f"{line[0].upper()}{line[1:]}." for line in data_lines(result)]
    lines += [f"Note: {n['executor']}: {n['reason']}." for n in result["skipped"]]
    return "\n".join(lines)


def check_bench_fits(graph, modes: Sequence[str], sizes: Sequence[int]) -> None:
    """Refuse a batch size whose row would not fit in memory, before any row runs. Rows run
    one at a time; the NumPy executor's plan stands in for every executor's peak."""
    from ..training.memory import check_fits, input_bytes, plan_peak

    momentum = 4 * sum(math.prod(p.shape) for p in graph.params) if "train" in modes else 0

    def need(b: int) -> int:
        peaks = [plan_peak(graph, b, training=m == "train") for m in modes]
        return max(peaks) + momentum + input_bytes(graph, b)

    for b in sorted(sizes):
        check_fits(need, b, f"alexc bench {graph.name}")


@app.command()
def bench(
    graph: GraphPath,
    batch_sizes: Annotated[
        str, typer.Option("--batch-sizes", "-b", help="comma-separated batch sizes")
    ] = "1,16,64",
    threads: Annotated[
        int,
        typer.Option(
            "--threads", "-t", min=1, help="threads for NumPy/BLAS, onnxruntime and torch alike"
        ),
    ] = 2,
    executors: Annotated[
        str,
        typer.Option(
            "--executors",
            "-e",
            help="comma-separated: numpy, onnxruntime (both LRN forms when the graph has LRN), "
            "onnxruntime-lrn-decomposed, torch (skipped with a note when not installed)",
        ),
    ] = "numpy,onnxruntime,torch",
    modes: Annotated[
        str, typer.Option("--modes", help="comma-separated: infer, train (numpy and torch)")
    ] = "infer,train",
    repeats: Annotated[int, typer.Option("--repeats", "-r", min=1, help="timed calls per row")] = 5,
    warmup: Annotated[
        int, typer.Option("--warmup", min=0, help="untimed calls before timing each row")
    ] = 1,
    seed: Annotated[int, typer.Option("--seed", help="seed of parameters and inputs")] = 0,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="also write every number as JSON to this file")
    ] = None,
    profile: Annotated[
        bool,
        typer.Option(
            "--profile", help="per-node time of the NumPy executor's inference and training step"
        ),
    ] = False,
    as_markdown: Annotated[
        bool, typer.Option("--markdown", help="print the results table as Markdown")
    ] = False,
    data: Annotated[
        bool,
        typer.Option(
            "--data",
            help="also time the training data pipeline (alexc train's loader) at each batch "
            "size against the NumPy training step",
        ),
    ] = False,
    data_source: Annotated[
        str, typer.Option("--data-source", help="the data set --data times, as alexc train --data")
    ] = "fashion-mnist",
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="data loading threads, as alexc train --workers")
    ] = 2,
    ranks: Annotated[
        str | None,
        typer.Option(
            "--ranks",
            help="distributed mode: training images/s of each count of MPI ranks x --threads "
            "against 1 rank x as many threads, at each batch size as the global batch, e.g. 1,2",
        ),
    ] = None,
    transports: Annotated[
        str, typer.Option("--transports", help="with --ranks: shm, tcp (Open MPI's loopback TCP)")
    ] = "shm,tcp",
    scaling: Annotated[
        bool,
        typer.Option(
            "--scaling",
            help="predict images/s of 1-64 ranks on 10 and 100 Gbit/s links, data parallel and "
            "Krizhevsky's hybrid, from per-layer times measured at the first batch size",
        ),
    ] = False,
):
    """Images/s, latency, GFLOP/s and peak memory of every executor, inference and training."""
    from ..bench.timing import EXECUTORS, MODES, calls_per_row, data_calls, plan_rows, run_bench
    from ..serial.frontend import load_graph

    sizes = _int_list(batch_sizes, "--batch-sizes")
    if ranks is not None or scaling:
        counts = _int_list(ranks, "--ranks") if ranks is not None else []
        chosen_transports = _names(transports, "--transports", ("shm", "tcp"))
        _distributed(graph, counts, chosen_transports, scaling, sizes, threads, repeats, warmup)
        return
    chosen = _names(executors, "--executors", EXECUTORS)
    chosen_modes = _names(modes, "--modes", MODES)
    if json_out is not None and not json_out.parent.is_dir():
        raise AlexcError(f"--json {json_out}: folder {json_out.parent} does not exist")
    g = load_graph(graph)
    rows = plan_rows(g, chosen, chosen_modes, sizes)
    check_bench_fits(g, chosen_modes, sizes)
    total = sum(calls_per_row(r, warmup, repeats) for r in rows[0])
    if profile:
        total += len(chosen_modes) * len(sizes) * (warmup + repeats)
    if data:
        total += data_calls(rows[0], sizes, warmup, repeats)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=progress_console,
        transient=True,
    ) as bar:
        task = bar.add_task("measuring the sgemm peak", total=total)
        result = run_bench(
            g,
            batch_sizes=sizes,
            threads=threads,
            executors=chosen,
            modes=chosen_modes,
            repeats=repeats,
            warmup=warmup,
            seed=seed,
            profile=profile,
            rows=rows,
            on_call=lambda label, n: bar.update(task, advance=n, description=label),
            data=data_source if data else None,
            workers=workers,
        )
    console = _console()
    if as_markdown:
        print(markdown(result))
        for p in result.get("profile", []):
            render_profile(p, console)
    else:
        render(result, console)
    if json_out is not None:
        try:
            json_out.write_text(json.dumps(result, indent=2) + "\n")
        except OSError as e:
            raise AlexcError(f"--json {json_out}: cannot write: {e.strerror}") from None
        console.print(f"wrote {json_out}", highlight=False)


def _distributed(graph, counts, transports, scaling, sizes, threads, repeats, warmup) -> None:
    """`alexc bench --ranks/--scaling`: the tables of alexc.bench.mpi, on stdout."""
    from ..bench.machine import machine_info
    from ..bench.mpi import RANK_COUNTS, layer_times, measure_ranks, predict_scaling, scaling_limits
    from ..serial.frontend import load_graph

    out = _console()
    machine = machine_info(threads, sgemm_repeats=1)
    blas = (machine["blas"] or {}).get("architecture")
    where = f"{machine['cpu']}, {machine['cores']} cores, OpenBLAS {blas}"
    for batch in sizes if counts else []:
        with progress_console.status("starting ranks") as status:
            rows = measure_ranks(
                graph, counts, threads, batch, repeats, warmup, transports, status.update
            )
        table = Table(
            title=f"{graph.stem}: training over MPI ranks, global batch {batch} ({where})",
            caption=f"median of {repeats} steps after {warmup} warm-up; hidden: share of the "
            "allreduce time the step did not wait for",
        )
        for column in (
            "ranks x threads",
            "transport",
            "images/s",
            "vs 1 rank, same cores",
            "allreduce ms/step",
            "hidden",
        ):
            table.add_column(column, justify="left" if column == "transport" else "right")
        for r in rows:
            table.add_row(
                f"{r['ranks']} x {r['threads']}",
                r["transport"],
                _num(r["images_per_s"]),
                f"{r['vs_threads']:.2f}x" if "vs_threads" in r else "-",
                _num(r.get("allreduce_s") and r["allreduce_s"] * 1e3),
                f"{100 * r['hidden']:.0f}%" if "hidden" in r else "-",
            )
        out.print(table)
    if scaling:
        g = load_graph(graph)
        measured = sizes[0]
        batch = int(g.train.get("batch_size", 128))
        with progress_console.status(f"timing layers at batch {measured}"):
            stretches = layer_times(g, measured, threads)
        rows = predict_scaling(g, stretches, measured, batch)
        table = Table(
            title=f"{g.name}: predicted images/s (efficiency) at global batch {batch}, from "
            f"layer times at batch {measured} x {threads} thread(s) ({where})"
        )
        table.add_column("link, scheme")
        for n in RANK_COUNTS:
            table.add_column(f"{n}", justify="right")
        for link_scheme in dict.fromkeys((r["link"], r["scheme"]) for r in rows):
            mine = [r for r in rows if (r["link"], r["scheme"]) == link_scheme]
            cells = [f"{r['images_per_s']:,.0f} ({100 * r['efficiency']:.0f}%)" for r in mine]
            table.add_row(", ".join(link_scheme), *cells)
        out.print(table)
        for line in scaling_limits(rows):
            out.print(line, highlight=False)
