"""The UQ pipeline: bad input stopped before anything runs, the same file rendered for
Polaris and Frontier, and (slow) a real run of 2 tiny models x 3 methods end to end."""

from __future__ import annotations

import csv
import json
import re

import pytest

import hpcray
from hpcray.errors import SpecError
from hpcray.spec import loads_workflow
from hpcray.views.console import quiet_lines
from tests.conftest import REPO, run_to_completion

EXAMPLE = REPO / "examples" / "uq.yaml"


def test_a_qa_row_without_an_answer_stops_the_driver_before_any_task(tmp_path):
    from hpcray.pipelines.uq import QAError, run

    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"question": "a?", "options": ["x", "y"], "answer": "x"}\n'
                  '{"question": "b?", "options": ["x", "y"]}\n')
    with pytest.raises(QAError, match=rf"{qa}:2: field 'answer' is missing"):
        run(models=[{"name": "m", "tiny": "llama"}], data={"qa": str(qa)},
            output=str(tmp_path / "out"))
    assert not (tmp_path / "out" / "models").exists()  # nothing built, nothing started


def test_a_model_that_is_not_a_causal_lm_is_named(tmp_path):
    from hpcray.models.tiny import build_tiny_encoder
    from hpcray.pipelines.uq.pipeline import UQConfig, plan_tasks

    bert = build_tiny_encoder(tmp_path / "bert")
    config = UQConfig(models=[{"name": "enc", "path": str(bert)}])
    with pytest.raises(SpecError, match=rf"model {bert}: not a causal LM \(architectures: "
                                        r"BertModel\)"):
        plan_tasks(config, {"enc": str(bert)})
    with pytest.raises(SpecError, match="no config.json"):
        plan_tasks(config, {"enc": str(tmp_path)})


def test_driver_args_are_checked_when_the_file_is_loaded():
    text = EXAMPLE.read_text().replace("methods: [lora, ensemble, laplace]",
                                       "methods: [lora, dropconnect]")
    with pytest.raises(SpecError) as info:
        loads_workflow(text, "uq.yaml")
    assert "uq.yaml:" in str(info.value) and "methods" in str(info.value)


@pytest.mark.parametrize("site, lines", [
    ("polaris", ["#PBS -l select=1:system=polaris", "#PBS -l walltime=00:30:00",
                 "#PBS -A BIO123"]),
    ("frontier", ["#SBATCH --nodes=1", "#SBATCH --time=00:30:00", "#SBATCH --account=BIO123"]),
])
def test_the_example_renders_for_polaris_and_frontier(site, lines, tmp_path):
    script = hpcray.script(EXAMPLE, site=site, run_root=tmp_path, account="BIO123")
    for line in lines:
        assert line in script.splitlines(), (line, script)
    assert "-m hpcray up --run-dir" in script


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_tiny_models_three_methods_end_to_end(tmp_path):
    wf = tmp_path / "uq.yaml"
    wf.write_text(
        "name: uqtest\nallocation: {nodes: 1, walltime: 20m}\n"
        "ray: {object_store_memory: 100000000, teardown_grace: 5}\n"
        "driver:\n  function: hpcray.pipelines.uq:run\n  args:\n"
        "    models: [{name: llama, tiny: llama}, {name: mistral, tiny: mistral}]\n"
        "    seeds: [0]\n    methods: [lora, ensemble, laplace]\n"
        "    data: {synthetic_questions: 160}\n"
        "    training: {epochs: 3, ensemble: 2, samples: 4}\n")
    sub, _ = run_to_completion(wf, tmp_path / "runs", timeout=540)
    out = sub.run_dir / "uq"
    with (out / "uq_metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {(r["model"], r["method"]) for r in rows} == {
        (m, k) for m in ("llama", "mistral") for k in ("lora", "ensemble", "laplace")}
    tasks = [json.loads(p.read_text()) for p in sorted((out / "tasks").glob("*.json"))]
    assert len(tasks) == 6
    for task in tasks:
        assert len(task["probs"]) == 40  # a quarter of 160 questions held out
        assert all(abs(sum(p) - 1) < 1e-5 for p in task["probs"])
        assert task["device"] == "cpu"
    # the tiny models learned something: above chance (1/4) on held-out questions
    for row in rows:
        assert float(row["accuracy"]) > 0.4, row
        assert 0 <= float(row["ece"]) <= 1 and float(row["nll"]) > 0
    for name in ("uq_metrics.md", "metrics_by_method.png", "reliability.png"):
        assert (out / name).stat().st_size > 0
    # the run ends with its metrics table on the console, as the other pipelines do
    console = "\n".join(quiet_lines(sub.run_dir, sub.run_id))
    assert "UQ: 6 tasks in" in console and f"Results: {out}" in console
    for row in rows:
        assert re.search(rf"│ {row['model']} +│ {row['method']} +│ 1 +│ "
                         rf"{float(row['accuracy']):.3f} ± ", console), console
