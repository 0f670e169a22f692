"""Preprocessing and augmentation per the AlexNet paper, configured by a graph's `data:` section.

Geometry (resize, pad, crop, flip) works on uint8 images; colour (PCA jitter) and normalisation
work on float32 NCHW batches. Random draws come from `sample_uniforms`, a counter-based
generator keyed by (seed, epoch, sample index): the augmentation of a sample is a pure function
of those three numbers, whatever thread builds it and in whichever batch it lands.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from alexc.errors import DataError, SectionError, is_int, is_number

# Columns of sample_uniforms: crop row, crop column, flip, then four for three normals (PCA).
CROP_Y, CROP_X, FLIP, NORMALS, DRAWS = 0, 1, 2, slice(3, 7), 7

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)

# `resize` beyond this many times the crop decodes absurdly large images for nothing.
MAX_RESIZE = 16


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a uint64 bijection; each output bit depends on every input bit."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def sample_uniforms(seed: int, epoch: int, indices: np.ndarray, count: int = DRAWS) -> np.ndarray:
    """Uniforms in [0, 1), shape (len(indices), count), row k keyed by (seed, epoch, indices[k]).

    Each row is the SplitMix64 stream seeded by a hash of the three keys; vectorised, so a
    batch costs a few array operations rather than one Generator per sample.
    """
    key = _mix(np.array([seed], dtype=np.uint64) + _GOLDEN)
    key = _mix(key ^ (np.array([epoch], dtype=np.uint64) + _GOLDEN))
    state = _mix(key ^ (np.asarray(indices, dtype=np.uint64) + _GOLDEN))
    steps = np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN
    bits = _mix(state[:, None] + steps)
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _normals(u: np.ndarray) -> np.ndarray:
    """Three standard normals per row from four uniforms (Box-Muller, both outputs of a pair)."""
    radius = np.sqrt(-2.0 * np.log1p(-u[:, [0, 2]]))  # log1p(-u): u = 0 is fine, u < 1 always
    angle = 2.0 * np.pi * u[:, [1, 3]]
    return np.concatenate([radius * np.cos(angle), radius[:, :1] * np.sin(angle[:, :1])], axis=1)


def _scaled(u: np.ndarray, span: int) -> np.ndarray:
    """Uniform integers in 0..span from uniforms in [0, 1)."""
    return np.minimum((u * (span + 1)).astype(np.int64), span)


def resize_short_side(img: np.ndarray, side: int) -> np.ndarray:
    """Resize uint8 HWC so its short side is `side` (Pillow bilinear; antialiased shrinking)."""
    h, w = img.shape[:2]
    if h <= w:
        size = (max(side, round(w * side / h)), side)
    else:
        size = (side, max(side, round(h * side / w)))
    pil = Image.fromarray(img[..., 0] if img.shape[2] == 1 else img)
    return np.asarray(pil.resize(size, Image.Resampling.BILINEAR)).reshape(
        size[1], size[0], img.shape[2]
    )


def gather_crops(images, positions, oy, ox, flip, crop) -> np.ndarray:
    """Crops (and mirrors) of uint8 NHWC images in one vectorised gather, returned as NCHW.

    Row k is images[positions[k]] cropped at (oy[k], ox[k]) to `crop`, flipped if flip[k].
    """
    windows = sliding_window_view(images, crop, axis=(1, 2))  # (N, H', W', C, ch, cw), a view
    out = windows[positions, oy, ox]
    if flip.any():
        out[flip] = out[flip][..., ::-1]
    return out


@dataclass(frozen=True)
class Augment:
    """What to do to each image; see KEYS. Build it with `from_config`.

    Train: resize, zero-pad, random or centre crop, random flip, PCA colour jitter, normalise.
    Eval: resize, centre crop (or ten crops: four corners and centre, then their mirrors),
    normalise. Without `resize`, an image already of the crop size is left alone and any
    other image has its short side resized to the crop's larger side.
    """

    channels: int
    crop: tuple[int, int]
    resize: int | None = None
    random_crop: bool = False
    pad: int = 0
    flip: bool = False
    pca_jitter: float = 0.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    ten_crop: bool = False

    KEYS: ClassVar[tuple[str, ...]] = (
        "resize",
        "crop",
        "random_crop",
        "pad",
        "flip",
        "pca_jitter",
        "mean",
        "std",
        "ten_crop",
    )

    def __post_init__(self):
        set_ = object.__setattr__  # a frozen dataclass fills its defaults this way
        set_(self, "crop", tuple(int(v) for v in self.crop))
        set_(self, "mean", tuple(self.mean) if self.mean is not None else (0.0,) * self.channels)
        set_(self, "std", tuple(self.std) if self.std is not None else (1.0,) * self.channels)
        if self.channels not in (1, 3):
            raise DataError(f"data: graphs take 1 or 3 input channels, not {self.channels}")

        def bad(key, what):
            return SectionError("data", key, what)

        if self.resize is not None and self.resize < max(self.crop):
            raise bad("resize", f"resize ({self.resize}) must be at least the crop {self.crop}")
        if self.resize is not None and self.resize > MAX_RESIZE * max(self.crop):
            raise bad(
                "resize",
                f"resize ({self.resize}) is absurd for a {max(self.crop)} px crop; "
                f"at most {MAX_RESIZE}x the crop",
            )
        if self.pad and not self.random_crop:
            raise bad("pad", "pad only applies with random_crop: true")
        if self.pad > max(self.crop):
            raise bad("pad", f"pad ({self.pad}) must be at most the crop's side {max(self.crop)}")
        if self.pca_jitter and self.channels != 3:
            raise bad(
                "pca_jitter", f"pca_jitter needs 3 input channels, the graph has {self.channels}"
            )
        for name in ("mean", "std"):
            if len(getattr(self, name)) != self.channels:
                raise bad(
                    name,
                    f"{name} needs {self.channels} values (one per channel), "
                    f"got {list(getattr(self, name))}",
                )
        if min(self.std) <= 0:
            raise bad("std", f"std values must be positive, got {list(self.std)}")

    @classmethod
    def from_config(cls, data: Mapping, input_shape: tuple[int, int, int]) -> Augment:
        """Parse a graph file's `data:` section for an input of shape (C, H, W)."""
        unknown = sorted(str(k) for k in data if k not in cls.KEYS)
        if unknown:
            raise SectionError(
                "data", unknown[0], f"unknown key '{unknown[0]}' (known: {', '.join(cls.KEYS)})"
            )
        channels, height, width = (int(v) for v in input_shape)

        def integer(key, default, least):
            value = data.get(key, default)
            if value is not None and (not is_int(value) or value < least):
                raise SectionError(
                    "data", key, f"{key} must be an integer >= {least}, got {value!r}"
                )
            return value

        def flag(key):
            value = data.get(key, False)
            if not isinstance(value, bool):
                raise SectionError("data", key, f"{key} must be true or false, got {value!r}")
            return value

        def per_channel(key):
            value = data.get(key)
            if value is None:
                return None
            values = value if isinstance(value, list | tuple) else [value] * channels
            if not values or not all(is_number(v) for v in values):
                raise SectionError(
                    "data",
                    key,
                    f"{key} must be a number or a list of one number per channel ({channels}), "
                    f"got {value!r}",
                )
            return tuple(float(v) for v in values)

        crop = data.get("crop", [height, width])
        if crop != [height, width] and not (is_int(crop) and crop == height == width):
            raise SectionError(
                "data",
                "crop",
                f"crop {crop!r} must match the graph's input size {height}x{width}",
            )
        jitter = data.get("pca_jitter", 0.0)
        if not is_number(jitter) or jitter < 0:
            raise SectionError(
                "data",
                "pca_jitter",
                f"pca_jitter must be a number >= 0 (paper: 0.1), got {jitter!r}",
            )
        return cls(
            channels=channels,
            crop=(height, width),
            resize=integer("resize", None, 1),
            random_crop=flag("random_crop"),
            pad=integer("pad", 0, 0),
            flip=flag("flip"),
            pca_jitter=float(jitter),
            mean=per_channel("mean"),
            std=per_channel("std"),
            ten_crop=flag("ten_crop"),
        )

    def resize_target(self, height: int, width: int) -> int | None:
        """The short side to resize an image of this size to, or None to leave it."""
        side = self.resize
        if side is None:
            if (height, width) == self.crop:
                return None
            side = max(self.crop)
        return None if min(height, width) == side else side

    def crops_per_image(self, train: bool) -> int:
        return 10 if self.ten_crop and not train else 1

    def crop_positions(self, height: int, width: int, u: np.ndarray | None, train: bool, n: int):
        """Top-left corners and flips (oy, ox, flip), crops_per_image(train) per image.

        `height`, `width`: the (resized, padded) size of the n images; `u`: their uniforms.
        """
        span_y, span_x = height - self.crop[0], width - self.crop[1]
        if train:
            if self.random_crop:
                oy, ox = _scaled(u[:, CROP_Y], span_y), _scaled(u[:, CROP_X], span_x)
            else:
                oy, ox = np.full(n, span_y // 2), np.full(n, span_x // 2)
            flip = u[:, FLIP] < 0.5 if self.flip else np.zeros(n, dtype=bool)
            return oy, ox, flip
        if self.ten_crop:
            ys = [0, 0, span_y, span_y, span_y // 2] * 2
            xs = [0, span_x, 0, span_x, span_x // 2] * 2
            return np.tile(ys, n), np.tile(xs, n), np.tile([False] * 5 + [True] * 5, n)
        return np.full(n, span_y // 2), np.full(n, span_x // 2), np.zeros(n, dtype=bool)

    def pca_shift(self, u: np.ndarray, eigen: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """Per-image colour shift in 0..255 units: 255 * sum_i alpha_i lambda_i v_i.

        The paper's formula with (lambda_i, v_i) from `Source.rgb_eigen`, i.e. of values in
        0..1 (in 0..255 units the eigenvalues are 255**2 larger and the shifts absurd).

        alpha_i ~ N(0, pca_jitter), drawn from the images' uniforms u.
        """
        values, vectors = eigen
        alpha = _normals(u[:, NORMALS]) * self.pca_jitter
        return 255.0 * (alpha * values) @ vectors.T

    def normalise(self, crops: np.ndarray, shift: np.ndarray | None = None) -> np.ndarray:
        """uint8 NCHW crops (C may be 1 for a 3-channel graph) -> float32 (pixel/255 - mean)/std."""
        n, _, h, w = crops.shape
        scale = 1.0 / (255.0 * np.asarray(self.std))  # (pixel + shift) * scale + bias
        bias = np.broadcast_to(-np.asarray(self.mean) / np.asarray(self.std), (n, self.channels))
        if shift is not None:
            bias = bias + shift * scale
        x = np.empty((n, self.channels, h, w), dtype=np.float32)
        x[...] = crops  # broadcasts a grayscale channel to every graph channel
        x *= scale.astype(np.float32)[:, None, None]
        x += bias.astype(np.float32)[:, :, None, None]
        return x
