"""When the cell painting search continues a saved one (hpo.continues): a relay's next job of
the run (`hpcray.context().resumed`) finds its own search in the run directory and restores
it; a job that ended before Tune saved an experiment state leaves nothing to restore, and the
search starts afresh. The restore itself, on an interrupted search in a new job, is
tests/pipelines/cellpainting/test_pipeline_runs.py's."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hpcray.pipelines.cellpainting.hpo import continues, restorable


def test_a_search_is_restored_only_once_tune_saved_its_state(tmp_path, caplog):
    path = tmp_path / "dose-vit"
    with caplog.at_level(logging.INFO, logger="hpcray.cellpainting"):
        assert not restorable(path) and not continues(path, resumed=False)
        assert caplog.messages == []  # a first job: nothing to say
        assert not continues(path, resumed=True)
        assert caplog.messages == [f"a relay's next job of this run, but no search was saved "
                                   f"in {path}: starting it"]
        path.mkdir()
        (path / "tuner.pkl").write_bytes(b"")  # Tune began, then the job ended
        assert not restorable(path) and not continues(path, resumed=True)
        (path / "experiment_state-2026-12-02_10-00-00.json").write_text("{}")
        caplog.clear()
        assert restorable(path) and continues(path, resumed=True)
        assert caplog.messages == [f"resuming the search in {path} (a relay's next job of "
                                   "this run)"]
        assert continues(path, resumed=False)  # the same file submitted again, as before


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_what_tune_saves_is_what_restorable_looks_for(tmp_path):
    """A real (tiny) search on Ray 2.60: once it ran, `restorable` says so, and the call the
    pipeline makes (Tuner.restore with resume_unfinished) returns its trials without
    running a finished one again."""
    import ray
    from ray import tune

    ran = tmp_path / "ran"
    ran.mkdir()

    def trainable(config):
        (ran / f"{config['x']}-{len(list(ran.iterdir()))}").write_text("")
        tune.report({"score": config["x"]})

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        storage = tmp_path / "tune"
        tune.Tuner(trainable, param_space={"x": tune.grid_search([1, 2])},
                   run_config=tune.RunConfig(name="s", storage_path=str(storage),
                                             verbose=0)).fit()
        path = storage / "s"
        assert restorable(Path(path))
        grid = tune.Tuner.restore(str(path), trainable, resume_unfinished=True,
                                  resume_errored=True).fit()
        assert sorted(r.metrics["score"] for r in grid) == [1, 2]
        assert len(list(ran.iterdir())) == 2  # restored, not run again
    finally:
        ray.shutdown()
