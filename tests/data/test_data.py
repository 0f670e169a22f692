"""The data pipeline: sources, image modes and formats, IDX, augmentation statistics, loader."""

from __future__ import annotations

import gzip
import itertools
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexc.data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    ArraySource,
    Augment,
    FolderSource,
    Loader,
    Source,
    open_source,
    read_idx,
)
from alexc.errors import DataError, SectionError

MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)


def luma(rgb):
    r, g, b = rgb
    return (299 * r + 587 * g + 114 * b + 500) // 1000


def normalised(pixel, channels):
    """What the loader should output for a solid pixel value tuple, by hand."""
    mean, std = (MEAN, STD) if channels == 3 else (MEAN[:1], STD[:1])
    return np.array([(p / 255 - m) / s for p, m, s in zip(pixel, mean, std, strict=True)])


def save(path: Path, mode: str, colour, fmt: str, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":
        img = Image.new("P", (8, 8), 0)
        img.putpalette(list(colour) * 256)
    elif mode == "I;16":
        img = Image.frombytes("I;16", (8, 8), np.full((8, 8), colour, "<u2").tobytes())
    else:
        img = Image.new(mode, (8, 8), colour)
    img.save(path, fmt, **options)
    return path


# (mode, colour as given to Pillow, format, suffix, expected RGB after conversion, lossy)
CASES = [
    ("RGB", (200, 100, 50), "PNG", "png", (200, 100, 50), False),
    ("RGB", (200, 100, 50), "JPEG", "jpg", (200, 100, 50), True),
    ("RGB", (200, 100, 50), "BMP", "bmp", (200, 100, 50), False),
    ("RGB", (200, 100, 50), "WEBP", "webp", (200, 100, 50), False),
    ("RGB", (200, 100, 50), "TIFF", "tiff", (200, 100, 50), False),
    ("RGB", (200, 100, 50), "PPM", "ppm", (200, 100, 50), False),
    ("L", 77, "PNG", "png", (77, 77, 77), False),
    ("L", 77, "JPEG", "jpeg", (77, 77, 77), True),
    ("L", 77, "GIF", "gif", (77, 77, 77), False),
    ("P", (10, 20, 30), "PNG", "png", (10, 20, 30), False),
    ("P", (10, 20, 30), "GIF", "gif", (10, 20, 30), False),
    ("P", (10, 20, 30), "BMP", "bmp", (10, 20, 30), False),
    # alpha composited on black: round(c * a / 255)
    ("RGBA", (200, 100, 50, 128), "PNG", "png", (100, 50, 25), False),
    ("RGBA", (200, 100, 50, 128), "TIFF", "tif", (100, 50, 25), False),
    ("RGBA", (200, 100, 50, 0), "WEBP", "webp", (0, 0, 0), False),
    ("LA", (80, 255), "PNG", "png", (80, 80, 80), False),
    ("LA", (80, 51), "TIFF", "tiff", (16, 16, 16), False),
    ("CMYK", (255, 0, 0, 0), "JPEG", "jpg", (0, 255, 255), True),
    ("CMYK", (255, 0, 0, 0), "TIFF", "tiff", (0, 255, 255), False),
    ("I;16", 257 * 100, "PNG", "png", (100, 100, 100), False),
    ("I;16", 257 * 100, "TIFF", "tiff", (100, 100, 100), False),
    ("1", 1, "PNG", "png", (255, 255, 255), False),
    ("1", 0, "BMP", "bmp", (0, 0, 0), False),
    ("1", 1, "TIFF", "tiff", (255, 255, 255), False),
]


@pytest.fixture
def zoo(tmp_path):
    """An image folder: every mode and format in class 'good', the bad files in class 'mixed'."""
    root = tmp_path / "zoo"
    expected = {}
    for k, (mode, colour, fmt, suffix, rgb, lossy) in enumerate(CASES):
        options = {"lossless": True} if fmt == "WEBP" else {}
        path = save(
            root / "good" / f"{k:02d}-{mode.replace(';', '')}.{suffix}",
            mode,
            colour,
            fmt,
            **options,
        )
        expected[path] = (rgb, lossy)
    expected[save(root / "mixed" / "ok.png", "RGB", (1, 2, 3), "PNG")] = ((1, 2, 3), False)
    (root / "mixed" / "corrupt.jpg").write_bytes(np.random.default_rng(0).bytes(3000))
    (root / "mixed" / "empty.jpg").write_bytes(b"")
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "mixed" / "full.png")
    data = (root / "mixed" / "full.png").read_bytes()
    (root / "mixed" / "full.png").unlink()
    (root / "mixed" / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "mixed" / "notes.txt").write_text("not an image, not counted")
    bad = {str(root / "mixed" / n) for n in ("corrupt.jpg", "empty.jpg", "truncated.png")}
    return root, expected, bad


