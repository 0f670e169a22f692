"""The fuzz tier: every reader of untrusted files, fed mutated inputs by Hypothesis.

The property is the same for every reader: it accepts the input and the result verifies, or it
raises alexc's own error type with one line naming the file. Never another exception, a hang,
or memory far beyond the file's size.

The default tier runs a fixed number of examples per reader from a fixed seed (well under a
minute in all). A long run explores new seeds with more examples:

    ALEXC_FUZZ_EXAMPLES=20000 python -m pytest -m fuzz tests/test_fuzz.py

Every failure a run finds becomes an explicit `@example` (or a test of its own) below.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import tracemalloc
import zlib
from datetime import timedelta
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from alexc.errors import AlexcError, GraphError
from alexc.ir.graph import verify
from alexc.serial.frontend import parse_graph
from tests.helpers import GRAPHS

pytestmark = pytest.mark.fuzz

LONG_RUN = os.environ.get("ALEXC_FUZZ_EXAMPLES")


def fuzz(examples: int):
    """Hypothesis settings: `examples` from a fixed seed, or the long run's count, seeds new.

    An example taking 10 s (a few ms is typical) fails as a hang would."""
    return settings(
        max_examples=int(LONG_RUN) if LONG_RUN else examples,
        derandomize=not LONG_RUN,
        database=None,
        deadline=timedelta(seconds=10),
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def assert_one_line(error: AlexcError, name: str) -> None:
    message = str(error)
    assert "\n" not in message, message
    assert name in message, f"the error does not name {name}: {message}"


# --- graph files ------------------------------------------------------------------------------

GRAPH_DOCS = {p.name: yaml.safe_load(p.read_text()) for p in sorted(GRAPHS.glob("*.yaml"))}
SOURCE = "fuzzed.yaml"

# Values of every kind a hand-edited file might hold in any place.
ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0, -1, 2**31, 2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from(["abc", "", "conv", "1e-3", "-", "[1, 2]"]),
    st.lists(st.integers(-2, 40), max_size=5),
    st.lists(st.text(max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(-2, 3), max_size=2),
)


def _places(doc, path=()):
    """Every (container, key) of a parsed YAML document, containers included."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield doc, key
            yield from _places(value, (*path, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield doc, i
            yield from _places(value, (*path, i))


@st.composite
def mutated_graph_text(draw):
    """A real graph file after 1-4 structured mutations (or its text cut short)."""
    doc = yaml.safe_load(yaml.safe_dump(GRAPH_DOCS[draw(st.sampled_from(sorted(GRAPH_DOCS)))]))
    for _ in range(draw(st.integers(1, 4))):
        places = list(_places(doc))
        container, key = draw(st.sampled_from(places))
        kind = draw(
            st.sampled_from(["replace", "delete", "add", "duplicate", "swap", "rewire", "top"])
        )
        if kind == "replace":
            container[key] = draw(ODD_VALUES)
        elif kind == "delete":
            del container[key]
        elif kind == "add" and isinstance(container, dict):
            container[draw(st.sampled_from(["inputs", "init", "units", "zz", "shape", 1]))] = draw(
                ODD_VALUES
            )
        elif kind in ("duplicate", "swap", "rewire") and isinstance(doc.get("nodes"), list):
            nodes = doc["nodes"]
            if not nodes:
                continue
            i, j = draw(st.integers(0, len(nodes) - 1)), draw(st.integers(0, len(nodes) - 1))
            if kind == "duplicate":
                nodes.insert(j, nodes[i])
            elif kind == "swap":
                nodes[i], nodes[j] = nodes[j], nodes[i]
            elif isinstance(nodes[i], dict) and isinstance(nodes[j], dict):
                nodes[i]["inputs"] = [nodes[j].get("name", "x")]  # may close a cycle
        elif kind == "top":
            doc[
                draw(
                    st.sampled_from(
                        ["input", "init", "nodes", "outputs", "classes", "train", "data"]
                    )
                )
            ] = draw(ODD_VALUES)
        if not isinstance(doc, dict):
            break
    text = yaml.safe_dump(doc, sort_keys=False)
    if draw(st.integers(0, 9)) == 0:
        text = text[: draw(st.integers(0, len(text)))]
    return text


def check_graph_text(text: str) -> None:
    try:
        graph = parse_graph(text, source=SOURCE)
    except GraphError as e:
        assert_one_line(e, SOURCE)
        event(f"refused: {e.what.split(' ')[0]}")
        return
    event("accepted")
    verify(graph)
    # What the frontend accepts, training and preprocessing accept too.
    from alexc.data import Augment
    from alexc.training.recipe import Recipe

    Recipe.from_graph(graph)
    if len(graph.input.shape) == 3 and graph.input.shape[0] in (1, 3):
        Augment.from_config(graph.data, graph.input.shape)
    assert all(math.prod(s) >= 1 for s in graph.shapes.values())


TINY = "input: {name: image, shape: [1, 8, 8]}\nnodes:\n  - {name: fc, op: linear, units: 3}\n"


# What the fuzzer found, each once a Python traceback instead of one line.
@fuzz(400)
@given(mutated_graph_text())
@example(TINY + "init: true\n")  # TypeError: 'bool' object is not a mapping
@example(TINY + "init: abc\n")  # the report: 'str' object is not a mapping
@example(TINY + "init: {weight: 3}\n")
@example(TINY + "data: {flip: null}\n")  # accepted, then refused by training
@example(TINY + "data: {mean: [null]}\n")
@example(TINY + "data: {mean: []}\n")
@example(TINY + "data: {mean: abc}\n")  # ValueError in onnx_export
@example(TINY + "train: {label_smoothing: abc}\n")  # ValueError in lowering
@example(TINY + "train: {schedule: {step: {milestones: abc}}}\n")
def test_fuzz_graph_files(text):
    check_graph_text(text)


# --- safetensors checkpoints --------------------------------------------------------------------

CKPT_GRAPH = parse_graph(
    "input: {name: image, shape: [1, 6, 6]}\n"
    "nodes:\n"
    "  - {name: conv1, op: conv, filters: 2, kernel: 3}\n"
    "  - {name: flat, op: flatten}\n"
    "  - {name: fc, op: linear, units: 3}\n",
    "ckpt.yaml",
)


def _real_checkpoint() -> bytes:
    import tempfile
    from pathlib import Path

    from alexc.training.checkpoint import save_checkpoint

    params = CKPT_GRAPH.init_params(0)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "real.safetensors"
        save_checkpoint(
            path, params, momentum=params, meta={"epoch": 1, "classes": ["a", "b", "c"]}
        )
        return path.read_bytes()


CHECKPOINT = _real_checkpoint()
HEADER_VALUES = st.one_of(
    ODD_VALUES,
    st.sampled_from(["F32", "F16", "F64", "I64", "U8", "BOOL", "BF16", "F8_E4M3", "C64", "X"]),
    st.lists(st.integers(-1, 2**40), max_size=4),
    st.sampled_from([[0, 2**62], [2**40, 0], [-1, 4], [4, 0], [0, 0]]),
)


@st.composite
def mutated_checkpoint(draw):
    """A real checkpoint with its JSON header mutated, or its bytes flipped, cut or grown."""
    blob = bytearray(CHECKPOINT)
    n = int.from_bytes(blob[:8], "little")
    kind = draw(st.sampled_from(["header", "header", "meta", "bytes", "cut", "length"]))
    if kind in ("header", "meta"):
        header = json.loads(blob[8 : 8 + n])
        meta = header["__metadata__"]
        if kind == "meta":  # alexc's own JSON inside safetensors' string metadata
            value = draw(st.one_of(ODD_VALUES, st.fixed_dictionaries({"classes": ODD_VALUES})))
            meta["alexc"] = json.dumps(value) if draw(st.integers(0, 4)) else "{not json"
        for _ in range(draw(st.integers(1, 3)) if kind == "header" else 0):
            container, key = draw(st.sampled_from(list(_places(header))))
            if draw(st.booleans()):
                container[key] = draw(HEADER_VALUES)
            else:
                del container[key]
        text = json.dumps(header).encode()
        blob = bytearray(len(text).to_bytes(8, "little")) + text + blob[8 + n :]
    elif kind == "bytes":
        for _ in range(draw(st.integers(1, 8))):
            blob[draw(st.integers(0, len(blob) - 1))] = draw(st.integers(0, 255))
    elif kind == "cut":
        blob = blob[: draw(st.integers(0, len(blob) - 1))]
    else:
        value = draw(st.sampled_from([0, 1, n - 1, n + 1, 2**31, 2**63, 2**64 - 1]))
        blob[:8] = value.to_bytes(8, "little")
    return bytes(blob)


def _with_alexc_metadata(text: str) -> bytes:
    n = int.from_bytes(CHECKPOINT[:8], "little")
    header = json.loads(CHECKPOINT[8 : 8 + n])
    header["__metadata__"]["alexc"] = text
    head = json.dumps(header).encode()
    return len(head).to_bytes(8, "little") + head + CHECKPOINT[8 + n :]


@fuzz(300)
@given(mutated_checkpoint())
@example(_with_alexc_metadata("null"))  # found: AttributeError, 'NoneType' has no 'get'
@example(_with_alexc_metadata("[1, 2]"))
@example(_with_alexc_metadata('{"classes": 3}'))
def test_fuzz_checkpoints(tmp_path_factory, blob):
    from alexc.errors import CheckpointError
    from alexc.training.checkpoint import load_for_graph, read_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "fuzzed.safetensors"
    path.write_bytes(blob)
    tracemalloc.start()  # sees Python's and NumPy's allocations
    try:
        params, momentum, meta = read_checkpoint(path)
        graph, checked = load_for_graph(path, CKPT_GRAPH)
    except CheckpointError as e:
        assert_one_line(e, str(path))
        event("refused")
        return
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 8 * len(blob) + (1 << 20), f"{peak} bytes to read {len(blob)}"
    event("accepted")
    assert isinstance(meta, dict)
    assert all(isinstance(v, np.ndarray) for v in [*params.values(), *momentum.values()])
    for p in graph.params:
        assert checked[p.name].shape == p.shape and checked[p.name].dtype == np.float32


# --- IDX files ----------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """An IDX file: two zero bytes, the type code, the number of dims, big-endian dims, data."""
    head = bytes([0, 0, type_code, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return head + array.astype(array.dtype.newbyteorder(">")).tobytes()


IDX_IMAGES = idx_bytes(np.random.default_rng(0).integers(0, 256, (6, 5, 4), dtype=np.uint8))
IDX_LABELS = idx_bytes(np.array([0, 1, 2, 1, 0, 2], np.uint8))


IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.int16, 0x0C: np.int32, 0x0D: np.float32}


@st.composite
def idx_array(draw, ndim: int):
    """A well-formed IDX file of any type, usually `ndim` dims of small sizes, 0 included."""
    code = draw(st.sampled_from(sorted(IDX_TYPES)))
    dims = st.integers(1, 4) if draw(st.booleans()) else st.just(ndim)
    shape = draw(st.lists(st.sampled_from([0, 1, 2, 3, 6]), min_size=1, max_size=4).filter(bool))
    shape = (shape + [3] * 4)[: draw(dims)]
    return idx_bytes(np.full(shape, draw(st.integers(-3, 300))).astype(IDX_TYPES[code]), code)


@st.composite
def mutated_idx(draw, blob: bytes, ndim: int):
    """IDX bytes with header or payload bytes changed, cut, grown, or the whole file gzipped;
    the real file's or a well-formed one of another type and shape."""
    data = bytearray(blob if draw(st.booleans()) else draw(idx_array(ndim)))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["header", "byte", "cut", "grow", "dims"]))
        if kind == "header" and data:
            data[draw(st.integers(0, min(len(data), 16) - 1))] = draw(st.integers(0, 255))
        elif kind == "byte" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif kind == "cut":
            data = data[: draw(st.integers(0, len(data)))]
        elif kind == "grow":
            data += bytes(draw(st.integers(1, 64)))
        elif kind == "dims" and len(data) >= 8:
            k = 4 * draw(st.integers(1, max(1, min(data[3], (len(data) - 4) // 4))))
            value = draw(st.sampled_from([0, 1, 2**16, 2**31, 2**32 - 1]))
            data[k : k + 4] = value.to_bytes(4, "big")
    if draw(st.booleans()):
        data = bytearray(gzip.compress(bytes(data), mtime=0))
        if draw(st.integers(0, 3)) == 0:  # forge the length the gzip trailer records
            data[-4:] = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "little")
    return bytes(data)


# Found by a long run: a gzipped header promising (2, 6, 2**31) bytes, which a gzip trailer
# cannot tell from 16 (it records the size mod 2**32): MemoryError before reading anything.
BOMB_IDX = gzip.compress(bytes.fromhex("00000803000000020000000680000000"), mtime=0)


@fuzz(300)
@given(mutated_idx(IDX_IMAGES, 3), mutated_idx(IDX_LABELS, 1), st.booleans())
@example(BOMB_IDX, IDX_LABELS, True)
@example(idx_bytes(np.zeros((6, 0, 4), np.uint8)), IDX_LABELS, False)  # ZeroDivisionError
@example(  # dims (2**32 - 1, 0, 184549379, 3): ValueError, array is too big
    bytes.fromhex("00000c04ffffffff000000000b00000300000003"), IDX_LABELS, False
)
@example(idx_bytes(np.zeros((6, 5, 4, 2), np.uint8)), IDX_LABELS, False)  # unnamed file
@example(idx_bytes(np.zeros((0, 5, 4), np.uint8)), idx_bytes(np.zeros(0, np.uint8)), False)
# One image, fewer than a batch of 2: the loader yielded nothing (StopIteration).
@example(idx_bytes(np.zeros((1, 3, 3), np.uint8)), idx_bytes(np.zeros(1, np.uint8)), False)
def test_fuzz_idx_files(tmp_path_factory, images, labels, gzipped_names):
    from alexc.data import Augment, Loader, open_source
    from alexc.errors import DataError

    root = tmp_path_factory.mktemp("idx")
    suffix = ".gz" if gzipped_names else ""
    (root / f"train-images-idx3-ubyte{suffix}").write_bytes(images)
    (root / f"train-labels-idx1-ubyte{suffix}").write_bytes(labels)
    try:
        source = open_source(root, split="train", channels=1)
        augment = Augment.from_config({}, (1, 8, 8))
        with Loader(source, augment, batch_size=2, train=True, seed=0, workers=0) as loader:
            x, y = next(iter(loader))
    except DataError as e:
        assert_one_line(e, str(root))
        event("refused")
        return
    event("accepted")
    assert x.shape == (2, 1, 8, 8) and np.isfinite(x).all()
    assert ((0 <= y) & (y < len(source.classes))).all()


# --- images -------------------------------------------------------------------------------------


def _real_images() -> dict[str, bytes]:
    """Small images in every format and several modes alexc reads."""
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (7, 5, 3), dtype=np.uint8))
    out = {}
    for fmt, suffix, modes in (
        ("PNG", "png", ("RGB", "RGBA", "L", "P", "I;16", "1")),
        ("JPEG", "jpg", ("RGB", "L", "CMYK")),
        ("GIF", "gif", ("P",)),
        ("BMP", "bmp", ("RGB", "1")),
        ("TIFF", "tiff", ("RGB", "LA", "I;16")),
        ("WEBP", "webp", ("RGB", "RGBA")),
        ("PPM", "ppm", ("RGB", "L")),
    ):
        for mode in modes:
            buffer = io.BytesIO()
            rgb.convert(mode if mode != "I;16" else "I").convert(mode).save(buffer, fmt)
            out[f"{mode.replace(';', '')}.{suffix}"] = buffer.getvalue()
    return out


IMAGES = _real_images()


def _with_size(name: str, data: bytearray, width: int, height: int) -> bytearray:
    """The image's header made to claim width x height (how decompression bombs start)."""
    if name.endswith(".png") and len(data) >= 33:  # IHDR: sizes at 16 and 20, CRC at 29
        data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
        data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    elif name.endswith(".bmp") and len(data) >= 26:
        data[18:26] = width.to_bytes(4, "little") + height.to_bytes(4, "little")
    elif name.endswith(".gif") and len(data) >= 10:
        data[6:10] = (width % 2**16).to_bytes(2, "little") + (height % 2**16).to_bytes(2, "little")
    return data


@st.composite
def mutated_image(draw):
    """(file name, bytes): a real image with header or body bytes changed, cut or grown."""
    name = draw(st.sampled_from(sorted(IMAGES)))
    data = bytearray(IMAGES[name])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["header", "header", "byte", "cut", "grow", "size"]))
        if kind == "header":
            data[draw(st.integers(0, min(len(data), 48) - 1))] = draw(st.integers(0, 255))
        elif kind == "byte":
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif kind == "cut":
            data = data[: draw(st.integers(0, len(data) - 1))]
        elif kind == "grow":
            data += draw(st.binary(min_size=1, max_size=64))
        elif kind == "size":
            sizes = st.sampled_from([0, 1, 1500, 3000, 40000, 2**16 - 1])
            data = _with_size(name, data, draw(sizes), draw(sizes))
        if not data:
            break
    return name, bytes(data)


