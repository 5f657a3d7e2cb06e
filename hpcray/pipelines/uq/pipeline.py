"""The uncertainty quantification pipeline as a workflow driver (`function:
hpcray.pipelines.uq:run` in examples/uq.yaml), paper section II-C:

QA data (a user's JSONL / MMLU CSV / PubMedQA JSON, or a synthetic set) -> per seed a
train/test split -> models x seeds x methods as Ray tasks, packed onto GPUs by memory (or
onto CPUs) -> metrics per task, aggregated over seeds -> table (CSV, Markdown) and plots,
written to <run>/uq/.

Every check that can fail (QA rows, model directories, memory needs against the GPUs) runs
before the first task starts.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

import hpcray
from hpcray.errors import SpecError
from hpcray.pipelines.uq.data import QAItem, read_qa, split
from hpcray.pipelines.uq.methods import METHODS, Method, MethodOptions, check_causal_lm
from hpcray.pipelines.uq.packing import (
    Inventory,
    ModelShape,
    UQTask,
    check_plan,
    estimate_memory_gb,
    longest_first,
    method_cost,
    ray_options,
)
from hpcray.spec.models import StrictModel

log = logging.getLogger("hpcray.uq")
DEFAULT_METHODS: tuple[Method, ...] = ("lora", "ensemble", "laplace")


class ModelEntry(StrictModel):
    name: str
    path: str | None = Field(None, description="A local causal-LM checkpoint directory; none "
                             "with `tiny`: one is built in the run dir.")
    tiny: Literal["llama", "mistral"] | None = Field(
        None, description="Build a tiny random-weight model of this architecture (demo, tests).")
    memory_gb: float | None = Field(None, gt=0, description="GPU memory a task of this model "
                                    "needs; default: estimated from config.json.")


class DataOptions(StrictModel):
    qa: str | None = Field(None, description="QA file (.jsonl, MMLU .csv, PubMedQA .json); "
                           "none: a synthetic set.")
    synthetic_questions: int = Field(240, ge=20)
    test_share: float = Field(0.25, gt=0, lt=1)
    limit: int | None = Field(None, ge=2, description="Use only the first N questions.")


class UQConfig(StrictModel):
    models: list[ModelEntry] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1)
    methods: list[Method] = Field(
        default_factory=lambda: list(DEFAULT_METHODS), min_length=1)
    data: DataOptions = Field(default_factory=DataOptions)
    training: MethodOptionsModel = Field(default_factory=lambda: MethodOptionsModel())
    gpu_memory_gb: float | None = Field(None, gt=0, description="Memory of each GPU of the "
                                        "allocation; default: the site profile's.")
    cpus_per_task: float = Field(1.0, gt=0)
    threads: int = Field(1, ge=1, description="torch threads per task (CPU mode).")
    output: str | None = Field(None, description="Default <run>/uq.")


class MethodOptionsModel(StrictModel):
    epochs: int = Field(4, ge=1)
    batch: int = Field(8, ge=1)
    lr: float = Field(1e-2, gt=0)
    lora_rank: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    ensemble: int = Field(3, ge=2)
    samples: int = Field(8, ge=1)
    prior_precision: Annotated[float, Field(gt=0)] | Literal["marglik"] = Field(
        100.0, description="Laplace's prior precision, or 'marglik': chosen per task by the "
                           "marginal likelihood.")
    curvature: Literal["ggn", "empirical"] = Field(
        "ggn", description="Laplace's curvature: 'ggn' (the Fisher from answers drawn from the "
                           "model, per question) or 'empirical' (from the true answers).")
    predictive: Literal["glm", "sample"] = Field(
        "glm", description="Laplace's predictive: 'glm' (the network linearised at the "
                           "adapter) or 'sample' (adapters drawn from the posterior).")
    save_adapters: bool = Field(
        False, description="Save every trained adapter under <output>/adapters/<task>/ "
                           "(peft's format), for a model service to serve beside the base model.")


UQConfig.model_rebuild()


def _shape(config: dict[str, Any]) -> ModelShape:
    hidden = int(config.get("hidden_size") or config.get("n_embd") or 0)
    layers = int(config.get("num_hidden_layers") or config.get("n_layer") or 0)
    vocab = int(config.get("vocab_size") or 0)
    inner = int(config.get("intermediate_size") or 4 * hidden)
    # attention (4 h^2) + gated MLP (3 h x inner) per layer, embeddings and output layer
    params = layers * (4 * hidden * hidden + 3 * hidden * inner) + 2 * vocab * hidden
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    return ModelShape(params, hidden, layers, dtype if dtype != "float32" else "bfloat16")


def plan_tasks(config: UQConfig, model_dirs: dict[str, str]) -> list[UQTask]:
    tasks = []
    opts = config.training
    for entry in config.models:
        model_config = check_causal_lm(model_dirs[entry.name])
        memory = entry.memory_gb or estimate_memory_gb(
            _shape(model_config), lora_rank=opts.lora_rank, batch=opts.batch)
        for seed in config.seeds:
            for method in config.methods:
                # an ensemble trains its adapters one after another: one adapter's memory
                tasks.append(UQTask(entry.name, seed, method, memory,
                                    method_cost(method, opts.ensemble)))
    return longest_first(tasks)


def inventory_of_cluster(gpu_memory_gb: float | None) -> Inventory | None:
    """The allocation's GPUs per node (from Ray), or None: CPU mode."""
    import ray

    per_node = {}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        gpus = int(node.get("Resources", {}).get("GPU", 0))
        if gpus:
            per_node[node["NodeManagerAddress"] + ":" + node["NodeID"][:8]] = gpus
    if not per_node:
        return None
    gpu_memory_gb = gpu_memory_gb or _site_gpu_memory()
    if gpu_memory_gb is None:
        raise SpecError("driver.args.gpu_memory_gb: this allocation has GPUs and its site "
                        "profile does not say how much memory each has; set it (e.g. 40 for "
                        "A100 40 GB)")
    return Inventory(per_node, gpu_memory_gb)