@pytest.mark.parametrize("channels", [3, 1])
def test_modes_and_formats_convert_and_bad_files_are_skipped(zoo, channels):
    root, expected, bad = zoo
    source = open_source(root, split="train", channels=channels, val_fraction=0.0)
    assert isinstance(source, FolderSource) and source.classes == ["good", "mixed"]
    assert len(source) == len(expected) + len(bad)  # notes.txt is not an image
    augment = Augment(channels=channels, crop=(8, 8), mean=MEAN[:channels], std=STD[:channels])
    loader = Loader(source, augment, batch_size=7, train=False, seed=0, workers=2)
    xs, ys = zip(*loader, strict=True)
    x, y = np.concatenate(xs), np.concatenate(ys)

    assert {path for path, _ in source.skipped} == bad
    assert all(reason for _, reason in source.skipped)
    good_paths = [p for p in source.paths if str(p) not in bad]
    assert len(x) == len(good_paths) == len(expected)
    assert y.tolist() == [0] * len(CASES) + [1]
    for row, path in zip(x, good_paths, strict=True):
        rgb, lossy = expected[path]
        pixel = rgb if channels == 3 else (luma(rgb),)
        want = normalised(pixel, channels)[:, None, None] * np.ones((1, 8, 8))
        # JPEG is lossy even on a flat colour; 3 levels of 255 bound its error here.
        tol = 3 / 255 / min(STD) if lossy else 1e-5
        np.testing.assert_allclose(row, want, atol=tol, err_msg=str(path))
    # A second epoch does not decode the bad files again nor list them twice.
    list(Loader(source, augment, batch_size=7, train=False, seed=0, workers=1))
    assert len(source.skipped) == len(bad)


def test_missing_and_empty_folders_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_source(tmp_path / "nowhere", split="train", channels=3)
    (tmp_path / "flat").mkdir()
    save(tmp_path / "flat" / "a.png", "RGB", (1, 2, 3), "PNG")
    with pytest.raises(DataError, match=r"flat: no class folders"):
        open_source(tmp_path / "flat", split="train", channels=3)
    save(tmp_path / "tree" / "cat" / "a.png", "RGB", (1, 2, 3), "PNG")
    (tmp_path / "tree" / "dog").mkdir()
    (tmp_path / "tree" / "dog" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"dog: class folder has no images"):
        open_source(tmp_path / "tree", split="train", channels=3)
    with pytest.raises(DataError, match="unknown split"):
        open_source(tmp_path / "tree", split="dev", channels=3)


def make_folder(root: Path, counts: dict[str, int]) -> None:
    for name, count in counts.items():
        for k in range(count):
            save(root / name / f"{k:03d}.png", "L", k, "PNG")


def test_train_val_subfolders_are_used(tmp_path):
    make_folder(tmp_path / "train", {"a": 3, "b": 2})
    make_folder(tmp_path / "val", {"b": 1})
    train = open_source(tmp_path, split="train", channels=1)
    val = open_source(tmp_path, split="val", channels=1)
    assert train.classes == val.classes == ["a", "b"]
    assert [p.parent.parent.name for p in train.paths] == ["train"] * 5
    assert train.labels.tolist() == [0, 0, 0, 1, 1]
    assert val.labels.tolist() == [1]  # labels index the train split's classes
    with pytest.raises(DataError, match="no test/ folder"):  # val chose the checkpoint
        open_source(tmp_path, split="test", channels=1)
    make_folder(tmp_path / "test", {"a": 2})
    assert open_source(tmp_path, split="test", channels=1).labels.tolist() == [0, 0]
    make_folder(tmp_path / "val", {"zebra": 1})
    with pytest.raises(DataError, match="zebra"):
        open_source(tmp_path, split="val", channels=1)