@fuzz(400)
@given(mutated_image(), st.sampled_from([1, 3]))
def test_fuzz_images(tmp_path_factory, image, channels):
    import warnings

    from alexc.data import Augment, FolderSource, Loader

    name, data = image
    path = tmp_path_factory.mktemp("img") / name
    path.write_bytes(data)
    source = FolderSource([path], [0], ["only"], channels=channels)
    augment = Augment.from_config({}, (channels, 8, 8))
    # A bound of a megapixel, not Pillow's 89: the same refusal, without allocating and
    # zeroing hundreds of MB for each forged size the fuzzer tries.
    with warnings.catch_warnings(), mock.patch("alexc.data.sources.MAX_PIXELS", 1 << 20):
        warnings.simplefilter("ignore")  # Pillow's own (decompression bomb, odd TIFF tags)
        with Loader(source, augment, batch_size=1, train=False, seed=0, workers=0) as loader:
            batches = list(loader)
        arr = source.decode(0)
    if not batches:
        assert [p for p, _ in source.skipped] == [str(path)]
        event(f"skipped: {source.skipped[0][1].split(':')[0]}")
        return
    event("decoded")
    ((x, y),) = batches
    assert x.shape == (1, channels, 8, 8) and np.isfinite(x).all() and y.tolist() == [0]
    assert arr.dtype == np.uint8 and arr.shape[2] == channels and arr.size <= (1 << 20) * 3