def _site_gpu_memory() -> float | None:
    """gpu_memory_gb of the run's site profile (polaris: 40, frontier: 64 per GCD, ...)."""
    site = hpcray.context().site  # None outside a run: the option must be given
    return site.gpu_memory_gb if site is not None else None


def _task(model_dir: str, method: str, seed: int, train: list[QAItem], test: list[QAItem],
          options: dict[str, Any], threads: int, save_to: str | None = None) -> dict[str, Any]:
    import torch

    from hpcray.pipelines.uq.methods import run_method

    torch.set_num_threads(threads)
    started = time.time()
    result = run_method(model_dir, method, seed, train, test, MethodOptions(**options),
                        save_to=save_to)
    import ray

    result.update(started=started, ended=time.time(),
                  gpu_ids=[str(g) for g in ray.get_gpu_ids()],
                  node=hpcray.context().node
                  or ray.get_runtime_context().get_node_id())
    return result


def run(**kwargs: Any) -> dict[str, Any]:
    """The driver: everything in <run>/uq/; returns the summary table."""
    import ray

    from hpcray.pipelines.uq.report import print_summary, write_report

    config = UQConfig.model_validate(kwargs)
    run_dir = hpcray.context().run_dir or Path(".")
    out = Path(config.output) if config.output else run_dir / "uq"
    out.mkdir(parents=True, exist_ok=True)

    items = _load_items(config, out)
    model_dirs = _model_dirs(config, out, items)
    tasks = plan_tasks(config, model_dirs)
    if not ray.is_initialized():
        ray.init()
    inventory = inventory_of_cluster(config.gpu_memory_gb)
    if inventory is not None:
        check_plan(tasks, inventory)
    log.info("%d tasks (%d models x %d seeds x %d methods) on %s", len(tasks),
             len(config.models), len(config.seeds), len(config.methods),
             f"{inventory.total_gpus} GPUs of {inventory.gpu_memory_gb:g} GB"
             if inventory else "CPUs")
    splits = {seed: split(items, config.data.test_share, seed) for seed in config.seeds}
    remote = ray.remote(_task)
    refs = {}
    train_refs = {seed: (ray.put(tr), ray.put(te)) for seed, (tr, te) in splits.items()}
    options = config.training.model_dump()
    save = options.pop("save_adapters")
    for task in tasks:
        tr, te = train_refs[task.seed]
        opts = ray_options(task, inventory, config.cpus_per_task)
        save_to = str(out / "adapters" / f"{task.model}-seed{task.seed}-{task.method}") \
            if save else None
        refs[remote.options(**opts, max_retries=0).remote(
            model_dirs[task.model], task.method, task.seed, tr, te, options,
            config.threads, save_to)] = task
    results, started = [], time.time()
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        task = refs[ready[0]]
        result = ray.get(ready[0])  # a failing task fails the run, naming itself below
        result.update(model=task.model, memory_gb=task.memory_gb, key=task.key)
        results.append(result)
        path = out / "tasks" / f"{task.model}-seed{task.seed}-{task.method}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(result))
        hpcray.progress("uq tasks", len(results), len(tasks), task.key)
    makespan = time.time() - started
    summary = write_report(results, out, config.methods)
    summary["makespan_s"] = makespan
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print_summary(summary, out)
    return summary


def _load_items(config: UQConfig, out: Path) -> list[QAItem]:
    if config.data.qa:
        items = read_qa(config.data.qa)
    else:
        from hpcray.pipelines.uq.synthetic import write_qa

        items = read_qa(write_qa(out / "qa.jsonl", n=config.data.synthetic_questions))
    if config.data.limit:
        items = items[:config.data.limit]
    return items


def _model_dirs(config: UQConfig, out: Path, items: list[QAItem]) -> dict[str, str]:
    dirs = {}
    for i, entry in enumerate(config.models):
        if entry.path:
            dirs[entry.name] = entry.path
        elif entry.tiny:
            from hpcray.models.tiny import build_tiny_decoder

            text = [f"Question: {q.question}\nAnswer: " + " ".join(q.options) for q in items]
            dirs[entry.name] = str(build_tiny_decoder(out / "models" / entry.name, entry.tiny,
                                                      seed=i, extra_text=text))
        else:
            raise SpecError(f"driver.args.models[{i}] ({entry.name}): give `path` (a "
                            "checkpoint directory) or `tiny` (llama or mistral)")
    return dirs


__all__ = ["METHODS", "UQConfig", "run"]
