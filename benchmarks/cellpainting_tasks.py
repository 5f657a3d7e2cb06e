"""Driver for benchmarks/cellpainting.py, run inside an hpcray run (its Ray cluster)."""

from __future__ import annotations

import time


def data_path(csv: str, workers: int, concurrent: int, batch_size: int, batches: int,
              resize: int, crop: int, prefetch: int) -> dict:
    """Images per second the preprocessing pool delivers, the trainers consume, and what a
    trainer fed by the stream achieves (with the time it waits on data), one after another
    in the same cluster."""
    import numpy as np
    import ray
    import torch

    from hpcray.pipelines.cellpainting.data import read_fields
    from hpcray.pipelines.cellpainting.model import build_model, forward
    from hpcray.pipelines.cellpainting.preprocess import BatchStream, channel_stats, start_pool

    fields = read_fields(csv)
    doses = sorted({f.dose for f in fields})
    labels = [doses.index(f.dose) for f in fields]
    stats = channel_stats(fields)
    actors = start_pool("bench", workers, fields, labels, stats, resize, crop)
    indices = list(range(len(fields)))
    list(BatchStream(actors, indices, batch_size, seed=0, prefetch=prefetch))  # read once
    n = batch_size * batches
    epoch = (indices * (n // len(indices) + 1))[:n]

    # delivered: the pool alone, asked `concurrent` streams at once (one per trial); each
    # stream times itself, so starting its worker process is not counted
    @ray.remote(num_cpus=0)
    def drain(seed: int) -> tuple[int, float, float]:
        start = time.time()
        images = sum(len(y) for _, y in BatchStream(actors, epoch, batch_size, seed=seed,
                                                    prefetch=prefetch))
        return images, start, time.time()

    drained = ray.get([drain.remote(s) for s in range(concurrent)])
    delivered = sum(d[0] for d in drained) / (max(d[2] for d in drained)
                                              - min(d[1] for d in drained))

    # consumed: `concurrent` trainers stepping on a batch already in memory (no data path)
    x0, y0 = next(iter(BatchStream(actors, indices[:batch_size], batch_size, seed=0)))

    @ray.remote(num_cpus=0)
    def consume(x, y) -> float:
        torch.set_num_threads(1)
        model = build_model(len(doses), crop, 0.1)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        xt, yt = torch.from_numpy(np.array(x)), torch.from_numpy(np.array(y))
        for _ in range(3):  # warm-up
            opt.zero_grad()
            torch.nn.functional.cross_entropy(forward(model, xt), yt).backward()
            opt.step()
        start = time.perf_counter()
        for _ in range(batches):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(forward(model, xt), yt).backward()
            opt.step()
        return batches * len(y) / (time.perf_counter() - start)

    consumed = sum(ray.get([consume.remote(x0, y0) for _ in range(concurrent)]))

    # streamed: the same trainers fed by the pool, as in a trial
    @ray.remote(num_cpus=0)
    def train(seed: int) -> dict:
        torch.set_num_threads(1)
        model = build_model(len(doses), crop, 0.1)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        stream = BatchStream(actors, epoch, batch_size, seed=seed, prefetch=prefetch)
        start = time.perf_counter()
        for x, y in stream:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(forward(model, torch.from_numpy(x)),
                                              torch.from_numpy(y)).backward()
            opt.step()
        wall = time.perf_counter() - start
        return {"images_per_s": stream.images / wall, "wait_fraction": stream.wait_s / wall}

    streamed = ray.get([train.remote(s) for s in range(concurrent)])
    return {"delivered": delivered, "consumed": consumed,
            "streamed": sum(s["images_per_s"] for s in streamed),
            "wait_fraction": max(s["wait_fraction"] for s in streamed),
            "workers": workers, "concurrent": concurrent, "batch_size": batch_size,
            "crop": crop}
