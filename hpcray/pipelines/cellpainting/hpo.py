"""The hyperparameter search: Ray Tune with Optuna's sampler (OptunaSearch) and ASHA early
stopping, trials running side by side. Results live in `storage/name`; submitting the same
search again after a walltime interruption restores it there (finished trials kept,
interrupted ones resumed from their last checkpoint), and so does a relay's next job of the
same run (`allocation.relay`, `hpcray.context().resumed`), with the default storage in the
run directory."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from hpcray.pipelines.cellpainting.train import DataSpec, train_trial
from hpcray.spec.models import StrictModel

log = logging.getLogger("hpcray.cellpainting")

METRIC, MODE = "val_accuracy", "max"


class SearchSpace(StrictModel):
    lr: tuple[float, float] = Field((3e-4, 3e-3), description="log-uniform range")
    batch_size: list[int] = Field([16, 32])
    weight_decay: tuple[float, float] = Field((1e-5, 1e-2), description="log-uniform range")
    dropout: tuple[float, float] = Field((0.0, 0.2), description="uniform range")

    def tune_space(self) -> dict[str, Any]:
        from ray import tune

        return {"lr": tune.loguniform(*self.lr), "batch_size": tune.choice(self.batch_size),
                "weight_decay": tune.loguniform(*self.weight_decay),
                "dropout": tune.uniform(*self.dropout)}


class TrialResources(StrictModel):
    """Per trial; fractional GPUs let several trials share one."""

    cpus: float = Field(0.75, gt=0)
    gpus: float | Literal["auto"] = Field(
        "auto", description="'auto': the cluster's GPUs shared by the concurrent trials (at "
                            "most one each), none on a CPU-only cluster.")

    def gpus_per_trial(self, concurrent: int, cluster_gpus: float) -> float:
        if self.gpus != "auto":
            return float(self.gpus)
        return min(1.0, cluster_gpus / concurrent) if cluster_gpus else 0.0


def restorable(path: Path) -> bool:
    """Whether Tune saved enough of a search at `path` to continue it: the tuner (what
    Tuner.can_restore looks for) and an experiment state (saved as the trials report; a job
    that ended before that left only the tuner, with nothing to continue)."""
    from ray import tune

    return tune.Tuner.can_restore(str(path)) and any(path.glob("experiment_state-*.json"))


def continues(path: Path, resumed: bool) -> bool:
    """Restore the search saved at `path` (True), or start it (False). `resumed`: this is a
    relay's next job of the run, which expects its own search there; finding none (the
    first job ended before Tune saved any) it starts the search afresh, and says so."""
    if restorable(path):
        log.info("resuming the search in %s%s", path,
                 " (a relay's next job of this run)" if resumed else "")
        return True
    if resumed:
        log.info("a relay's next job of this run, but no search was saved in %s: starting it",
                 path)
    return False


def search(data: DataSpec, space: SearchSpace, trials: int, concurrent: int,
           resources: TrialResources, storage: Path, name: str, seed: int = 0,
           callbacks: list | None = None, resumed: bool = False):
    """Run (or resume) the search; returns Tune's ResultGrid."""
    import os

    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    # Tune warns whenever saving the experiment state takes >5 s; on a shared filesystem
    # under load that is expected, and the warning drowns the pipeline's own progress.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

    gpus = resources.gpus_per_trial(concurrent, ray.cluster_resources().get("GPU", 0))
    log.info("trials: %g CPU and %g GPU each, %d at a time", resources.cpus, gpus, concurrent)
    trainable = tune.with_resources(tune.with_parameters(train_trial, data=data),
                                    {"cpu": resources.cpus, "gpu": gpus})
    path = storage / name
    if continues(path, resumed):
        tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space=space.tune_space(),
            tune_config=tune.TuneConfig(
                search_alg=OptunaSearch(metric=METRIC, mode=MODE, seed=seed),
                scheduler=ASHAScheduler(metric=METRIC, mode=MODE, max_t=data.epochs,
                                        grace_period=1, reduction_factor=2),
                num_samples=trials, max_concurrent_trials=concurrent),
            run_config=tune.RunConfig(
                name=name, storage_path=str(storage), callbacks=callbacks or [],
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                failure_config=tune.FailureConfig(max_failures=1), verbose=0))
    return tuner.fit()
