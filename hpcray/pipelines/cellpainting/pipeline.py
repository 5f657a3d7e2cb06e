"""The whole cell painting pipeline as a workflow driver (`function:
hpcray.pipelines.cellpainting:run` in examples/cellpainting.yaml):

data (a user's CSV, or a synthetic plate) -> stratified split -> preprocessing pool ->
Tune + Optuna + ASHA over ViT fine-tuning -> the best checkpoint served as `dose-classifier`
-> held-out accuracy, confusion matrix and HPO history, written to <run>/cellpainting/.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field as PydanticField

import hpcray
from hpcray.pipelines.cellpainting.data import ColumnMap, DataError, Field, read_fields
from hpcray.pipelines.cellpainting.hpo import METRIC, MODE, SearchSpace, TrialResources, search
from hpcray.pipelines.cellpainting.train import CHECKPOINT_MODEL, DataSpec
from hpcray.spec.models import StrictModel

log = logging.getLogger("hpcray.cellpainting")

SERVICE = "dose-classifier"


class SyntheticData(StrictModel):
    fields_per_dose: int = PydanticField(40, ge=4)
    size: int = PydanticField(96, ge=32)
    doses: list[float] = [0.0, 0.5, 1.0, 2.0]
    seed: int = 0


class DataOptions(StrictModel):
    csv: str | None = PydanticField(None, description="Metadata CSV; none: a synthetic plate.")
    image_root: str | None = None
    columns: ColumnMap = PydanticField(default_factory=ColumnMap)
    on_error: Literal["raise", "skip"] = "raise"
    synthetic: SyntheticData = PydanticField(default_factory=SyntheticData)


class SplitOptions(StrictModel):
    val: float = PydanticField(0.2, gt=0, lt=0.5)
    test: float = PydanticField(0.2, gt=0, lt=0.5)
    seed: int = 0


class ModelOptions(StrictModel):
    checkpoint: str | None = PydanticField(None, description="A local pretrained ViT directory.")
    resize: int = PydanticField(64, ge=16, description="Fields are resized to this first.")
    crop: int = PydanticField(48, ge=16, description="The model's input: a crop of the above.")
    threads: int = PydanticField(1, ge=1, description="torch threads per trial.")


class SearchOptions(StrictModel):
    trials: int = PydanticField(4, ge=1)
    concurrent: int = PydanticField(2, ge=1)
    epochs: int = PydanticField(4, ge=1)
    samples_per_epoch: int | None = PydanticField(
        1024, ge=1, description="Augmented samples per epoch (the training fields repeated, "
                                "each time differently augmented); null: one pass.")
    space: SearchSpace = PydanticField(default_factory=SearchSpace)
    trial: TrialResources = PydanticField(default_factory=TrialResources)
    storage: str | None = PydanticField(
        None, description="Where Tune keeps the search. Give a path outside the run dir to "
                          "resume it in a later job; default <run>/cellpainting/tune.")
    name: str = "dose-vit"


class PreprocessOptions(StrictModel):
    workers: int = PydanticField(2, ge=1)
    cpus: float = PydanticField(0.25, gt=0)
    prefetch: int = PydanticField(4, ge=1)


class ServiceOptions(StrictModel):
    replicas: int = PydanticField(1, ge=1)
    cpus: float = PydanticField(0.5, gt=0)
    gpus: float = PydanticField(0, ge=0)


class CellPaintingConfig(StrictModel):
    data: DataOptions = PydanticField(default_factory=DataOptions)
    split: SplitOptions = PydanticField(default_factory=SplitOptions)
    model: ModelOptions = PydanticField(default_factory=ModelOptions)
    search: SearchOptions = PydanticField(default_factory=SearchOptions)
    preprocess: PreprocessOptions = PydanticField(default_factory=PreprocessOptions)
    service: ServiceOptions = PydanticField(default_factory=ServiceOptions)
    seed: int = 0


def load_data(options: DataOptions, out: Path) -> list[Field]:
    if options.csv is None:
        from hpcray.pipelines.cellpainting.synthetic import write_plate

        syn = options.synthetic
        csv = write_plate(out / "data", syn.fields_per_dose, syn.size, tuple(syn.doses),
                          syn.seed)
        log.info("wrote a synthetic plate: %d fields at doses %s to %s",
                 syn.fields_per_dose * len(syn.doses), syn.doses, csv.parent)
    else:
        csv = Path(options.csv)
    fields = read_fields(csv, options.columns, options.image_root, on_error=options.on_error)
    return fields


def split(fields: list[Field], labels: list[int], options: SplitOptions
          ) -> tuple[list[int], list[int], list[int]]:
    """Stratified by dose: every dose in every split, in the same proportions."""
    rng = np.random.default_rng(options.seed)
    train, val, test = [], [], []
    for label in sorted(set(labels)):
        members = rng.permutation([i for i, x in enumerate(labels) if x == label]).tolist()
        n_test = max(1, round(len(members) * options.test))
        n_val = max(1, round(len(members) * options.val))
        if len(members) < n_test + n_val + 1:
            raise DataError(f"dose class {label}: {len(members)} field(s); at least "
                            f"{n_test + n_val + 1} are needed for train, val and test")
        test += members[:n_test]
        val += members[n_test:n_test + n_val]
        train += members[n_test + n_val:]
    return train, val, test


class _Progress:
    """A Tune callback that reports trials and epochs to the run's progress files and log."""

    def __new__(cls, total_trials: int, epochs: int):
        from ray.tune import Callback

        class Reporter(Callback):
            def __init__(self) -> None:
                self.epochs_done, self.finished = 0, 0

            def on_trial_result(self, iteration, trials, trial, result, **info):
                self.epochs_done += 1
                line = (f"trial {trial.trial_id} epoch {result['epoch']}: val_accuracy "
                        f"{result['val_accuracy']:.3f}, {result['images_per_s']:.0f} img/s, "
                        f"waiting on data {100 * result['data_wait_fraction']:.0f}%")
                log.info("%s", line)
                hpcray.progress("epochs", self.epochs_done, total_trials * epochs, line)

            def on_trial_complete(self, iteration, trials, trial, **info):
                self.finished += 1
                hpcray.progress("trials", self.finished, total_trials,
                                f"{trial.trial_id} done")

        return Reporter()