def test_seeded_split_is_disjoint_deterministic_and_covers_everything(tmp_path):
    make_folder(tmp_path, {"a": 10, "b": 7, "c": 1})
    everything = sorted(str(p) for p in tmp_path.rglob("*.png"))

    def split(name, seed):
        source = open_source(tmp_path, split=name, channels=1, val_fraction=0.3, seed=seed)
        return [str(p) for p in source.paths], source.labels.tolist()

    train, train_labels = split("train", 5)
    val, val_labels = split("val", 5)
    assert not set(train) & set(val)
    assert sorted(train + val) == everything
    assert sorted(val_labels) == [
        0,
        0,
        0,
        1,
        1,
    ]  # round(10 * .3), round(7 * .3); 1-image class: train
    assert (train, val) == (split("train", 5)[0], split("val", 5)[0])
    with pytest.raises(DataError, match="no test split"):
        split("test", 5)
    assert split("val", 6)[0] != val
    most = open_source(tmp_path, split="train", channels=1, val_fraction=0.95)
    assert np.bincount(most.labels).tolist() == [1, 1, 1]  # every class keeps a training image
    few = open_source(tmp_path, split="val", channels=1, val_fraction=0.05)
    assert few.labels.tolist() == [0, 1]  # at least one of each class that can spare one
    for paths, labels in ((train, train_labels), (val, val_labels)):
        assert [Path(p).parent.name for p in paths] == [["a", "b", "c"][k] for k in labels]


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    """An IDX file written by hand from the format's definition."""
    codes = {np.dtype("u1"): 0x08, np.dtype("i2"): 0x0B, np.dtype("f4"): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip_and_truncation(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 4, 3), dtype=np.uint8)
    shorts = rng.integers(-30000, 30000, (2, 3, 4)).astype(np.int16)
    floats = rng.standard_normal(6).astype(np.float32)
    for name, array in (("u8", images), ("i16", shorts), ("f32", floats)):
        path = write_idx(tmp_path / f"{name}.idx", array, compress)
        back = read_idx(path)
        assert back.dtype == array.dtype and back.dtype.isnative
        np.testing.assert_array_equal(back, array)

    whole = write_idx(tmp_path / "whole.idx", images, compress).read_bytes()
    cut = tmp_path / "cut.idx"
    for length in (len(whole) - 1, len(whole) // 2, 10, 3, 0):
        cut.write_bytes(whole[:length])
        with pytest.raises(DataError, match="cut.idx"):
            read_idx(cut)
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x00\x00\x42\x01" + bytes(8))
    with pytest.raises(DataError, match="bad.idx: not an IDX file"):
        read_idx(bad)
    # A forged header promising far more than the file holds fails before allocating it.
    forged = tmp_path / "forged.idx"
    forged.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", 10**6, 10**4, 10**4) + bytes(16))
    with pytest.raises(DataError, match="forged.idx: truncated or malformed"):
        read_idx(forged)


def test_idx_directory_is_a_source(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    test = rng.integers(0, 256, (3, 5, 4), dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", train, True)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(6, dtype=np.uint8), True)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", test, False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([9, 0, 1], dtype=np.uint8), False)
    source = open_source(tmp_path, split="train", channels=3, val_fraction=0)
    assert isinstance(source, ArraySource) and len(source) == 6
    assert source.classes == [str(k) for k in range(10)]
    image = source.image(2)
    assert image.shape == (5, 4, 3) and (image == train[2][..., None]).all()
    test_split = open_source(tmp_path, split="test", channels=1)
    assert test_split.labels.tolist() == [9, 0, 1]
    assert (test_split.image(1)[..., 0] == test[1]).all()
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-labels"):
        open_source(tmp_path, split="test", channels=1)


def test_tree_without_val_folder_splits_train_and_keeps_test(tmp_path):
    make_folder(tmp_path / "train", {"a": 10, "b": 10})
    make_folder(tmp_path / "test", {"a": 1, "b": 2})
    train = open_source(tmp_path, split="train", channels=1)
    val = open_source(tmp_path, split="val", channels=1)
    test = open_source(tmp_path, split="test", channels=1)
    assert train.classes == val.classes == test.classes == ["a", "b"]
    assert {p.parent.parent.name for p in train.paths + val.paths} == {"train"}
    assert not set(train.paths) & set(val.paths) and len(train) + len(val) == 20
    assert val.labels.tolist() == [0, 1] and test.labels.tolist() == [0, 1, 1]


def test_idx_val_is_held_out_of_the_train_files_never_t10k(tmp_path):
    n = 40
    train = np.arange(n, dtype=np.uint8)[:, None, None] * np.ones((1, 3, 2), np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte", train, False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(n, dtype=np.uint8) % 10, False)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.full((5, 3, 2), 255, np.uint8), False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(5, 255 % 10, np.uint8), False)

    def ids(split, **kw):  # each train image is filled with its index in the file
        source = open_source(tmp_path, split=split, channels=1, **kw)
        assert (source.labels == source.images[:, 0, 0, 0] % 10).all()  # labels travel along
        return source.images[:, 0, 0, 0].tolist()

    train_ids, val_ids = ids("train"), ids("val")
    assert len(val_ids) == 4 and sorted(train_ids + val_ids) == list(range(n))  # 10% held out
    assert val_ids == ids("val") and val_ids != ids("val", seed=1)  # seeded
    assert ids("test") == [255] * 5
    assert len(ids("val", val_fraction=0.5)) == 20


def test_real_fashion_mnist():
    if not FASHION_MNIST_DIR.is_dir():
        pytest.skip(f"{FASHION_MNIST_DIR} absent (Debian package dataset-fashion-mnist)")
    train = open_source("fashion-mnist", split="train", channels=1, val_fraction=0)
    test = open_source("fashion-mnist", split="test", channels=1)
    assert train.classes == list(FASHION_MNIST_CLASSES)
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    train = open_source("fashion-mnist", split="train", channels=1)
    val = open_source("fashion-mnist", split="val", channels=1)
    assert len(train) == 55000 and len(val) == 5000
    assert min(np.bincount(val.labels)) > 400  # a shuffle, not a slice of a few classes
    # No validation image is a test image (Fashion-MNIST holds no exact duplicates across them).
    test_images = {bytes(row) for row in test.images.reshape(len(test), -1)}
    assert not any(bytes(row) in test_images for row in val.images.reshape(len(val), -1)[:500])


def arrays(n=1000, size=8, channels=1, seed=0) -> ArraySource:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    return ArraySource(images, np.arange(n) % 10, [str(k) for k in range(10)], channels=channels)


def epoch_batches(source, augment, **kw):
    kw = {"batch_size": 64, "train": True, "seed": 7, **kw}
    with Loader(source, augment, **kw) as loader:
        return list(loader)


def test_flip_happens_half_the_time():
    n = 4000
    ramp = np.tile(np.arange(0, 200, 50, dtype=np.uint8), (n, 4, 1))  # rises left to right
    source = ArraySource(ramp, np.zeros(n, dtype=np.int64), ["x"], channels=1)
    augment = Augment(channels=1, crop=(4, 4), flip=True)
    x = np.concatenate([b[0] for b in epoch_batches(source, augment, batch_size=500)])
    flipped = int((x[:, 0, 0, 0] > x[:, 0, 0, -1]).sum())
    # Binomial(4000, 1/2): sd 31.6; five sd either side.
    assert abs(flipped - n / 2) < 5 * 31.6
    ramp_row = np.arange(0, 200, 50) / 255
    rows = x[:, 0, 0, :]
    np.testing.assert_allclose(
        rows[rows[:, 0] > rows[:, -1]], np.tile(ramp_row[::-1], (flipped, 1)), atol=1e-6
    )
    np.testing.assert_allclose(
        rows[rows[:, 0] < rows[:, -1]], np.tile(ramp_row, (n - flipped, 1)), atol=1e-6
    )


def test_random_crop_offsets_cover_the_padded_range():
    n, size, pad = 2500, 8, 2
    values = (1 + 10 * np.arange(size)[:, None] + np.arange(size)).astype(np.uint8)
    source = ArraySource(np.tile(values, (n, 1, 1)), np.zeros(n, dtype=np.int64), ["x"], channels=1)
    augment = Augment(channels=1, crop=(size, size), random_crop=True, pad=pad)
    x = np.concatenate([b[0] for b in epoch_batches(source, augment, batch_size=500)])
    pixels = np.rint(x[:, 0] * 255).astype(int)
    counts = np.zeros((2 * pad + 1, 2 * pad + 1), dtype=int)
    for crop in pixels:
        r, c = np.argwhere(crop > 0)[0]
        y, x0 = divmod(crop[r, c] - 1, 10)  # where that pixel sits in the image
        oy, ox = y + pad - r, x0 + pad - c
        counts[oy, ox] += 1
        # The crop is exactly the padded image's window at (oy, ox).
        padded = np.pad(values.astype(int), pad)
        assert np.array_equal(crop, padded[oy : oy + size, ox : ox + size])
    expected = n / counts.size  # 100 per offset; sd 9.8
    assert counts.min() > expected - 5 * 9.8 and counts.max() < expected + 5 * 9.8


def test_mean_std_normalisation_standardises_each_channel():
    rng = np.random.default_rng(3)
    images = np.stack(
        [
            rng.integers(lo, hi, (400, 6, 6), dtype=np.uint8)
            for lo, hi in ((0, 256), (50, 100), (200, 230))
        ],
        axis=-1,
    )
    source = ArraySource(images, np.zeros(400, dtype=np.int64), ["x"], channels=3)
    scaled = images / 255.0
    mean, std = scaled.mean(axis=(0, 1, 2)), scaled.std(axis=(0, 1, 2))
    augment = Augment.from_config({"mean": mean.tolist(), "std": std.tolist()}, (3, 6, 6))
    x = np.concatenate([b[0] for b in epoch_batches(source, augment, train=False)])
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=(0, 2, 3)), 1, atol=1e-5)


def test_pca_jitter_follows_the_training_set_colour_covariance():
    rng = np.random.default_rng(4)
    vectors, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    values = np.array([0.01, 0.0025, 0.0004])  # covariance eigenvalues, 0..1 pixel units
    n, size = 2000, 4
    z = rng.standard_normal((n, size, size, 3)) * np.sqrt(values)
    pixels = np.clip(np.rint((0.5 + z @ vectors.T) * 255), 0, 255).astype(np.uint8)
    source = ArraySource(pixels, np.zeros(n, dtype=np.int64), ["x"], channels=3)

    got_values, got_vectors = source.rgb_eigen(seed=0)
    np.testing.assert_allclose(got_values, values, rtol=0.1)
    np.testing.assert_allclose(np.abs(np.sum(got_vectors * vectors, axis=0)), 1, atol=0.01)

    plain = Augment(channels=3, crop=(size, size))
    jitter = Augment(channels=3, crop=(size, size), pca_jitter=0.1)
    base = np.concatenate([b[0] for b in epoch_batches(source, plain, batch_size=500)])
    shifted = np.concatenate([b[0] for b in epoch_batches(source, jitter, batch_size=500)])
    delta = (shifted - base).astype(np.float64)  # 0..1 units: sum_i alpha_i lambda_i v_i
    per_image = delta[:, :, 0, 0]
    np.testing.assert_allclose(delta, per_image[:, :, None, None] * np.ones_like(delta), atol=1e-5)
    alpha = per_image @ got_vectors / got_values  # coordinates along each eigenvector
    np.testing.assert_allclose(alpha.std(axis=0), 0.1, rtol=0.1)
    np.testing.assert_allclose(alpha.mean(axis=0), 0, atol=0.01)
    assert abs(np.corrcoef(alpha.T)[np.triu_indices(3, 1)]).max() < 0.1


TRAIN_AUGMENT = Augment(
    channels=1, crop=(8, 8), random_crop=True, pad=2, flip=True, mean=(0.3,), std=(0.4,)
)


def test_same_seed_same_batches_any_worker_count():
    source = arrays()
    one = epoch_batches(source, TRAIN_AUGMENT, workers=1)
    three = epoch_batches(source, TRAIN_AUGMENT, workers=3, prefetch=2)
    inline = epoch_batches(source, TRAIN_AUGMENT, workers=0)
    assert (
        len(one)
        == 1000 // 64
        == len(Loader(source, TRAIN_AUGMENT, batch_size=64, train=True, seed=7))
    )
    for a, b, c in zip(one, three, inline, strict=True):
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[0], c[0])
        assert np.array_equal(a[1], b[1]) and np.array_equal(a[1], c[1])
    other_seed = epoch_batches(source, TRAIN_AUGMENT, seed=8)
    assert not np.array_equal(one[0][1], other_seed[0][1])


