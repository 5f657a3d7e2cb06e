"""From a workflow's `deployment:` to a class, with errors that name the candidates."""

from __future__ import annotations

import inspect
from typing import Any

from hpcray import plugins
from hpcray.errors import SpecError
from hpcray.runtime.placement import bundle
from hpcray.runtime.targets import import_module
from hpcray.spec.checks import unknown_deployment


def registry() -> dict[str, str]:
    """Short deployment names -> "module:Class": the installed `hpcray.deployments` plug-ins."""
    return plugins.names(plugins.DEPLOYMENTS)


def target_of(deployment: str) -> str:
    """`noop` -> `hpcray.deployments.noop:Noop`; `pkg.mod:Class` stays as it is."""
    if ":" in deployment:
        return deployment
    known = registry()
    if deployment not in known:
        raise SpecError(unknown_deployment(deployment, known))
    return known[deployment]


def load_class(target: str) -> type:
    module_name, _, attr = target.partition(":")
    try:
        module = import_module(module_name)
    except ImportError as exc:
        raise SpecError(f"cannot import {module_name!r} for deployment {target!r}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = [n for n, v in vars(module).items() if inspect.isclass(v)
                      and v.__module__ == module.__name__ and not n.startswith("_")]
            raise SpecError(f"{module_name!r} has no class {attr!r}; classes there: "
                            f"{', '.join(public) or 'none'}")
        obj = getattr(obj, part)
    if not inspect.isclass(obj):
        raise SpecError(f"{target!r} is not a class")
    return obj


def check_args(cls: type, args: dict[str, Any], service: str) -> None:
    """The constructor must accept these arguments: checked before anything is deployed."""
    try:
        inspect.signature(cls).bind(**args)
    except TypeError as exc:
        params = [p for p in inspect.signature(cls).parameters if p != "self"]
        raise SpecError(f"service {service!r}: {cls.__name__} does not accept args {args!r} "
                        f"({exc}); its parameters: {', '.join(params) or 'none'}") from None


def replica_bundles(spec: Any) -> tuple[list[dict[str, float]], str] | None:
    """Placement-group bundles of one replica whose class spreads it over several GPUs
    (`gpu_workers(args)` > 1, e.g. vLLM's tensor/pipeline-parallel workers): the replica's own
    actor (its CPUs), then one bundle per GPU. PACK puts them on as few nodes as hold them,
    across nodes when one is not enough. None: one actor holds the whole replica, and so
    does a replica given no GPUs (a CPU engine's workers are processes of its own node)."""
    if not spec.replicas or spec.deployment is None:
        return None
    workers = getattr(load_class(target_of(spec.deployment)), "gpu_workers", None)
    count = workers(spec.args) if callable(workers) else 0
    if not count or not spec.resources.gpus:
        return None
    if spec.resources.gpus != count:
        raise SpecError(f"service {spec.name!r}: its engine runs {count} GPU workers (tensor x "
                        f"pipeline parallel size); give it resources.gpus: {count} (it has "
                        f"{spec.resources.gpus:g})")
    own = bundle(spec.resources.model_copy(update={"gpus": 0}))
    return [own] + [{"GPU": 1.0}] * count, "PACK"