def run(**options: Any) -> dict[str, Any]:
    """The driver: runs every step and returns the summary (also in summary.json)."""
    import ray

    from hpcray.pipelines.cellpainting.preprocess import channel_stats, start_pool

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    cfg = CellPaintingConfig.model_validate(options)
    run_dir = hpcray.context().run_dir or Path(".")
    out = run_dir / "cellpainting"
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    fields = load_data(cfg.data, out)
    field_doses = [f.dose for f in fields if f.dose is not None]
    if len(field_doses) != len(fields):
        raise DataError("every field needs a dose (the label)")
    doses = sorted(set(field_doses))
    names = [f"{d:g}" for d in doses]
    labels = [doses.index(d) for d in field_doses]
    train, val, test = split(fields, labels, cfg.split)
    log.info("%d fields, %d dose classes %s: train %d, val %d, test %d", len(fields),
             len(doses), names, len(train), len(val), len(test))
    stats = channel_stats([fields[i] for i in train], cfg.data.columns, seed=cfg.seed)

    pool_name = f"pool-{run_dir.name}"
    actors = start_pool(pool_name, cfg.preprocess.workers, fields, labels, stats,
                        cfg.model.resize, cfg.model.crop, cfg.preprocess.cpus,
                        cfg.data.columns)
    data = DataSpec(pool=pool_name, pool_size=cfg.preprocess.workers, train=train, val=val,
                    labels=names, crop=cfg.model.crop, epochs=cfg.search.epochs,
                    checkpoint=cfg.model.checkpoint, threads=cfg.model.threads,
                    seed=cfg.seed, prefetch=cfg.preprocess.prefetch,
                    samples_per_epoch=cfg.search.samples_per_epoch)
    storage = Path(cfg.search.storage) if cfg.search.storage else out / "tune"
    storage = storage.resolve()
    hpcray.progress("trials", 0, cfg.search.trials, "starting the search")
    try:
        grid = search(data, cfg.search.space, cfg.search.trials, cfg.search.concurrent,
                      cfg.search.trial, storage, cfg.search.name, cfg.seed,
                      callbacks=[_Progress(cfg.search.trials, cfg.search.epochs)],
                      resumed=hpcray.context().resumed)
    finally:
        for actor in actors:
            ray.kill(actor)
    searched = time.time()
    trials = _trials(grid)
    failed = [t for t in trials if t["error"]]
    # every trial of the search, those a resumed search found finished in an earlier job too
    # (the callback sees only the completions of this job)
    hpcray.progress("trials", len(trials), cfg.search.trials,
                    f"search finished: {len(trials) - len(failed)} trial(s) ok, "
                    f"{len(failed)} failed")
    best = grid.get_best_result(METRIC, MODE, scope="all")
    if best.checkpoint is None:
        raise RuntimeError(f"no trial produced a checkpoint ({len(failed)} failed: "
                           f"{failed[0]['error'] if failed else ''})")
    best_dir = out / "best-model"
    shutil.rmtree(best_dir, ignore_errors=True)
    with best.checkpoint.as_directory() as d:
        shutil.copytree(Path(d) / CHECKPOINT_MODEL, best_dir)
    log.info("best trial: %s val_accuracy %.3f, config %s", best.path, best.metrics[METRIC],
             _config(best.config))

    test_fields = [fields[i] for i in test]
    truth = [names[labels[i]] for i in test]
    predicted = _serve_and_classify(best_dir, stats, cfg, test_fields)
    accuracy = float(np.mean([t == p for t, p in zip(truth, predicted, strict=True)]))

    from hpcray.pipelines.cellpainting.evaluate import confusion, plot_confusion, plot_history

    matrix = confusion(truth, predicted, names)
    plot_confusion(matrix, names, out / "confusion.png",
                   f"held-out accuracy {accuracy:.2f} (chance {1 / len(names):.2f})")
    plot_history(trials, out / "hpo_history.png", METRIC)
    summary = {
        "fields": len(fields), "classes": names, "split": [len(train), len(val), len(test)],
        "test_accuracy": accuracy, "chance": 1 / len(names), "confusion": matrix.tolist(),
        "best_config": _config(best.config), "best_val_accuracy": best.metrics[METRIC],
        "best_model": str(best_dir), "trials": trials, "failed_trials": len(failed),
        "search_s": searched - started, "total_s": time.time() - started,
        "storage": str(storage / cfg.search.name),
        "plots": [str(out / "confusion.png"), str(out / "hpo_history.png")]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _print_summary(summary)
    return summary


def _config(config: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in config.items()}


def _trials(grid) -> list[dict[str, Any]]:
    out = []
    for result in grid:
        history = result.metrics_dataframe
        has = history is not None and METRIC in history
        out.append({"trial": Path(result.path).name.split("_")[2] if result.path else "?",
                    "config": _config(result.config or {}),
                    "epochs": history["epoch"].tolist() if has else [],
                    METRIC: history[METRIC].tolist() if has else [],
                    "images_per_s": history["images_per_s"].tolist() if has else [],
                    "data_wait_fraction": history["data_wait_fraction"].tolist() if has
                    else [],
                    "device": history["device"].iloc[-1] if has and "device" in history
                    else None,
                    "error": str(result.error) if result.error else None})
    return out


def _serve_and_classify(model_dir: Path, stats, cfg: CellPaintingConfig,
                        test_fields: list[Field]) -> list[str]:
    from hpcray.pipelines.cellpainting.evaluate import classify_fields
    hpcray.progress("evaluation", 0, len(test_fields), "starting the classification service")
    with hpcray.serving(
            SERVICE, "hpcray.pipelines.cellpainting.service:DoseClassifier",
            args={"model_dir": str(model_dir), "low": list(stats.low), "high": list(stats.high),
                  "resize": cfg.model.resize, "crop": cfg.model.crop},
            replicas=cfg.service.replicas,
            resources={"cpus": cfg.service.cpus, "gpus": cfg.service.gpus}) as handle:
        predicted = classify_fields(handle, test_fields)
    hpcray.progress("evaluation", len(test_fields), len(test_fields), "held-out set classified")
    return predicted


def _print_summary(s: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=100)
    table = Table(title="Cell painting: dose classification", show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("fields (train/val/test)", f"{s['fields']} ({'/'.join(map(str, s['split']))})")
    table.add_row("dose classes (Gy)", ", ".join(s["classes"]))
    table.add_row("held-out accuracy", f"{s['test_accuracy']:.3f} (chance {s['chance']:.2f})")
    table.add_row("best val accuracy", f"{s['best_val_accuracy']:.3f}")
    table.add_row("best hyperparameters", ", ".join(f"{k}={v}" for k, v in
                                                   s["best_config"].items()))
    table.add_row("trials (failed)", f"{len(s['trials'])} ({s['failed_trials']})")
    table.add_row("search / total time", f"{s['search_s']:.0f} s / {s['total_s']:.0f} s")
    table.add_row("plots", "\n".join(s["plots"]))
    table.add_row("best model", s["best_model"])
    console.print(table)
