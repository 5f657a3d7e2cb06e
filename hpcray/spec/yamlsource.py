"""YAML loading that remembers where every value came from, so errors can name the line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hpcray.errors import SpecError

Loc = tuple[str | int, ...]


@dataclass
class SourcedYaml:
    """Plain Python data from a YAML document plus the line of each key or item (1-based)."""

    data: Any
    path: str
    lines: dict[Loc, int] = field(default_factory=dict)

    def line_of(self, loc: Loc) -> int | None:
        """Line of the deepest known prefix of ``loc`` (pydantic locations may go deeper)."""
        for end in range(len(loc), -1, -1):
            if tuple(loc[:end]) in self.lines:
                return self.lines[tuple(loc[:end])]
        return None


def _convert(node: yaml.Node, loc: Loc, lines: dict[Loc, int], path: str) -> Any:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _construct(key_node)
            if not isinstance(key, (str, int)):
                raise SpecError("mapping keys must be plain strings", path=path,
                                line=key_node.start_mark.line + 1)
            if key in out:
                raise SpecError(f"duplicate key '{key}'", path=path,
                                line=key_node.start_mark.line + 1)
            lines[loc + (key,)] = key_node.start_mark.line + 1
            out[key] = _convert(value_node, loc + (key,), lines, path)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, loc + (i,), lines, path) for i, item in enumerate(node.value)]
    return _construct(node)


_SEXAGESIMAL_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


def _construct(node: yaml.Node) -> Any:
    # YAML 1.1 reads a plain 25:00:00 as the base-60 integer 90000; a walltime is meant.
    if (isinstance(node, yaml.ScalarNode) and node.tag in _SEXAGESIMAL_TAGS
            and ":" in node.value):
        return node.value
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def load_yaml(text: str, path: str) -> SourcedYaml:
    """Parse one YAML document; syntax errors become a SpecError with the line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise SpecError(f"invalid YAML: {exc.problem or exc}", path=path, line=line) from None
    except yaml.reader.ReaderError as exc:  # a control character: found by fuzzing
        line = text.count("\n", 0, exc.position) + 1
        raise SpecError(f"invalid YAML: character #x{exc.character:04x} is not allowed",
                        path=path, line=line) from None
    if root is None:
        return SourcedYaml(data={}, path=path)
    lines: dict[Loc, int] = {}
    try:
        data = _convert(root, (), lines, path)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        raise SpecError(f"invalid YAML value: {exc.problem}", path=path,
                        line=mark.line + 1 if mark else None) from None
    return SourcedYaml(data=data, path=path, lines=lines)


def load_yaml_file(path: str | Path) -> SourcedYaml:
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise SpecError("file not found", path=str(p)) from None
    except UnicodeDecodeError:
        raise SpecError("not a UTF-8 text file", path=str(p)) from None
    return load_yaml(text, str(p))