# --- ONNX models --------------------------------------------------------------------------------


def _onnx_seeds() -> dict[str, bytes]:
    """alexc's own export of a small net (both LRN forms), and onnx's own pytorch-converted
    test models of the ops alexc imports."""
    import onnx

    from alexc.serial.onnx_export import export_onnx

    graph = parse_graph(
        "input: {name: image, shape: [3, 9, 9]}\n"
        "nodes:\n"
        "  - {name: conv1, op: conv, filters: 4, kernel: 3, pad: 1, groups: 1}\n"
        "  - {name: relu1, op: relu}\n"
        "  - {name: norm1, op: lrn, size: 3, alpha: 0.01, beta: 0.75, bias: 2, convention: paper}\n"
        "  - {name: pool1, op: maxpool, kernel: 3, stride: 2}\n"
        "  - {name: flat, op: flatten}\n"
        "  - {name: drop, op: dropout, rate: 0.5}\n"
        "  - {name: fc, op: linear, units: 5}\n"
        "  - {name: prob, op: softmax}\n",
        "onnx-seed.yaml",
    )
    params = graph.init_params(0)
    seeds = {
        f"alexc-{lrn}": export_onnx(graph, params, lrn=lrn).SerializeToString()
        for lrn in ("node", "decomposed")
    }
    converted = Path(onnx.__file__).parent / "backend" / "test" / "data" / "pytorch-converted"
    for name in ("test_Conv2d_groups", "test_AvgPool2d_stride", "test_MaxPool2d", "test_Linear"):
        path = converted / name / "model.onnx"
        if path.exists():
            seeds[name] = path.read_bytes()
    return seeds