def test_a_sample_is_augmented_the_same_in_any_batch():
    n = 600
    images = np.random.default_rng(2).integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)
    source = ArraySource(images, np.arange(n), [str(k) for k in range(n)], channels=1)

    def by_sample(batch_size):
        batches = epoch_batches(source, TRAIN_AUGMENT, batch_size=batch_size, drop_last=False)
        x, y = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
        return x[np.argsort(y)]

    np.testing.assert_array_equal(by_sample(50), by_sample(64))


def test_resume_mid_epoch_and_epochs_differ():
    source = arrays()
    straight = epoch_batches(source, TRAIN_AUGMENT, epoch=1)
    resumed = epoch_batches(source, TRAIN_AUGMENT, epoch=1, start_batch=3)
    assert len(resumed) == len(straight) - 3
    for a, b in zip(straight[3:], resumed, strict=True):
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    epoch0 = epoch_batches(source, TRAIN_AUGMENT, epoch=0)
    order0, order1 = (
        np.concatenate([b[1] for b in epoch0]),
        np.concatenate([b[1] for b in straight]),
    )
    assert not np.array_equal(order0, order1)


def test_eval_keeps_the_last_batch_in_order():
    source = arrays(n=150)
    loader = Loader(source, TRAIN_AUGMENT, batch_size=64, train=False, seed=0)
    batches = list(loader)
    assert len(loader) == len(batches) == 3 and [len(b[1]) for b in batches] == [64, 64, 22]
    x = np.concatenate([b[0] for b in batches])
    expected = (source.images.transpose(0, 3, 1, 2) / 255 - 0.3) / 0.4  # centre crop, no pad
    np.testing.assert_allclose(x, expected, atol=1e-5)
    assert len(Loader(source, TRAIN_AUGMENT, batch_size=64, train=True, seed=0)) == 2


