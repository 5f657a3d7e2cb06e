"""One Tune trial: fine-tune the ViT on batches streamed from the preprocessing pool, report
validation accuracy each epoch with a checkpoint, and resume from the last checkpoint when
Tune restarts the trial (after a failure or a walltime interruption)."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHECKPOINT_STATE = "state.pt"      # model, optimizer and epoch: for resuming
CHECKPOINT_MODEL = "model"         # save_pretrained: what the classification service loads


@dataclass
class DataSpec:
    """What every trial shares (passed with tune.with_parameters, not searched)."""

    pool: str
    pool_size: int
    train: list[int]
    val: list[int]
    labels: list[str]
    crop: int
    epochs: int
    checkpoint: str | None = None  # a pretrained ViT directory, or None (random init)
    threads: int = 1
    seed: int = 0
    prefetch: int = 4
    samples_per_epoch: int | None = None  # augmented samples per epoch; None: one pass

    def epoch_indices(self) -> list[int]:
        """The training fields, repeated (each time augmented differently) to fill an epoch."""
        n = self.samples_per_epoch or len(self.train)
        return (self.train * (n // len(self.train) + 1))[:n]


def train_trial(config: dict[str, Any], data: DataSpec) -> None:
    import ray
    import torch
    import transformers
    from ray import tune

    from hpcray.pipelines.cellpainting.model import build_model, forward
    from hpcray.pipelines.cellpainting.preprocess import BatchStream, pool

    transformers.utils.logging.disable_progress_bar()

    torch.set_num_threads(data.threads)
    torch.manual_seed(data.seed)
    # Ray sets CUDA_VISIBLE_DEVICES to the trial's share; "cuda" is that GPU
    device = torch.device("cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu")
    actors = pool(data.pool, data.pool_size)
    model = build_model(len(data.labels), data.crop, config["dropout"], data.checkpoint,
                        labels=data.labels)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"],
                            weight_decay=config["weight_decay"])
    epoch = 0
    resumed = tune.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as d:
            state = torch.load(Path(d) / CHECKPOINT_STATE, weights_only=False,
                               map_location=device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        epoch = state["epoch"]
    loss_fn = torch.nn.CrossEntropyLoss()
    while epoch < data.epochs:
        model.train()
        stream = BatchStream(actors, data.epoch_indices(), int(config["batch_size"]),
                             seed=data.seed * 1000 + epoch, prefetch=data.prefetch)
        start, losses = time.perf_counter(), []
        for x, y in stream:
            opt.zero_grad()
            loss = loss_fn(forward(model, torch.from_numpy(x).to(device)),
                           torch.from_numpy(y).to(device))
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        wall = time.perf_counter() - start
        val_loss, val_acc = evaluate(model, actors, data, device)
        epoch += 1
        metrics = {"epoch": epoch, "train_loss": sum(losses) / len(losses),
                   "val_loss": val_loss, "val_accuracy": val_acc,
                   "images_per_s": stream.images / wall,
                   "data_wait_fraction": stream.wait_s / wall, "resumed": resumed is not None,
                   "device": device.type}
        with tempfile.TemporaryDirectory() as d:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                        "epoch": epoch}, Path(d) / CHECKPOINT_STATE)
            model.save_pretrained(Path(d) / CHECKPOINT_MODEL)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def evaluate(model, actors, data: DataSpec, device=None) -> tuple[float, float]:
    import torch

    from hpcray.pipelines.cellpainting.model import forward
    from hpcray.pipelines.cellpainting.preprocess import BatchStream

    model.eval()
    total, correct, loss_sum = 0, 0, 0.0
    with torch.no_grad():
        for x, y in BatchStream(actors, data.val, 64, seed=0, train=False,
                                prefetch=data.prefetch):
            logits = forward(model, torch.from_numpy(x).to(device))
            target = torch.from_numpy(y).to(device)
            loss_sum += float(torch.nn.functional.cross_entropy(logits, target,
                                                                reduction="sum"))
            correct += int((logits.argmax(-1) == target).sum())
            total += len(y)
    return loss_sum / total, correct / total