ONNX_SEEDS = _onnx_seeds()
PROTO_INTS = st.sampled_from([0, 1, 2, 3, -1, 7, 2**31 - 1, 2**40, -(2**40)])
PROTO_TEXT = st.sampled_from(["", "x", "image", "conv1.weight", "Conv", "Gemm", "../x", "N"])


def _proto_places(message, depth=0):
    """Every (message, field) of a protobuf message that is set, nested messages included."""
    for field, value in message.ListFields():
        yield message, field
        if field.message_type is not None and depth < 8:
            children = value if _repeated(field) else [value]
            for child in children:
                yield from _proto_places(child, depth + 1)


def _repeated(field) -> bool:
    return field.label == field.LABEL_REPEATED if hasattr(field, "label") else field.is_repeated


def _mutate_field(draw, message, field) -> None:
    value = getattr(message, field.name)
    if _repeated(field):
        if not len(value):
            return
        i = draw(st.integers(0, len(value) - 1))
        kind = draw(st.sampled_from(["delete", "duplicate", "clear", "set"]))
        if kind == "delete" or (kind == "set" and field.message_type is not None):
            del value[i]
        elif kind == "duplicate":
            value.add().CopyFrom(value[i]) if field.message_type else value.append(value[i])
        elif kind == "clear":
            message.ClearField(field.name)
        else:
            value[i] = _odd_scalar(draw, field)
    elif field.message_type is not None:
        message.ClearField(field.name)
    else:
        setattr(message, field.name, _odd_scalar(draw, field))


