"""CPU preprocessing that streams batches to training.

A pool of `Preprocessor` actors holds the fields (each read from disk once, on first use,
normalised per channel with statistics of the training split and resized). For every batch
it augments on the fly: random 90-degree rotation, flips, crop and contrast. A trainer pulls
batches through `BatchStream`, which keeps `prefetch` requests in flight across the pool, so
training starts on the first batch, preprocessing runs while the model steps, and no more
than `prefetch` batches wait in memory (backpressure).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from hpcray.pipelines.cellpainting.data import CHANNELS, ColumnMap, DataError, Field, load_field

POOL_NAMESPACE = "hpcray-cellpainting"


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel intensity range (1st and 99.5th percentile) of the training fields."""

    low: tuple[float, ...]
    high: tuple[float, ...]


def channel_stats(fields: list[Field], columns: ColumnMap | None = None,
                  sample: int = 32, seed: int = 0) -> ChannelStats:
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(fields), size=min(sample, len(fields)), replace=False)
    values = [load_field(fields[i], columns).reshape(len(CHANNELS), -1) for i in chosen]
    pixels = np.concatenate(values, axis=1).astype(np.float32)
    low, high = np.percentile(pixels, 1, axis=1), np.percentile(pixels, 99.5, axis=1)
    return ChannelStats(tuple(map(float, low)), tuple(map(float, high)))


def prepare(data: np.ndarray, stats: ChannelStats, size: int) -> np.ndarray:
    """(5, H, W) integers -> (5, size, size) float32, about 0..1 per channel."""
    import torch
    import torch.nn.functional as F

    low = np.asarray(stats.low, np.float32)[:, None, None]
    span = np.maximum(np.asarray(stats.high, np.float32)[:, None, None] - low, 1.0)
    x = np.clip((data.astype(np.float32) - low) / span, 0.0, 1.5)
    if x.shape[-1] != size or x.shape[-2] != size:
        t = torch.from_numpy(x)[None]
        x = F.interpolate(t, size=(size, size), mode="area")[0].numpy()
    return x


def augment(x: np.ndarray, rng: np.random.Generator, crop: int) -> np.ndarray:
    x = np.rot90(x, k=int(rng.integers(4)), axes=(1, 2))
    if rng.random() < 0.5:
        x = x[:, :, ::-1]
    top, left = rng.integers(0, x.shape[1] - crop + 1), rng.integers(0, x.shape[2] - crop + 1)
    x = x[:, top:top + crop, left:left + crop]
    mean = x.mean(axis=(1, 2), keepdims=True)
    contrast = rng.uniform(0.85, 1.15, size=(x.shape[0], 1, 1)).astype(np.float32)
    return (x - mean) * contrast + mean


def center(x: np.ndarray, crop: int) -> np.ndarray:
    top, left = (x.shape[1] - crop) // 2, (x.shape[2] - crop) // 2
    return x[:, top:top + crop, left:left + crop]


class Preprocessor:
    """One actor of the pool (CPU). Fields are read lazily and kept prepared in memory."""

    def __init__(self, fields: list[Field], labels: list[int], stats: ChannelStats,
                 size: int, crop: int, columns: ColumnMap | None = None) -> None:
        if crop > size:
            raise ValueError(f"crop {crop} is larger than the resized field {size}")
        self.fields, self.labels, self.stats = fields, labels, stats
        self.size, self.crop, self.columns = size, crop, columns
        self.cache: dict[int, np.ndarray] = {}

    def _prepared(self, i: int) -> np.ndarray:
        x = self.cache.get(i)
        if x is None:
            data = load_field(self.fields[i], self.columns)
            if min(data.shape[1:]) < self.crop:
                raise DataError(f"line {self.fields[i].row}: {self.fields[i].files[0]} is "
                                f"{data.shape[1]}x{data.shape[2]}, smaller than the model's "
                                f"input {self.crop}x{self.crop}")
            x = self.cache[i] = prepare(data, self.stats, self.size)
        return x

    def loaded(self) -> int:
        """Fields read so far (they are read on first use, not up front)."""
        return len(self.cache)

    def batch(self, indices: list[int], seed: int, train: bool) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        xs = [augment(self._prepared(i), rng, self.crop) if train
              else center(self._prepared(i), self.crop) for i in indices]
        return (np.ascontiguousarray(np.stack(xs), dtype=np.float32),
                np.asarray([self.labels[i] for i in indices], np.int64))


def start_pool(name: str, size: int, fields: list[Field], labels: list[int],
               stats: ChannelStats, resize: int, crop: int, cpus: float = 0.25,
               columns: ColumnMap | None = None) -> list:
    """`size` named actors, found by trials with `pool(name)`."""
    import ray

    remote = ray.remote(Preprocessor)
    return [remote.options(name=f"{name}-{i}", namespace=POOL_NAMESPACE, num_cpus=cpus,
                           lifetime=None).remote(fields, labels, stats, resize, crop, columns)
            for i in range(size)]


def pool(name: str, size: int) -> list:
    import ray

    return [ray.get_actor(f"{name}-{i}", namespace=POOL_NAMESPACE) for i in range(size)]


@dataclass
class BatchStream:
    """Batches of `indices` (shuffled per `seed`) from the pool, in order, `prefetch` ahead.
    `wait_s` is the time the consumer spent blocked on data."""

    actors: list
    indices: list[int]
    batch_size: int
    seed: int
    train: bool = True
    prefetch: int = 4
    wait_s: float = 0.0
    images: int = 0
    _next_actor: int = field(default=0, repr=False)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        import ray

        order = np.random.default_rng(self.seed).permutation(self.indices) if self.train \
            else np.asarray(self.indices)
        chunks = [order[i:i + self.batch_size].tolist()
                  for i in range(0, len(order), self.batch_size)]
        pending: deque = deque()
        for n, chunk in enumerate(chunks):
            pending.append(self._request(chunk, n))
            if len(pending) >= self.prefetch:
                yield self._take(pending.popleft(), ray)
        while pending:
            yield self._take(pending.popleft(), ray)

    def _request(self, chunk: list[int], n: int):
        actor = self.actors[self._next_actor % len(self.actors)]
        self._next_actor += 1
        return actor.batch.remote(chunk, self.seed * 100_003 + n, self.train)

    def _take(self, ref, ray) -> tuple[np.ndarray, np.ndarray]:
        start = time.perf_counter()
        x, y = ray.get(ref)  # zero-copy from the object store, read-only: the trainer copies
        x, y = np.array(x), np.array(y)
        self.wait_s += time.perf_counter() - start
        self.images += len(y)
        return x, y