class SlowPath(Source):
    """The same arrays behind the generic Source interface, so the per-image path runs."""

    def __init__(self, inner: ArraySource, delay: float = 0.0, fail_at: int | None = None):
        super().__init__(inner.classes, inner.labels, inner.channels, inner.stored_channels)
        self.inner, self.delay, self.fail_at = inner, delay, fail_at
        self.decoded = itertools.count()  # next() is atomic under the GIL

    def decode(self, i, min_side=None):
        next(self.decoded)
        time.sleep(self.delay)
        if i == self.fail_at:
            raise RuntimeError("bug in a decoder")
        return self.inner.images[i]


@pytest.mark.parametrize("train", [True, False])
def test_vectorised_and_per_image_paths_agree(train):
    source = arrays(n=300, size=10, channels=3)
    augment = Augment(
        channels=3,
        crop=(8, 8),
        resize=10,
        random_crop=True,
        pad=1,
        flip=True,
        pca_jitter=0.1,
        ten_crop=True,
    )
    fast = epoch_batches(source, augment, train=train, batch_size=50)
    slow = epoch_batches(SlowPath(source), augment, train=train, batch_size=50)
    for a, b in zip(fast, slow, strict=True):
        assert a[0].shape == b[0].shape == ((50 if train else 500), 3, 8, 8)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_ten_crop_rows_are_corners_centre_and_mirrors():
    values = np.arange(36, dtype=np.uint8).reshape(1, 6, 6)
    source = ArraySource(values, [0], ["x"], channels=1)
    augment = Augment(channels=1, crop=(4, 4), resize=6, ten_crop=True)
    ((x, y),) = epoch_batches(source, augment, train=False)
    crops = np.rint(x[:, 0] * 255).astype(int)
    corners = [(0, 0), (0, 2), (2, 0), (2, 2), (1, 1)]
    want = [values[0, r : r + 4, c : c + 4] for r, c in corners]
    want += [w[:, ::-1] for w in want]
    assert y.tolist() == [0] and np.array_equal(crops, np.stack(want))


