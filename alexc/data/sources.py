"""Image sources: IDX files (Fashion-MNIST) held in memory, and ImageFolder trees decoded lazily.

Every source yields uint8 images in HWC layout plus int64 labels. A folder source decodes each
file on first use; a file that fails to decode is skipped, recorded in `source.skipped` and never
decoded again, so a bad file costs one try and never stops training.
"""

from __future__ import annotations

import gzip
import math
import re
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from alexc.errors import DataError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
    | {".ppm", ".pgm", ".pbm", ".pnm"}
)
SPLITS = ("train", "val", "test")
# Images with more pixels are skipped, not decoded: Pillow's default decompression-bomb
# threshold (it warns above this and refuses above twice this), 358 MB decoded as RGBA.
MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3
IDX_VAL_IMAGES = 5000  # Fashion-MNIST: 55,000 train, 5,000 val, the 10,000 t10k images test

# IDX magic: two zero bytes, a type code, the number of dimensions; then big-endian uint32 dims.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_NAME = re.compile(r"^(train|t10k)-(images|labels)[-.]idx([13])-ubyte(\.gz)?$")


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzipped or raw, told apart by content) into an array of its dims.

    The header's size is checked against the file (for gzip: against the size recorded in
    its trailer) before the payload is read, so a truncated or forged file fails fast.
    """
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            is_gzip = raw.read(2) == b"\x1f\x8b"
            size = raw.seek(0, 2)
            if is_gzip:
                # A gzip trailer ends with the uncompressed length mod 2**32 (one-member files).
                raw.seek(max(size - 4, 0))
                size = int.from_bytes(raw.read(4), "little")
        with (gzip.open if is_gzip else open)(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in _IDX_DTYPES or head[3] == 0:
                raise DataError(f"{path}: not an IDX file (magic number {head.hex() or 'missing'})")
            ndim, dtype = head[3], np.dtype(_IDX_DTYPES[head[2]])
            dims_raw = f.read(4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise DataError(f"{path}: truncated IDX file (header cut short)")
            dims = tuple(int.from_bytes(dims_raw[4 * k : 4 * k + 4], "big") for k in range(ndim))
            if 0 in dims:  # no data; and NumPy cannot even shape (2**32 - 1, 0, 2**28)
                raise DataError(f"{path}: the IDX file holds no data (its dims are {dims})")
            nbytes = math.prod(dims) * dtype.itemsize
            expected = 4 + 4 * ndim + nbytes
            if size != (expected % 2**32 if is_gzip else expected):
                raise DataError(
                    f"{path}: truncated or malformed IDX file: its header promises {dims} of "
                    f"{dtype.name} ({expected} bytes) but the file holds {size} bytes"
                )
            data = _read_up_to(f, nbytes)
            if len(data) != nbytes or f.read(1):
                raise DataError(f"{path}: truncated or malformed IDX file (payload size differs)")
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read IDX file ({e})") from None
    return np.frombuffer(data, dtype).reshape(dims).astype(dtype.newbyteorder("="), copy=False)


def _read_up_to(f, nbytes: int, chunk: int = 1 << 24) -> bytearray:
    """At most `nbytes` from `f`, in chunks: memory grows with what the file really holds, not
    with what a forged header promises (a gzip trailer records the size only mod 2**32)."""
    data = bytearray()
    while len(data) < nbytes:
        piece = f.read(min(chunk, nbytes - len(data)))
        if not piece:
            break
        data += piece
    return data


def image_to_array(img: Image.Image, channels: int) -> np.ndarray:
    """A Pillow image as uint8 HWC with `channels` (1: luma, 3: RGB) channels.

    Alpha (RGBA, LA, PA, transparent palettes) is composited on black: colour * alpha / 255,
    so fully transparent pixels are 0. 16-bit modes (I;16*, I) are scaled from 0..65535,
    float mode F from 0..1. Grayscale becomes RGB by replication; RGB becomes gray by the
    ITU-R 601-2 luma (299 R + 587 G + 114 B) / 1000, rounded.
    """
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        scale = 255.0 if mode == "F" else 1 / 257
        arr = np.clip(np.rint(np.asarray(img, dtype=np.float64) * scale), 0, 255).astype(np.uint8)
        arr = arr[..., None]
    else:
        if mode == "1":
            img = img.convert("L")
        elif mode in ("P", "PA", "RGBa", "La"):
            has_alpha = mode != "P" or "transparency" in img.info
            img = img.convert(("LA" if mode == "La" else "RGBA") if has_alpha else "RGB")
        elif mode not in ("L", "LA", "RGB", "RGBA"):
            img = img.convert("RGB")
        arr = np.asarray(img)
        arr = arr[..., None] if arr.ndim == 2 else arr
        if arr.shape[2] in (2, 4):
            alpha = arr[..., -1:].astype(np.uint32)
            arr = ((arr[..., :-1] * alpha + 127) // 255).astype(np.uint8)
    if arr.shape[2] == channels:
        return np.ascontiguousarray(arr)
    return np.repeat(arr, 3, axis=2) if channels == 3 else _luma(arr)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma of uint8 (..., 3) as uint8 (..., 1), rounded to nearest."""
    weights = np.array([299, 587, 114], dtype=np.uint32)
    return ((rgb.astype(np.uint32) @ weights + 500) // 1000).astype(np.uint8)[..., None]


class Source:
    """A labelled image collection. Subclasses implement `decode`.

    `channels` is what the graph wants; `stored_channels` is what `decode` returns (1 when a
    grayscale set feeds a 3-channel graph: the loader broadcasts, saving work and memory).
    """

    origin = "the data"  # where the images come from, for messages; open_source names it

    def __init__(self, classes: Sequence[str], labels, channels: int, stored_channels: int):
        if channels not in (1, 3):
            raise DataError(f"graphs take 1 or 3 input channels, not {channels}")
        self.classes = list(classes)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.channels, self.stored_channels = channels, stored_channels
        self.skipped: list[tuple[str, str]] = []
        self._bad: set[int] = set()
        self._lock = threading.Lock()
        self._eigen: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.labels)

    def decode(self, i: int, min_side: int | None = None) -> np.ndarray | None:
        """Image i as uint8 HWC with `stored_channels`, or None if it cannot be decoded.

        `min_side` says the image will be resized to that short side anyway, so a decoder
        may return a smaller version (down to that size) when that is faster.
        """
        raise NotImplementedError

    def image(self, i: int) -> np.ndarray | None:
        """Image i as uint8 HWC with `channels` channels, or None if it is unreadable."""
        arr = self.decode(i)
        if arr is None or arr.shape[2] == self.channels:
            return arr
        return np.repeat(arr, self.channels, axis=2)

    def rgb_eigen(self, *, seed: int = 0, max_images: int = 2000) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues (descending) and eigenvectors (columns) of the RGB covariance.

        Pixel values are scaled to 0..1; estimated on a seeded sample of up to `max_images`
        images, with large images subsampled to about 64 px on the short side. Cached.
        """
        if self.channels != 3:
            raise DataError("PCA colour statistics need a 3-channel source")
        key = (seed, max_images)
        if key not in self._eigen:
            rng = np.random.default_rng([seed, 0x5CA])
            pick = np.sort(rng.choice(len(self), size=min(len(self), max_images), replace=False))
            total, outer, count = np.zeros(3), np.zeros((3, 3)), 0
            for i in pick:
                arr = self.decode(int(i), min_side=64)
                if arr is None:
                    continue
                step = max(1, min(arr.shape[:2]) // 64)
                px = arr[::step, ::step].reshape(-1, arr.shape[2]).astype(np.float64) / 255
                px = np.repeat(px, 3, axis=1) if px.shape[1] == 1 else px
                total += px.sum(0)
                outer += px.T @ px
                count += len(px)
            if count == 0:
                raise DataError("no readable images to estimate PCA colour statistics from")
            mean = total / count
            vals, vecs = np.linalg.eigh(outer / count - np.outer(mean, mean))
            order = np.argsort(vals)[::-1]
            self._eigen[key] = (np.clip(vals[order], 0, None), vecs[:, order])
        return self._eigen[key]

    def _skip(self, i: int, where: str, reason: str) -> None:
        with self._lock:
            if i not in self._bad:
                self._bad.add(i)
                self.skipped.append((where, reason))


class ArraySource(Source):
    """Images held in memory as one uint8 array (N, H, W) or (N, H, W, C)."""

    def __init__(self, images: np.ndarray, labels, classes: Sequence[str], *, channels: int):
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[..., None]
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
            raise DataError(
                f"images must be uint8 (N, H, W) or (N, H, W, 1|3), not {images.dtype} "
                f"{images.shape}"
            )
        if images.shape[3] == 3 and channels == 1:
            images = _luma(images)
        super().__init__(classes, labels, channels, images.shape[3])
        if len(self.labels) != len(images):
            raise DataError(f"{len(images)} images but {len(self.labels)} labels")
        if len(self.labels) and not 0 <= self.labels.min() <= self.labels.max() < len(classes):
            raise DataError(f"labels must lie in 0..{len(classes) - 1} (one per class)")
        self.images = images

    def decode(self, i: int, min_side: int | None = None) -> np.ndarray:
        return self.images[i]


class FolderSource(Source):
    """Image files, decoded with Pillow on each use (lazily, in the loader's threads)."""

    def __init__(self, paths: Sequence[Path], labels, classes: Sequence[str], *, channels: int):
        super().__init__(classes, labels, channels, channels)
        self.paths = [Path(p) for p in paths]

    def decode(self, i: int, min_side: int | None = None) -> np.ndarray | None:
        if i in self._bad:
            return None
        path = self.paths[i]
        try:
            with Image.open(path) as img:  # reads the header only
                if min_side and img.format == "JPEG":
                    # DCT scaling: decode at 1/2, 1/4 or 1/8 size, never below min_side.
                    img.draft("RGB" if self.channels == 3 else "L", (min_side, min_side))
                if img.width * img.height > MAX_PIXELS:
                    raise DataError(
                        f"{img.width}x{img.height} pixels, more than the {MAX_PIXELS:,} "
                        "alexc decodes (Pillow's decompression-bomb limit)"
                    )
                img.load()
                return image_to_array(img, self.channels)
        except Exception as e:  # noqa: BLE001 - decoders raise many types; any means "skip it"
            self._skip(i, str(path), f"{type(e).__name__}: {e}")
            return None

    def check_classes(self, where: Path) -> None:
        """Refuse a class none of whose images decodes (trying each in turn until one does);
        the ones that fail are recorded in `skipped` as usual."""
        for label, name in enumerate(self.classes):
            members = np.flatnonzero(self.labels == label)
            if len(members) and all(self.decode(int(i)) is None for i in members):
                example, reason = next(
                    s for s in self.skipped if s[0] == str(self.paths[members[0]])
                )
                raise DataError(
                    f"{where / name}: none of its {len(members)} image(s) can be read, "
                    f"e.g. {example}: {reason}"
                )


def open_source(
    spec: str | Path, *, split: str, channels: int, val_fraction: float = 0.1, seed: int = 0
) -> Source:
    """Open a data set: "fashion-mnist", a directory of IDX files, or an ImageFolder tree.

    Validation is always held out of the training images, never the test images, so the
    checkpoint chosen on it says nothing about the test set. `seed` keys that split: keep it
    fixed (training does) and every run, and `alexc eval --split val`, sees the same images.

    IDX: train and val = the train-* files, `IDX_VAL_IMAGES` of them (at most `val_fraction`)
    drawn for val by a seeded shuffle; test = the t10k-* files. ImageFolder: a tree with
    `train/` and `val/` (or `test/`) subfolders uses them, with val split from `train/` when
    it has no `val/`; a flat tree of class folders is split per class, `val_fraction` to val,
    and has no test split.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}' (known: {', '.join(SPLITS)})")
    if channels not in (1, 3):
        raise DataError(f"graphs take 1 or 3 input channels, not {channels}")
    if str(spec) == "fashion-mnist":
        if not FASHION_MNIST_DIR.is_dir():
            raise DataError(
                f"Fashion-MNIST not found at {FASHION_MNIST_DIR}: install Debian's "
                "dataset-fashion-mnist package, or pass a directory of images or IDX files"
            )
        spec = FASHION_MNIST_DIR
    root = Path(spec)
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise DataError(
            f"{root} {what}: pass 'fashion-mnist', a directory of IDX files, "
            "or an image folder laid out as <root>/<class>/<image>"
        )
    idx_files = {}
    for p in root.iterdir():
        m = _IDX_NAME.match(p.name)
        if m and p.is_file():
            idx_files[(m[1], m[2])] = p
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must lie in [0, 1), not {val_fraction}")
    if idx_files:
        source = _idx_source(root, idx_files, split, channels, val_fraction, seed)
    else:
        source = _folder_source(root, split, channels, val_fraction, seed)
    source.origin = str(root)
    return source


def _idx_source(
    root: Path, files: dict, split: str, channels: int, val_fraction: float, seed: int
) -> ArraySource:
    prefix = "t10k" if split == "test" else "train"
    for kind in ("images", "labels"):
        if (prefix, kind) not in files:
            raise DataError(
                f"{root}: no {prefix}-{kind}-idx{1 if kind == 'labels' else 3}-ubyte[.gz] "
                f"for the {split} split"
            )
    images_path, labels_path = files[(prefix, "images")], files[(prefix, "labels")]
    images, labels = read_idx(images_path), read_idx(labels_path)
    channels_ok = images.ndim == 3 or images.ndim == 4 and images.shape[3] in (1, 3)
    if images.dtype != np.uint8 or not channels_ok:
        raise DataError(
            f"{images_path}: expected uint8 images (N, H, W) or (N, H, W, 1|3), "
            f"got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(images):
        raise DataError(
            f"{labels_path}: expected {len(images)} integer labels, "
            f"got {labels.dtype} {labels.shape}"
        )
    if labels.min(initial=0) < 0:
        raise DataError(f"{labels_path}: negative labels")
    count = max(10, int(labels.max(initial=0)) + 1)
    # IDX files carry no class names; a folder named like Fashion-MNIST gets its names.
    fashion = "fashion" in root.resolve().name.lower() and count == 10
    classes = FASHION_MNIST_CLASSES if fashion else [str(k) for k in range(count)]
    if split != "test":
        n_val = min(IDX_VAL_IMAGES, round(len(labels) * val_fraction))
        if val_fraction > 0 and len(labels) > 1:
            n_val = max(n_val, 1)
        order = np.random.default_rng([seed, 0x7A1]).permutation(len(labels))
        keep = np.sort(order[:n_val] if split == "val" else order[n_val:])
        images, labels = images[keep], labels[keep]
    return ArraySource(images, labels, classes, channels=channels)


def _folder_source(root: Path, split: str, channels: int, val_fraction: float, seed: int):
    sub = None
    tree = (root / "train").is_dir() and ((root / "val").is_dir() or (root / "test").is_dir())
    if tree and (split == "test" or (root / "val").is_dir()):
        sub = split if split == "test" or (root / split).is_dir() else "train"
        if split == "test" and not (root / "test").is_dir():
            raise DataError(
                f"{root}: no test/ folder, so no test split (val/ chose the checkpoint); "
                f"add {root}/test/<class>/<image> or evaluate with --split val"
            )
        classes = _class_names(root / "train")
        found, files = _scan(root / sub)
        extra = sorted(set(found) - set(classes))
        if extra:
            raise DataError(f"{root / sub}: class folders not in {root / 'train'}: {extra}")
        paths = [p for class_files in files for p in class_files]
        labels = [
            classes.index(c)
            for c, class_files in zip(found, files, strict=True)
            for _ in class_files
        ]
    else:
        if split == "test":
            raise DataError(
                f"{root}: a flat tree of class folders has no test split (its val split is "
                f"held out of training); evaluate with --split val, or lay it out as "
                f"{root}/train, {root}/val and {root}/test"
            )
        sub = "train" if tree else None
        classes, files = _scan(root / sub if sub else root)
        paths, labels = [], []
        for label, class_files in enumerate(files):
            # One generator per class: a class's split does not depend on the other classes.
            order = np.random.default_rng([seed, label]).permutation(len(class_files))
            # Val never takes a class's last image, and takes at least one when it can.
            n_val = min(round(len(class_files) * val_fraction), len(class_files) - 1)
            if val_fraction > 0 and len(class_files) > 1:
                n_val = max(n_val, 1)
            chosen = order[:n_val] if split == "val" else order[n_val:]
            paths += [class_files[k] for k in sorted(chosen)]
            labels += [label] * len(chosen)
        if not paths:
            raise DataError(f"{root}: the {split} split is empty (val_fraction={val_fraction})")
    source = FolderSource(paths, labels, classes, channels=channels)
    source.check_classes(root / sub if sub else root)
    return source


def _class_names(root: Path) -> list[str]:
    """Sorted names of the class folders under root (hidden folders ignored)."""
    if not root.is_dir():
        raise DataError(f"{root} is not a directory")
    names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not names:
        raise DataError(f"{root}: no class folders; lay images out as {root}/<class>/<image>")
    return names


def _scan(root: Path) -> tuple[list[str], list[list[Path]]]:
    """Class names and each class's image files (sorted, recursive); none may be empty."""
    names = _class_names(root)
    files = []
    for name in names:
        found = sorted(
            p
            for p in (root / name).rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
        )
        if not found:
            raise DataError(
                f"{root / name}: class folder has no images "
                f"({', '.join(sorted(IMAGE_SUFFIXES))}); add some or remove the folder"
            )
        files.append(found)
    return names, files
