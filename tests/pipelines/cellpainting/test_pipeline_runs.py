"""The pipeline in real hpcray runs (local site, a real Ray cluster): streaming preprocessing,
the classification service, a 2-trial Tune search end to end, and resuming an interrupted
search in a new job."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import hpcray
from hpcray.errors import SpecError
from hpcray.pipelines.cellpainting.synthetic import write_plate
from hpcray.rundir import read_json
from hpcray.runtime.teardown import RAY_LOGS_LIMIT, ray_logs_dir
from hpcray.views.console import quiet_lines
from tests.conftest import ONE_NODE, REPO, run_beside, wait_until
from tests.views.checks import assert_report_shows_the_run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


def _driver(function: str, args: dict) -> str:
    return (f"driver:\n  function: {function}\n  args: {json.dumps(args)}\n")


def test_streaming_preprocessing_and_the_classification_service(tmp_path, run_root):
    """One run: the preprocessing pool streams every field once per epoch, reading files
    only as needed; the served classifier predicts what the model predicts offline. Its
    replica warns twice as it starts: the quiet console shows that once, with where the
    full text is (`hpcray up` does not take its workers' output: it is heard only in Ray's
    session logs, kept at teardown)."""
    from hpcray.pipelines.cellpainting.data import read_fields
    from hpcray.pipelines.cellpainting.model import build_model
    from hpcray.pipelines.cellpainting.preprocess import channel_stats

    csv = write_plate(tmp_path / "plate", fields_per_dose=6, size=64)
    model_dir = tmp_path / "model"
    build_model(4, 32, labels=["0", "0.5", "1", "2"]).save_pretrained(model_dir)
    stats = channel_stats(read_fields(csv))
    args = {"model_dir": str(model_dir), "low": list(stats.low), "high": list(stats.high),
            "resize": 48, "crop": 32}
    sub, st = run_beside(
        "cellpainting", tmp_path.name,
        f"name: cpchecks\n{ONE_NODE}services:\n  - name: classifier\n"
        "    deployment: cp_checks:WarningClassifier\n"
        f"    args: {json.dumps(args)}\n    resources: {{cpus: 0.5}}\n"
        + _driver("cp_checks:stream_and_classify",
                  {"csv": str(csv), **{k: args[k] for k in ("model_dir", "low", "high")}}),
        run_root)
    assert st.state == "completed", hpcray.logs(sub.run_dir)
    result = json.loads((sub.run_dir / "driver-result.json").read_text())
    got = result["stream"]
    assert got["labels_seen"] == got["labels"]  # every field once per epoch, none dropped
    assert got["first_loaded"] < got["fields"] == got["loaded"] == 24  # read as needed
    assert got["shapes"] == [[5, 32, 32]] and got["eval_deterministic"]
    assert -0.5 < got["range"][0] < got["range"][1] < 2.0
    served = result["classify"]
    assert served["served"] == served["offline"] and len(served["served"]) == 6
    assert "'files' needs 5 paths" in served["error"]
    assert served["replica"] and abs(sum(served["probabilities"][0]) - 1) < 1e-3
    console = list(quiet_lines(sub.run_dir, sub.run_id))
    warned = [line for line in console if "low contrast in the Mito channel" in line]
    assert len(warned) == 1, console
    assert f"full text: hpcray logs {sub.run_id} --service classifier" in warned[0]
    kept = hpcray.logs(sub.run_dir, service="classifier")
    assert kept.count("low contrast in the Mito channel") >= 2, kept  # twice, shown once
    assert "==> logs/ray/" in kept
    with pytest.raises(SpecError, match="no service 'nosuch' in this run; services: classifier"):
        hpcray.logs(sub.run_dir, service="nosuch")
    with pytest.raises(SpecError, match="no stage 'x' in this run; stages: none"):
        hpcray.logs(sub.run_dir, stage="x")


def _pipeline(tmp_path: Path, storage: Path | None = None, epochs: int = 2,
              samples: int = 256) -> Path:
    args = {"data": {"synthetic": {"fields_per_dose": 12, "size": 64}},
            "model": {"resize": 48, "crop": 32},
            "search": {"trials": 2, "concurrent": 2, "epochs": epochs, "samples_per_epoch": samples,
                       "trial": {"cpus": 0.5}, **({"storage": str(storage)} if storage else {})},
            "preprocess": {"workers": 2, "cpus": 0.25}, "service": {"cpus": 0.25}}
    path = tmp_path / "cellpainting.yaml"
    path.write_text(f"name: cptest\n{ONE_NODE}"
                    + _driver("hpcray.pipelines.cellpainting:run", args))
    return path


# what the quiet console must not show: Ray's forwarded worker lines, Serve's, Ray's and
# Optuna's INFO records, Tune's own prints
NOT_ON_CONSOLE = re.compile(
    r"\([^()]* pid=\d+(, ip=[^)]*)?\)|^(INFO|DEBUG) \d{4}-\d\d-\d\d |\t(INFO|DEBUG) \S+:\d+ -- |"
    r"^\[I \d{4}|View detailed results here|Configuration for experiment|"
    r"Checkpoint successfully created")


def _assert_quiet_console_and_kept_logs(run_dir: Path, capsys) -> None:
    """`hpcray submit --wait`'s console (the CLI's own follower, on the ended run) has the
    driver's lines and summary and no INFO line of Ray, Serve or Tune, which are all in
    driver.log; Ray's session logs of every node are in the run directory, bounded, with
    no secret of the run in them."""
    from hpcray.cli import _follow

    capsys.readouterr()
    _follow(run_dir, timeout=30)
    console = capsys.readouterr().out
    full = (run_dir / "logs" / "driver.log").read_text()
    assert "(ServeController pid=" in full and "View detailed results here" in full
    assert re.search(r"^INFO \S+ \S+ serve \d+ -- ", full, re.M)  # Serve's, in the driver
    assert not [line for line in console.splitlines() if NOT_ON_CONSOLE.search(line)], console
    assert "best trial:" in console and "Cell painting: dose classification" in console
    assert console.rstrip().splitlines()[-1].startswith("logs: hpcray logs ")
    token = (run_dir / "secrets" / "ray-token").read_bytes().strip()
    for node in read_json(run_dir / "run.json")["node_names"]:
        kept = ray_logs_dir(run_dir / "logs", node)
        files = [p for p in kept.rglob("*") if p.is_file()]
        assert (kept / "raylet.out").is_file() and (kept / "gcs_server.out").is_file()
        assert sum(p.stat().st_size for p in files) <= RAY_LOGS_LIMIT
        assert not [p for p in files if token in p.read_bytes()]
        assert list(kept.glob("serve/replica_hpcray-dose-classifier_*.log"))
    assert "Started initializing replica" in hpcray.logs(run_dir, service="dose-classifier")


def test_an_interrupted_search_resumes_in_the_next_job_and_ends_with_every_output(
        tmp_path, run_root, capsys):
    """Cancel the first job (as a walltime kill would) once a trial has checkpointed; the
    same file submitted again restores the search from its storage, finishes it, and writes
    what a search run end to end writes (one test for both: each costs a minute of CI),
    with a quiet console and Ray's logs kept."""
    storage = tmp_path / "tune-store"
    wf = _pipeline(tmp_path, storage, epochs=3, samples=1024)
    first = hpcray.submit(wf, run_root=run_root)

    def saved_after_a_checkpoint() -> bool:
        """A trial checkpointed, and Tune then saved the experiment's state."""
        checkpoints = list(storage.glob("dose-vit/*/checkpoint_000000"))
        states = list(storage.glob("dose-vit/experiment_state-*.json"))
        return bool(checkpoints and states) and max(p.stat().st_mtime for p in states) > \
            min(p.stat().st_mtime for p in checkpoints)

    assert wait_until(lambda: saved_after_a_checkpoint() or
                      hpcray.status(first.run_dir).finished, 300, interval=0.2)
    assert not list(storage.glob("dose-vit/*/checkpoint_000002")), \
        "a trial finished before the interruption"
    hpcray.cancel(first.run_dir)
    second = hpcray.submit(wf, run_root=run_root)
    st = hpcray.wait(second.run_dir, timeout=400)
    assert st.state == "completed", hpcray.logs(second.run_dir)
    summary = json.loads((second.run_dir / "cellpainting" / "summary.json").read_text())
    assert len(summary["trials"]) == 2  # the same two trials, not two new ones
    results = [json.loads(line) for f in storage.glob("dose-vit/*/result.json")
               for line in f.read_text().splitlines() if line]
    assert any(r["resumed"] for r in results), "no trial continued from its checkpoint"
    assert {r["epoch"] for r in results if r["resumed"]} <= {2, 3}
    assert "resuming the search" in (second.run_dir / "logs" / "driver.log").read_text()
    out = second.run_dir / "cellpainting"
    assert summary["failed_trials"] == 0
    assert set(summary["best_config"]) == {"lr", "batch_size", "weight_decay", "dropout"}
    assert summary["split"] == [32, 8, 8] and len(summary["confusion"]) == 4
    assert sum(map(sum, summary["confusion"])) == 8  # every held-out field was classified
    assert (out / "confusion.png").stat().st_size > 5000
    assert (out / "hpo_history.png").stat().st_size > 5000
    assert (out / "best-model" / "config.json").exists()
    progress = json.loads((second.run_dir / "progress" / "trials.json").read_text())
    assert progress["done"] == progress["total"] == 2
    # `hpcray report` from Ray's events: each trial that ran in this job is a Tune actor in
    # the process that reported its results, the pool and the served classifier beside them
    started = read_json(second.run_dir / "run.json")["times"]["job_started"]
    trial_pids = {r["pid"] for r in results if r["timestamp"] >= int(started)}
    rep = assert_report_shows_the_run(
        second.run_dir, tune_trials=len(trial_pids), shot=tmp_path / "report.png",
        actors={"Preprocessor": 2, "service dose-classifier": 1})
    assert {i.pid for i in rep.items if i.group == "Tune trials"} == trial_pids
    _assert_quiet_console_and_kept_logs(second.run_dir, capsys)


def test_the_example_renders_for_delta_with_an_account():
    script = hpcray.script(REPO / "examples" / "cellpainting.yaml", "delta",
                           account="bbka-delta-gpu")
    assert "#SBATCH --account=bbka-delta-gpu" in script
    assert "#SBATCH --partition=gpuA100x4" in script