def test_grayscale_resized_for_a_big_three_channel_graph():
    source = arrays(n=8, size=28, channels=1)
    source = ArraySource(source.images, source.labels, source.classes, channels=3)
    augment = Augment.from_config({"resize": 256, "random_crop": True, "flip": True}, (3, 227, 227))
    ((x, y),) = epoch_batches(source, augment, batch_size=8)
    assert x.shape == (8, 3, 227, 227) and x.dtype == np.float32 and y.dtype == np.int64
    assert np.array_equal(x[:, 0], x[:, 2]) and 0 <= x.min() and x.max() <= 1
    eval_x = Loader(source, augment, batch_size=8, train=False, seed=0).batch(np.arange(8))[0]
    full = np.asarray(Image.fromarray(source.images[3, :, :, 0]).resize((256, 256), Image.BILINEAR))
    np.testing.assert_allclose(eval_x[3, 1], full[14:241, 14:241] / 255, atol=1e-6)


def test_config_errors_name_the_problem():
    with pytest.raises(SectionError, match=r"unknown key 'rotate' \(known: resize, crop"):
        Augment.from_config({"rotate": 10}, (3, 32, 32))
    with pytest.raises(SectionError, match="crop 24 must match the graph's input size 32x32"):
        Augment.from_config({"crop": 24}, (3, 32, 32))
    with pytest.raises(SectionError, match="pca_jitter needs 3 input channels"):
        Augment.from_config({"pca_jitter": 0.1}, (1, 28, 28))
    with pytest.raises(SectionError, match="mean needs 3 values"):
        Augment.from_config({"mean": [0.1, 0.2]}, (3, 8, 8))
    with pytest.raises(SectionError, match="resize .* at least the crop"):
        Augment.from_config({"resize": 100}, (3, 227, 227))
    with pytest.raises(SectionError, match="flip must be true or false"):
        Augment.from_config({"flip": "yes"}, (3, 8, 8))
    augment = Augment.from_config({"crop": [8, 8], "mean": 0.5}, (3, 8, 8))
    assert augment.mean == (0.5,) * 3 and augment.std == (1.0,) * 3 and not augment.flip
    with pytest.raises(DataError, match="3 channels, the graph's input 1"):
        Loader(
            arrays(channels=3), Augment(channels=1, crop=(8, 8)), batch_size=4, train=True, seed=0
        )


