"""Workflow file -> Workflow, with errors that name the file, line and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from hpcray import plugins
from hpcray.errors import SpecError
from hpcray.spec.checks import check_deployment_names, missing_paths
from hpcray.spec.models import Workflow
from hpcray.spec.yamlsource import SourcedYaml, load_yaml, load_yaml_file


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model that owns ``loc[:-1]`` (for 'unknown key' messages)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        current = _model_in(annotation)
        if current is None:
            return []
    fields = getattr(current, "model_fields", {})
    names = []
    for name, info in fields.items():
        names.append(name)
        choices = getattr(info.validation_alias, "choices", None) or []
        names.extend(c for c in choices if isinstance(c, str) and c != name)
    return names


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def validation_to_spec_error(exc: ValidationError, source: SourcedYaml,
                             model: type[BaseModel], prefix: tuple[Any, ...] = ()) -> SpecError:
    """The first validation error as a one-line SpecError. `prefix` is where `model`'s data
    sits in the file (driver.args for a pipeline's options)."""
    err = exc.errors()[0]
    inner = tuple(err["loc"])
    loc = prefix + inner
    dotted = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, inner)
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        message = f"unknown key '{loc[-1]}'{hint}"
    elif err["type"] == "missing":
        message = "required field is missing"
    else:
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] not in ("value_error", "assertion_error") and "input" in err:
            message += f" (got {err['input']!r})"
    line = source.line_of(loc)
    if err["type"] == "missing":
        line = source.line_of(loc[:-1])
    more = len(exc.errors()) - 1
    if more:
        message += f" (+{more} more error{'s' if more > 1 else ''})"
    return SpecError(message, path=source.path, line=line, field=dotted)


def parse_workflow(source: SourcedYaml) -> Workflow:
    if not isinstance(source.data, dict):
        raise SpecError("a workflow file must be a mapping of sections", path=source.path, line=1)
    try:
        workflow = Workflow.model_validate(source.data)
    except ValidationError as exc:
        raise validation_to_spec_error(exc, source, Workflow) from None
    _check_driver_options(workflow, source)
    check_deployment_names(workflow, source)
    missing_paths(workflow, source)  # warnings: compute nodes may mount what this host lacks
    return workflow


def _check_driver_options(workflow: Workflow, source: SourcedYaml) -> None:
    """A driver that declares its options model (an hpcray.driver_options plug-in) has its
    args checked now, with their line, not in the job after the queue wait."""
    driver = workflow.driver
    model = plugins.find(plugins.DRIVER_OPTIONS, driver.function) \
        if driver and driver.function else None
    if model is None or driver is None:
        return
    try:
        model.model_validate(driver.args)
    except ValidationError as exc:
        raise validation_to_spec_error(exc, source, model, ("driver", "args")) from None


def load_workflow(path: str | Path) -> Workflow:
    """Read and validate a workflow file."""
    return parse_workflow(load_yaml_file(path))


def loads_workflow(text: str, path: str = "<string>") -> Workflow:
    return parse_workflow(load_yaml(text, path))
