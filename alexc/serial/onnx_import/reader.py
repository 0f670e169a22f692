"""Reading an untrusted .onnx file: size and format checks, and tensors read on demand.

The file is parsed without its external data; external tensors are read here, only from
regular files inside the model's folder (no absolute paths, no '..', no symlink out), after
checking each tensor's declared size against its dims and the file's size. Absurd sizes are
refused before anything is allocated, and a malformed file raises AlexcError, never a crash.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import AttributeProto, TensorProto, numpy_helper

from ...errors import AlexcError
from ...ir import Shape
from ...ops import MAX_ELEMENTS
from ...ops.onnx_common import Const

# A protobuf message cannot exceed 2 GiB, so a bigger file is not a model (and is not read).
MAX_FILE_BYTES = 1 << 31


class UnsupportedModel(AlexcError):
    """A valid model that uses something alexc cannot represent exactly."""


# ONNX element type -> little-endian NumPy dtype (raw_data is little-endian by specification).
_DTYPES = {
    TensorProto.FLOAT: np.dtype("<f4"),
    TensorProto.DOUBLE: np.dtype("<f8"),
    TensorProto.FLOAT16: np.dtype("<f2"),
    TensorProto.INT64: np.dtype("<i8"),
    TensorProto.INT32: np.dtype("<i4"),
    TensorProto.INT16: np.dtype("<i2"),
    TensorProto.INT8: np.dtype("i1"),
    TensorProto.UINT8: np.dtype("u1"),
    TensorProto.UINT16: np.dtype("<u2"),
    TensorProto.UINT32: np.dtype("<u4"),
    TensorProto.UINT64: np.dtype("<u8"),
    TensorProto.BOOL: np.dtype("?"),
}
# Where a tensor without raw_data keeps its values (every other listed type: int32_data).
_TYPED_FIELD = {
    TensorProto.FLOAT: "float_data",
    TensorProto.DOUBLE: "double_data",
    TensorProto.INT64: "int64_data",
    TensorProto.UINT32: "uint64_data",
    TensorProto.UINT64: "uint64_data",
}


def type_name(data_type: int) -> str:
    try:
        return TensorProto.DataType.Name(data_type)
    except ValueError:
        return str(data_type)


def attr_type(attr_type: int) -> str:
    try:
        return AttributeProto.AttributeType.Name(attr_type)
    except ValueError:
        return f"type {attr_type}"


class TensorReader:
    """Turns TensorProtos into `Const`s: checks dtype, dims and sizes at once, reads later."""

    def __init__(self, where: str, base_dir: Path | None):
        self.where, self.base_dir = where, base_dir

    def fail(self, name: str, what: str) -> AlexcError:
        return AlexcError(f"{self.where}: tensor '{name}': {what}")

    def const(self, t: TensorProto, name: str | None = None) -> Const:
        name = name or t.name
        dtype = _DTYPES.get(t.data_type)
        if dtype is None:
            raise UnsupportedModel(
                f"{self.where}: tensor '{name}' has type {type_name(t.data_type)}; alexc reads "
                f"{', '.join(type_name(k) for k in _DTYPES)}"
            )
        shape = tuple(int(d) for d in t.dims)
        if any(d < 0 for d in shape):
            raise self.fail(name, f"negative dimension in {list(shape)}")
        if math.prod(shape) > MAX_ELEMENTS:
            raise self.fail(name, f"dims {list(shape)} are absurdly large")
        if t.HasField("segment"):
            raise UnsupportedModel(
                f"{self.where}: tensor '{name}' is segmented; alexc reads whole tensors"
            )
        nbytes = math.prod(shape) * dtype.itemsize
        if t.data_location == TensorProto.EXTERNAL:
            location, offset = self._external(t, name, nbytes)
            return Const(
                name, shape, dtype, lambda: self._read_file(name, location, offset, shape, dtype)
            )
        if t.data_location != TensorProto.DEFAULT:
            raise self.fail(name, f"unknown data_location {t.data_location}")
        if t.external_data:
            raise self.fail(name, "lists external data but its data_location is not EXTERNAL")
        return Const(name, shape, dtype, lambda: self._read_embedded(t, name, shape, dtype))

    def _read_embedded(self, t: TensorProto, name: str, shape: Shape, dtype: np.dtype):
        # Checked at read time, so weights="random" imports a model whose weights are absent.
        if t.HasField("raw_data"):
            held, want, unit = len(t.raw_data), math.prod(shape) * dtype.itemsize, "bytes"
        else:
            held = len(getattr(t, _TYPED_FIELD.get(t.data_type, "int32_data")))
            want, unit = math.prod(shape), "values"
        if held != want:
            raise self.fail(
                name,
                f"dims {list(shape)} need {want} {unit} but the file holds {held}"
                + ("; import the model with weights='random'" if not held else ""),
            )
        if t.HasField("raw_data"):
            array = np.frombuffer(t.raw_data, dtype=dtype).reshape(shape)
            return array.astype(dtype.newbyteorder("="))
        return np.array(numpy_helper.to_array(t), dtype=dtype.newbyteorder("=")).reshape(shape)

    def _external(self, t: TensorProto, name: str, nbytes: int) -> tuple[str, int]:
        """(location, offset) of an external tensor, after the checks that need no file."""
        info = {}
        for entry in t.external_data:
            if entry.key in info:
                raise self.fail(name, f"external data lists '{entry.key}' twice")
            info[entry.key] = entry.value
        location = info.get("location", "")
        try:
            offset = int(info.get("offset", "0"))
            length = int(info["length"]) if "length" in info else None
        except ValueError:
            raise self.fail(name, f"external data offset/length are not integers: {info}") from None
        if offset < 0 or (length is not None and length < 0):
            raise self.fail(name, f"negative external data offset or length: {info}")
        if length is not None and length != nbytes:
            raise self.fail(
                name, f"external data declares {length} bytes but dims {list(t.dims)} need {nbytes}"
            )
        if not location or "\\" in location or "\x00" in location:
            raise self.fail(name, f"external data location {location!r} is not a relative path")
        posix, windows = PurePosixPath(location), PureWindowsPath(location)
        if posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in posix.parts:
            raise self.fail(
                name,
                f"external data location {location!r} leaves the model's folder "
                "(only relative paths inside it are read)",
            )
        return location, offset

    def _read_file(
        self, name: str, location: str, offset: int, shape: Shape, dtype: np.dtype
    ) -> np.ndarray:
        if self.base_dir is None:
            raise self.fail(
                name,
                f"stored in external file {location!r}: pass the model's path (or base_dir) "
                "so alexc knows the folder to read it from",
            )
        base = self.base_dir.resolve()
        path = (base / location).resolve()
        if not path.is_relative_to(base):
            raise self.fail(name, f"external data {location!r} resolves outside the model's folder")
        if not path.is_file():
            raise self.fail(name, f"external data file {location!r} is missing or not a file")
        nbytes = math.prod(shape) * dtype.itemsize
        size = path.stat().st_size
        if offset + nbytes > size:
            raise self.fail(
                name,
                f"needs bytes {offset}..{offset + nbytes} of {location!r}, which has {size} bytes",
            )
        data = bytearray(nbytes)  # writable: parameters are updated in place when training
        try:
            with path.open("rb") as f:
                f.seek(offset)
                got = f.readinto(data)
        except OSError as e:
            raise self.fail(name, f"cannot read {location!r} ({e.strerror})") from None
        if got != nbytes:
            raise self.fail(name, f"{location!r} ended after {got} of {nbytes} bytes")
        return (
            np.frombuffer(data, dtype=dtype)
            .reshape(shape)
            .astype(dtype.newbyteorder("="), copy=False)
        )


def load_onnx(
    source: str | Path | bytes | onnx.ModelProto, base_dir: str | Path | None = None
) -> tuple[onnx.ModelProto, str, Path | None]:
    """(model, a name for messages, the folder external data is read from), parsed safely:
    external data is not loaded, and a missing, huge or malformed file raises AlexcError."""
    if isinstance(source, onnx.ModelProto):
        model, where = source, "<model>"
    elif isinstance(source, (bytes, bytearray)):
        where = "<bytes>"
        if len(source) > MAX_FILE_BYTES:
            raise AlexcError(f"{where}: {len(source)} bytes is more than an ONNX model can hold")
        model = _parse(where, lambda: onnx.load_model_from_string(bytes(source), format="protobuf"))
    else:
        path = Path(source)
        where = str(path)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise AlexcError(f"{where}: no such ONNX file") from None
        except OSError as e:
            raise AlexcError(f"{where}: cannot read ({e.strerror})") from None
        if not path.is_file():
            raise AlexcError(f"{where}: not a file")
        if size == 0:
            raise AlexcError(f"{where}: the file is empty, not an ONNX model")
        if size > MAX_FILE_BYTES:
            raise AlexcError(
                f"{where}: {size} bytes is more than an ONNX file can hold (2 GiB; bigger models "
                "keep their weights in external data files)"
            )
        model = _parse(
            where, lambda: onnx.load(str(path), format="protobuf", load_external_data=False)
        )
        base_dir = path.parent if base_dir is None else base_dir
    if not model.HasField("graph"):
        raise AlexcError(f"{where}: not an ONNX model (it has no graph)")
    return model, where, Path(base_dir) if base_dir is not None else None


def _parse(where: str, parse: Callable[[], onnx.ModelProto]) -> onnx.ModelProto:
    try:
        return parse()
    except DecodeError as e:
        raise AlexcError(f"{where}: not an ONNX model, or a truncated one ({e})") from None
    except OSError as e:
        raise AlexcError(f"{where}: cannot read ({e.strerror or e})") from None
    except (ValueError, RuntimeError) as e:  # onnx's C++ layer and recursion limits
        raise AlexcError(f"{where}: not a readable ONNX model ({e})") from None