def loader_threads():
    return [t for t in threading.enumerate() if t.name.startswith("alexc-loader")]


def test_large_jpeg_is_decoded_small_then_resized(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (400, 300), (10, 200, 30)).save(tmp_path / "a" / "big.jpg", quality=95)
    save(tmp_path / "b" / "small.png", "L", 9, "PNG")
    source = open_source(tmp_path, split="train", channels=3, val_fraction=0.0)
    assert source.decode(0).shape == (300, 400, 3)
    assert source.decode(0, min_side=40).shape == (75, 100, 3)  # DCT-scaled by 1/4, not below 40
    augment = Augment.from_config({"resize": 40}, (3, 32, 32))
    x, y = Loader(source, augment, batch_size=2, train=False, seed=0).batch(np.arange(2))
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [0, 1]
    np.testing.assert_allclose(
        x[0], np.array([10, 200, 30])[:, None, None] / 255 * np.ones((1, 32, 32)), atol=3 / 255
    )
    np.testing.assert_allclose(x[1], 9 / 255, atol=1e-6)


def test_breaking_out_early_stops_the_threads_promptly():
    source = SlowPath(arrays(n=400), delay=0.002)
    loader = Loader(source, TRAIN_AUGMENT, batch_size=16, train=True, seed=0, workers=3, prefetch=2)
    for k, _ in enumerate(loader):
        if k == 2:
            break
    assert not loader_threads()
    # Stopped, not drained: at most the 3 batches taken, the 2 prefetched and one per worker
    # were decoded, far from the 400 images of the epoch.
    assert next(source.decoded) <= (3 + 2 + 3) * 16
    for failure in (KeyError, KeyboardInterrupt):
        with pytest.raises(failure):
            with loader:
                for _ in loader:
                    raise failure("the consumer failed")
        assert not loader_threads()
    iterator = iter(loader)
    next(iterator)
    loader.close()  # closed from outside while the iteration is suspended
    assert not loader_threads() and list(iterator) == []


def test_prefetch_stays_bounded_ahead_of_the_consumer():
    source = SlowPath(arrays(n=400))
    decoded = []
    source.decode = lambda i, min_side=None: decoded.append(i) or source.inner.images[i]
    loader = Loader(source, TRAIN_AUGMENT, batch_size=10, train=True, seed=0, workers=3, prefetch=2)
    iterator = iter(loader)
    next(iterator)
    time.sleep(0.3)  # ample time to run ahead, were it allowed to
    assert len(decoded) == (1 + 2) * 10  # the batch taken, and `prefetch` more
    iterator.close()
    assert not loader_threads()


def test_a_worker_error_reaches_the_consumer():
    source = SlowPath(arrays(n=100), fail_at=None)
    order = Loader(source, TRAIN_AUGMENT, batch_size=10, train=True, seed=0).order()
    source.fail_at = int(order[35])  # in batch 3
    loader = Loader(source, TRAIN_AUGMENT, batch_size=10, train=True, seed=0, workers=2)
    seen = 0
    with pytest.raises(RuntimeError, match="bug in a decoder"):
        for _ in loader:
            seen += 1
    assert seen == 3 and not loader_threads()


# --- bad samples never stop or skew a run ------------------------------------------------------