def _odd_scalar(draw, field):
    if field.type == field.TYPE_STRING:
        return draw(PROTO_TEXT)
    if field.type == field.TYPE_BYTES:
        return draw(st.binary(max_size=40))
    if field.type in (field.TYPE_FLOAT, field.TYPE_DOUBLE):
        return draw(st.sampled_from([0.0, -1.0, 0.5, 1e30, math.nan, math.inf]))
    if field.type == field.TYPE_ENUM:
        return draw(st.sampled_from([v.number for v in field.enum_type.values]))
    if field.cpp_type in (field.CPPTYPE_UINT32, field.CPPTYPE_UINT64):
        return abs(draw(PROTO_INTS)) % 2**32
    if field.cpp_type == field.CPPTYPE_INT32:
        return max(min(draw(PROTO_INTS), 2**31 - 1), -(2**31))
    return draw(PROTO_INTS)


@st.composite
def mutated_onnx(draw):
    """(model bytes, external data bytes): a seed model with protobuf fields changed, deleted or
    duplicated, initializers moved to external data (paths in and out of the folder), or its
    bytes cut or flipped."""
    import onnx

    model = onnx.ModelProto()
    model.ParseFromString(ONNX_SEEDS[draw(st.sampled_from(sorted(ONNX_SEEDS)))])
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["field", "field", "field", "external", "metadata"]))
        if kind == "metadata":  # the preprocessing alexc's export records as JSON text
            entry = model.metadata_props.add()
            entry.key = draw(st.sampled_from(["mean", "std", "classes"]))
            entry.value = json.dumps(draw(st.one_of(ODD_VALUES, st.lists(ODD_VALUES, max_size=4))))
        elif kind == "external" and model.graph.initializer:
            tensor = draw(st.sampled_from(list(model.graph.initializer)))
            tensor.data_location = onnx.TensorProto.EXTERNAL
            tensor.ClearField("raw_data")
            tensor.ClearField("float_data")
            del tensor.external_data[:]
            entries = {
                "location": draw(
                    st.sampled_from(
                        [
                            "weights.bin",
                            "missing.bin",
                            "../weights.bin",
                            "/etc/passwd",
                            ".",
                            "sub/../weights.bin",
                            "",
                        ]
                    )
                ),
                "offset": str(draw(st.sampled_from([0, 4, 64, 2**40, -4]))),
                "length": str(draw(st.sampled_from([0, 4, 16, 2**40, -4]))),
            }
            for key in draw(st.lists(st.sampled_from(sorted(entries)), unique=True)):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, entries[key]
        else:
            places = list(_proto_places(model))
            if places:
                _mutate_field(draw, *draw(st.sampled_from(places)))
    blob = bytearray(model.SerializeToString())
    if blob and draw(st.integers(0, 5)) == 0:
        if draw(st.booleans()):
            blob = blob[: draw(st.integers(0, len(blob) - 1))]
        else:
            blob[draw(st.integers(0, len(blob) - 1))] = draw(st.integers(0, 255))
    return bytes(blob), draw(st.binary(min_size=0, max_size=256))


