"""What a workflow file can get wrong beyond its schema, found before the queue wait: a
deployment name no package provides, a `module:attr` that cannot be imported from the
workflow's directory, a model directory missing on this host. Each is reported with the
file and line of its field.

Two kinds of check, run at two moments. At load (`parse_workflow`), what needs no import:
deployment names (entry points, read from package metadata) and paths in a deployment's
args. On the submitting path only (`hpcray submit`, `script`, `validate`), the targets:
`hpcray up` inside the job loads the workflow again and must not import user code twice.

The targets are looked up with importlib.util.find_spec and never imported: a module of the
workflow may need what only compute nodes have (a GPU build of torch, vLLM), and importing it
at submission would be slow, could fail for reasons the job would not meet, and would run
user code on the login node. Whether the module defines the name is read from its source
(`ast`): its top-level classes, functions, assignments and imports. find_spec does import a
dotted module's parent packages; one that fails to import here is a warning, not an error
(the job's host may have what it needs)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

from hpcray import plugins
from hpcray.errors import SpecError
from hpcray.spec.containers import ContainerSpec
from hpcray.spec.models import Workflow
from hpcray.spec.yamlsource import Loc, SourcedYaml

log = logging.getLogger("hpcray.spec")

# Deployment arguments that name a file or directory the replica's constructor opens.
PATH_ARG_NAMES = ("model_path", "model_dir", "adapters")
PATH_ARG_SUFFIX = "_path"
_TRY_NODES = tuple(t for t in (ast.Try, getattr(ast, "TryStar", None)) if t is not None)


def unknown_deployment(name: str, known: dict[str, str]) -> str:
    """The one wording of an unknown deployment name, at load and in the job."""
    return (f"unknown deployment {name!r}; built-in: {', '.join(sorted(known))}"
            " (or give an importable 'module:Class')")


def _error(message: str, source: SourcedYaml | None, loc: Loc) -> SpecError:
    return SpecError(message, path=source.path if source else None,
                     line=source.line_of(loc) if source else None,
                     field=".".join(str(p) for p in loc))


def _where(source: SourcedYaml | None, loc: Loc) -> str:
    """`file:line: field` for a warning, as a SpecError would name it."""
    return str(_error("", source, loc)).rstrip(": ")


def check_deployment_names(workflow: Workflow, source: SourcedYaml) -> None:
    """A short deployment name (no ':') must be an installed `hpcray.deployments` plug-in."""
    known = plugins.names(plugins.DEPLOYMENTS)
    for index, service in enumerate(workflow.services):
        name = service.deployment
        if name is not None and ":" not in name and name not in known:
            raise _error(unknown_deployment(name, known), source,
                         ("services", index, "deployment"))


def _path_values(value: Any, loc: Loc) -> Iterator[tuple[Loc, str]]:
    """Every string in an argument's value (a path, or a dict/list of them: `adapters`)."""
    if isinstance(value, str):
        yield loc, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _path_values(item, loc + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _path_values(item, loc + (index,))


def missing_paths(workflow: Workflow, source: SourcedYaml | None) -> list[str]:
    """Warnings (also logged) for absolute paths in deployment args that do not exist on this
    host. Not errors: a model directory may be on a filesystem only compute nodes mount.
    Relative values are not checked: a replica resolves them against its own working
    directory (the run directory in a batch job), not the workflow's, and a bare name may be
    a model hub id."""
    warnings = []
    for index, service in enumerate(workflow.services):
        for name, value in service.args.items():
            if not (name in PATH_ARG_NAMES or name.endswith(PATH_ARG_SUFFIX)):
                continue
            for loc, text in _path_values(value, ("services", index, "args", name)):
                if os.path.isabs(text) and not os.path.exists(text):
                    message = (f"{_where(source, loc)}: {text} does not exist on this host; "
                               "the replica's constructor fails unless the compute nodes "
                               "have it")
                    log.warning("%s", message)
                    warnings.append(message)
    return warnings


def targets(workflow: Workflow) -> Iterator[tuple[Loc, str]]:
    """Every `module:attr` the job imports: `module:Class` deployments, the driver's
    function, stage functions and classes."""
    for index, service in enumerate(workflow.services):
        if service.deployment and ":" in service.deployment:
            yield ("services", index, "deployment"), service.deployment
    if workflow.driver and workflow.driver.function:
        yield ("driver", "function"), workflow.driver.function
    for index, stage in enumerate(workflow.stages):
        if stage.function:
            yield ("stages", index, "function"), stage.function


def check_targets(workflow: Workflow, source: SourcedYaml | None, search_dirs: list[Path],
                  elsewhere: str | None = None) -> list[str]:
    """Each target's module must be findable with `search_dirs` (the workflow's directory and
    the driver's cwd, which the job puts on PYTHONPATH) in front of sys.path, and must define
    the name. A SpecError with the field's line, or, when `elsewhere` says why the job's
    Python may see other modules than this one, a warning. Returns the warnings (also
    logged)."""
    warnings = []
    for loc, target in targets(workflow):
        problem, certain = _target_problem(target, search_dirs)
        if problem is None:
            continue
        if certain and elsewhere is None:
            raise _error(problem, source, loc)
        why = f" ({elsewhere})" if certain and elsewhere else ""
        message = f"{_where(source, loc)}: {problem}{why}"
        log.warning("%s", message)
        warnings.append(message)
    return warnings


def _target_problem(target: str, search_dirs: list[Path]) -> tuple[str | None, bool]:
    """(what is wrong with `module:attr`, whether that is certain); (None, _) when fine."""
    module_name, _, attr = target.partition(":")
    where = ", ".join(str(d) for d in search_dirs)
    found = _find_spec(module_name, search_dirs)
    if isinstance(found, str):
        return found, False
    if found is None:
        return (f"cannot import {module_name!r} for {target!r}: no such module in {where} "
                "or the installed packages"), True
    defined = _top_level_names(found)
    first = attr.split(".")[0]
    if defined is None or first in defined:
        return None, True
    listed = ", ".join(sorted(n for n in defined if not n.startswith("_"))) or "nothing"
    # certain only when the name appears nowhere in the source: a module may bind it in ways
    # this reading does not follow (a loop variable, `globals()[...]`, a walrus)
    mentioned = re.search(rf"\b{re.escape(first)}\b", Path(found.origin).read_text(
        errors="replace")) is not None
    return (f"module {module_name!r} ({found.origin}) has no {first!r}; it defines: {listed}",
            not mentioned)


def _find_spec(module_name: str, search_dirs: list[Path]):
    """The module's spec, None when it does not exist, or a warning's text when a parent
    package fails to import here. sys.path is restored afterwards, and the workflow's own
    packages that find_spec imported are forgotten: a later workflow in this process (a
    notebook submitting several) may have its own package of that name."""
    with _SYS_PATH:  # two threads submitting at once must not see each other's sys.path
        return _find_spec_locked(module_name, search_dirs)


_SYS_PATH = threading.Lock()


def _find_spec_locked(module_name: str, search_dirs: list[Path]):
    saved_path, saved_modules = list(sys.path), set(sys.modules)
    sys.path[:0] = [str(d) for d in search_dirs]
    importlib.invalidate_caches()
    try:
        return importlib.util.find_spec(module_name)
    except ModuleNotFoundError as exc:
        parents = module_name.split(".")
        if exc.name in {".".join(parents[:n]) for n in range(1, len(parents))}:
            return None
        return f"cannot check {module_name!r} on this host: {type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - a parent package's own error, reported as such
        return f"cannot check {module_name!r} on this host: {type(exc).__name__}: {exc}"
    finally:
        sys.path[:] = saved_path
        roots = tuple(os.path.realpath(d) + os.sep for d in search_dirs)
        for name in set(sys.modules) - saved_modules:
            origin = getattr(sys.modules[name], "__file__", None) or ""
            # a package already loaded (hpcray's own) keeps its new submodules
            if name.split(".")[0] not in saved_modules and \
                    os.path.realpath(origin).startswith(roots):
                del sys.modules[name]


def _top_level_names(spec) -> set[str] | None:
    """Names a module's source defines at top level; None when that cannot be known without
    running it (not Python source, `from x import *`, a module `__getattr__`, a package whose
    submodules may be reached as attributes)."""
    origin = spec.origin
    if not origin or not origin.endswith(".py") or not os.path.isfile(origin):
        return None
    if spec.submodule_search_locations:
        return None
    try:
        tree = ast.parse(Path(origin).read_bytes(), origin)
    except (SyntaxError, ValueError, OSError):
        return None
    names: set[str] = set()
    if not _collect(tree.body, names):
        return None
    return names


def _collect(body: list[ast.stmt], names: set[str]) -> bool:
    """Adds the names `body` binds; False when a star import or `__getattr__` makes the set
    open-ended. Blocks that run at import (if, try, with) count as top level."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == "__getattr__":
                return False
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    return False
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.If, ast.With, ast.AsyncWith, ast.For, ast.While)):
            if not _collect(node.body + getattr(node, "orelse", []), names):
                return False
        elif isinstance(node, _TRY_NODES):
            block = cast(ast.Try, node)  # ast.TryStar (3.11+) has the same fields
            blocks = block.body + block.orelse + block.finalbody
            blocks += [stmt for handler in block.handlers for stmt in handler.body]
            if not _collect(blocks, names):
                return False
    return True


def containers(workflow: Workflow) -> Iterator[tuple[Loc, ContainerSpec]]:
    """Every `container:` block with its field path: the allocation's (the node agents),
    each stage's and each program service's."""
    if workflow.allocation.container is not None:
        yield ("allocation", "container"), workflow.allocation.container
    for index, stage in enumerate(workflow.stages):
        if stage.container is not None:
            yield ("stages", index, "container"), stage.container
    for index, service in enumerate(workflow.services):
        spec = getattr(service, "container", None)
        if spec is not None:
            yield ("services", index, "container"), spec


def check_containers(workflow: Workflow, source: SourcedYaml | None,
                     problem: Callable[[ContainerSpec], str | None]) -> None:
    """A SpecError naming `<path>.container.image` (file and line) for the first container
    whose image `problem` says cannot start (runtime/containers.py's check_image, passed in:
    the spec layer does not look at the host)."""
    for loc, spec in containers(workflow):
        why = problem(spec)
        if why is not None:
            raise _error(f"image {spec.image!r} cannot be used: {why}", source,
                         loc + ("image",))
