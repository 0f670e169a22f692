"""Batches of (x, y): float32 NCHW images and int64 labels, built ahead in background threads.

A batch is a pure function of (seed, epoch, batch number): the order is a permutation drawn
from default_rng([seed, epoch]) and each sample's augmentation is keyed by (seed, epoch,
index). So any worker count gives bit-identical batches, and a run resumed at
(epoch, start_batch) sees exactly what a straight run would have seen from there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from alexc.errors import DataError

from .augment import DRAWS, Augment, gather_crops, resize_short_side, sample_uniforms
from .sources import ArraySource, Source


def batch_share(n: int, rank: int, ranks: int) -> slice:
    """The rows of an n-row batch that process `rank` of `ranks` takes: consecutive, and as
    even as n allows (the first n % ranks processes take one row more)."""
    base, extra = divmod(n, ranks)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


class Loader:
    """Iterate to get (x, y) batches of one epoch; see the module docstring.

    Train: shuffled, augmented, the last incomplete batch dropped (unless drop_last=False).
    Eval: in order, resize + centre crop (or ten crops: x then has 10 rows per label, the
    crops of label k in rows 10k..10k+9), the last batch kept. Images that fail to decode
    are left out of their batch (which is then smaller; an empty batch is not yielded) and
    listed in `source.skipped`. `len(loader)` is the number of batches an iteration yields
    at most: batches_per_epoch - start_batch.

    `part=(rank, ranks)`: yield only this process's share of each batch (`batch_share`), so
    `ranks` loaders together yield exactly the batches of one loader with `part=(0, 1)`.
    """

    def __init__(
        self,
        source: Source,
        augment: Augment,
        *,
        batch_size: int,
        train: bool,
        seed: int,
        epoch: int = 0,
        start_batch: int = 0,
        workers: int = 2,
        prefetch: int = 4,
        drop_last: bool | None = None,
        part: tuple[int, int] = (0, 1),
    ):
        if augment.channels != source.channels:
            raise DataError(
                f"the data has {source.channels} channels, the graph's input {augment.channels}"
            )
        for name, value, least in (
            ("batch_size", batch_size, 1),
            ("seed", seed, 0),
            ("epoch", epoch, 0),
            ("start_batch", start_batch, 0),
            ("workers", workers, 0),
            ("prefetch", prefetch, 1),
        ):
            if not isinstance(value, int | np.integer) or value < least:
                raise DataError(f"loader: {name} must be an integer >= {least}, got {value!r}")
        n = len(source)
        if n == 0:
            raise DataError(f"{source.origin}: no images")
        self.source, self.augment, self.train = source, augment, train
        self.batch_size, self.seed = batch_size, seed
        self.epoch, self.start_batch = epoch, start_batch
        self.workers, self.prefetch = workers, prefetch
        self.drop_last = train if drop_last is None else drop_last
        self.part = part
        n = len(source)
        if self.drop_last and n < batch_size:
            raise DataError(
                f"{source.origin}: {n} image(s), fewer than one batch of {batch_size}; "
                "lower the batch size (--batch-size) or add images"
            )
        self.batches_per_epoch = n // batch_size if self.drop_last else -(-n // batch_size)
        # The eigen-decomposition is estimated once per (source, seed) and cached on the source.
        use_pca = train and augment.pca_jitter > 0
        self._eigen = source.rgb_eigen(seed=seed) if use_pca else None
        # In-memory images that need no resize take the vectorised path: no per-image Python.
        self._vectorised = isinstance(source, ArraySource) and (
            augment.resize_target(*source.images.shape[1:3]) is None
        )
        self._running: set[_Prefetcher] = set()

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start_batch)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Make the next iteration yield epoch `epoch` from batch `start_batch` on."""
        self.epoch, self.start_batch = epoch, start_batch

    def order(self) -> np.ndarray:
        """The sample indices of this epoch, in the order batches take them."""
        if not self.train:
            return np.arange(len(self.source))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.source))

    def batch(self, indices, *, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Build the batch of these sample indices synchronously (default: this epoch's draws)."""
        indices = np.asarray(indices, dtype=np.int64)
        epoch = self.epoch if epoch is None else epoch
        u = sample_uniforms(self.seed, epoch, indices, DRAWS) if self.train else None
        if self._vectorised:
            crops, kept = self._crop_array(indices, u), np.arange(len(indices))
        else:
            crops, kept = self._crop_each(indices, u)
        shift = None if self._eigen is None else self.augment.pca_shift(u[kept], self._eigen)
        x = self.augment.normalise(crops, shift)
        return x, self.source.labels[indices[kept]]

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        # Fixed here, so set_epoch during an iteration cannot mix two epochs' draws.
        order, size, epoch = self.order(), self.batch_size, self.epoch
        numbers = range(self.start_batch, self.batches_per_epoch)

        def build(b: int):
            indices = order[b * size : (b + 1) * size]
            return self.batch(indices[batch_share(len(indices), *self.part)], epoch=epoch)

        if self.workers == 0:
            batches = map(build, numbers)
            yield from (batch for batch in batches if len(batch[1]))
            return
        prefetcher = _Prefetcher(build, numbers, self.workers, self.prefetch)
        self._running.add(prefetcher)
        try:
            yield from (batch for batch in prefetcher if len(batch[1]))
        finally:
            prefetcher.close()
            self._running.discard(prefetcher)

    def close(self) -> None:
        """Stop the background threads of any iteration in progress."""
        for prefetcher in list(self._running):
            prefetcher.close()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _crop_array(self, indices: np.ndarray, u: np.ndarray | None) -> np.ndarray:
        """Vectorised geometry for in-memory images of one size: one pad, one gather."""
        aug, images = self.augment, self.source.images
        n, (_, h, w, c) = len(indices), images.shape
        pad = aug.pad if self.train and aug.random_crop else 0
        if pad:
            padded = np.zeros((n, h + 2 * pad, w + 2 * pad, c), dtype=np.uint8)
            padded[:, pad : pad + h, pad : pad + w] = images[indices]
            images, positions = padded, np.arange(n)
        else:
            positions = indices
        oy, ox, flip = aug.crop_positions(h + 2 * pad, w + 2 * pad, u, self.train, n)
        positions = np.repeat(positions, aug.crops_per_image(self.train))
        return gather_crops(images, positions, oy, ox, flip, aug.crop)

    def _crop_each(self, indices: np.ndarray, u: np.ndarray | None):
        """Per-image geometry (decode, resize, pad, crop, flip); returns crops and kept rows."""
        aug = self.augment
        (ch, cw), pad = aug.crop, (aug.pad if self.train and aug.random_crop else 0)
        min_side = aug.resize or max(aug.crop)
        crops, kept = [], []
        for row, i in enumerate(indices):
            img = self.source.decode(int(i), min_side=min_side)
            if img is None:
                continue
            side = aug.resize_target(*img.shape[:2])
            if side is not None:
                img = resize_short_side(img, side)
            if pad:
                img = np.pad(img, ((pad, pad), (pad, pad), (0, 0)))
            draws = None if u is None else u[row : row + 1]
            oy, ox, flip = aug.crop_positions(img.shape[0], img.shape[1], draws, self.train, 1)
            for y, x, f in zip(oy, ox, flip, strict=True):
                crop = img[y : y + ch, x : x + cw].transpose(2, 0, 1)
                crops.append(crop[..., ::-1] if f else crop)
            kept.append(row)
        if not crops:
            shape = (0, self.source.stored_channels, ch, cw)
            return np.zeros(shape, dtype=np.uint8), np.zeros(0, dtype=np.int64)
        return np.stack(crops), np.array(kept, dtype=np.int64)


class _Prefetcher:
    """Builds items on daemon threads, at most `depth` ahead of the consumer, handed out in order.

    Invariant: a worker claims item k only while k < taken + depth, so at most `depth` items
    exist (ready or in progress) that the consumer has not taken.
    """

    def __init__(self, build: Callable, keys: Sequence, workers: int, depth: int):
        self._build, self._keys, self._depth = build, list(keys), depth
        self._cond = threading.Condition()
        self._claimed = self._taken = 0
        self._ready: dict[int, tuple[bool, object]] = {}
        self._stopped = False
        self._threads = [
            threading.Thread(target=self._work, name=f"alexc-loader-{k}", daemon=True)
            for k in range(min(workers, len(self._keys)))
        ]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        while True:
            with self._cond:
                while (
                    not self._stopped
                    and self._claimed < len(self._keys)
                    and self._claimed >= self._taken + self._depth
                ):
                    self._cond.wait()
                if self._stopped or self._claimed >= len(self._keys):
                    return
                k = self._claimed
                self._claimed += 1
            try:
                result = (True, self._build(self._keys[k]))
            except Exception as e:  # noqa: BLE001 - handed to the consumer, raised there
                result = (False, e)
            with self._cond:
                self._ready[k] = result
                self._cond.notify_all()

    def __iter__(self):
        for k in range(len(self._keys)):
            with self._cond:
                while k not in self._ready and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                ok, value = self._ready.pop(k)
                self._taken = k + 1
                self._cond.notify_all()
            if not ok:
                raise value
            yield value

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            self._ready.clear()
            self._cond.notify_all()
        # A worker finishes the batch in hand (bounded work), then sees the flag and exits.
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5.0)