def solid_folder(root: Path, per_class: int, bad_every: int) -> Path:
    """Classes whose images are solid grey level 40 * (class + 1); every `bad_every`-th file
    is corrupt (random bytes, or a PNG cut in half)."""
    rng = np.random.default_rng(0)
    for k in range(3):
        for i in range(per_class):
            path = root / f"c{k}" / f"{i:03d}.png"
            save(path, "L", 40 * (k + 1), "PNG")
            if i % bad_every == bad_every - 1:
                data = path.read_bytes()
                path.write_bytes(rng.bytes(200) if i % 2 else data[: len(data) // 2])
    return root


def test_bad_images_mid_epoch_are_skipped_counted_and_never_shift_labels(tmp_path):
    root = solid_folder(tmp_path / "solid", per_class=20, bad_every=4)
    source = open_source(root, split="train", channels=1, val_fraction=0.0)
    augment = Augment(channels=1, crop=(8, 8))
    bad = {str(p) for p in source.paths if int(p.stem) % 4 == 3}
    for epoch in range(2):  # the second epoch does not try the bad files again
        loader = Loader(source, augment, batch_size=8, train=True, seed=0, epoch=epoch)
        seen = 0
        for x, y in loader:
            # Each row's grey level says its class: a skipped image never shifts a label.
            np.testing.assert_allclose(x[:, 0, 0, 0], 40 * (y + 1) / 255, atol=1e-6)
            seen += len(y)
        taken = [str(source.paths[i]) for i in loader.order()[: 7 * 8]]  # 7 full batches
        assert seen == sum(p not in bad for p in taken) < 7 * 8
        assert {p for p, _ in source.skipped} <= bad
    assert len(source.skipped) == len({p for p, _ in source.skipped})  # each counted once


def test_a_class_with_no_readable_image_is_one_line(tmp_path):
    root = solid_folder(tmp_path / "solid", per_class=4, bad_every=4)
    for path in (root / "c1").iterdir():
        path.write_bytes(b"not an image")
    with pytest.raises(
        DataError, match=r"c1: none of its 4 image\(s\) can be read, e\.g\. .*000\.png"
    ):
        open_source(root, split="train", channels=1, val_fraction=0.0)


def test_fewer_images_than_one_batch_is_one_line(tmp_path, run_cli):
    root = solid_folder(tmp_path / "solid", per_class=2, bad_every=99)
    graph = tmp_path / "g.yaml"
    graph.write_text(
        "input: {name: image, shape: [1, 8, 8]}\n"
        "nodes:\n  - {name: flat, op: flatten}\n  - {name: fc, op: linear, units: 3}\n"
    )
    code, _, err = run_cli(
        "train", graph, "--data", root, "--batch-size", 16, "--out", tmp_path / "r"
    )
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert f"{root}: 3 image(s), fewer than one batch of 16" in lines[0], lines[0]


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A valid 8x8 PNG whose header (IHDR, checksum fixed) claims width x height."""
    import zlib

    save(path, "RGB", (1, 2, 3), "PNG")
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def test_images_past_the_pixel_limit_are_skipped_before_decoding(tmp_path):
    from alexc.data.sources import MAX_PIXELS

    # Just past alexc's limit (Pillow only warns here), and far past Pillow's own refusal.
    paths = [
        _png_claiming(tmp_path / "c" / "big.png", 10_000, MAX_PIXELS // 10_000 + 1),
        _png_claiming(tmp_path / "c" / "bomb.png", 100_000, 100_000),
    ]
    source = FolderSource(paths, [0, 0], ["c"], channels=3)
    with pytest.warns(Image.DecompressionBombWarning):
        assert source.decode(0) is None
    assert source.decode(1) is None
    reasons = dict(source.skipped)
    assert "more than the 89,478,485 alexc decodes" in reasons[str(paths[0])]
    assert "DecompressionBombError" in reasons[str(paths[1])]


def test_a_large_jpeg_is_decoded_at_reduced_size(tmp_path):
    path = tmp_path / "c" / "large.jpg"
    path.parent.mkdir()
    Image.new("RGB", (4000, 3000), (90, 30, 60)).save(path, quality=90)
    source = FolderSource([path], [0], ["c"], channels=3)
    small = source.decode(0, min_side=224)
    assert 224 <= min(small.shape[:2]) < 3000 / 4 and small.shape[2] == 3
    x, _ = Loader(
        source, Augment(channels=3, crop=(224, 224)), batch_size=1, train=False, seed=0
    ).batch([0])
    assert x.shape == (1, 3, 224, 224)