def _ort_outputs(blob: bytes, x: np.ndarray):
    """onnxruntime's outputs for the model, or None where it refuses the model or the input."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x})
    except Exception:  # noqa: BLE001 - any refusal of onnxruntime's means "no reference"
        return None


def _onnx_with_metadata(key: str, value: str) -> tuple[bytes, bytes]:
    import onnx

    model = onnx.load_from_string(ONNX_SEEDS["alexc-node"])
    for entry in model.metadata_props:
        if entry.key == key:
            entry.value = value
    return model.SerializeToString(), b""


@fuzz(200)
@given(mutated_onnx())
@example(_onnx_with_metadata("mean", "[1]"))  # found: kept, then refused by preprocessing
@example(_onnx_with_metadata("std", "[0, 1, 1]"))
@example(_onnx_with_metadata("std", "[true, 1, 1]"))
def test_fuzz_onnx_models(tmp_path_factory, model):
    import alexc
    from alexc.data import Augment
    from alexc.serial.onnx_import import convert_onnx

    blob, weights = model
    folder = tmp_path_factory.mktemp("onnx")
    (folder / "weights.bin").write_bytes(weights)
    path = folder / "model.onnx"
    path.write_bytes(blob)
    try:
        imported = convert_onnx(path)
    except AlexcError as e:
        assert_one_line(e, str(path))
        caught = re.match(r".*malformed model \((\w+)", str(e))  # convert_onnx's catch-all
        event(f"refused: {type(e).__name__}" + (f", caught {caught[1]}" if caught else ""))
        return
    event("accepted")
    graph, params = imported.graph, imported.params
    verify(graph)
    for p in graph.params:
        assert params[p.name].shape == p.shape and params[p.name].dtype == np.float32
    if len(graph.input.shape) == 3 and graph.input.shape[0] in (1, 3):
        Augment.from_config(graph.data, graph.input.shape)  # the preprocessing it recorded
    # Where onnxruntime runs the same file, alexc's forward pass must agree with it.
    x = np.random.default_rng(0).standard_normal((2, *graph.input.shape)).astype(np.float32)
    reference = (
        _ort_outputs(blob, x) if all(np.isfinite(v).all() for v in params.values()) else None
    )
    if reference is None:
        event("accepted; onnxruntime refuses it")
        return
    outputs = alexc.compile(graph, 2).outputs(params, x)
    onnx_outputs = [o.name for o in __import__("onnx").load_from_string(blob).graph.output]
    for name, want in zip(onnx_outputs, reference, strict=True):
        got = outputs[imported.outputs[name]]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(1, np.abs(want).max()))
