"""From a stage's `each:` to the list of task items."""

from __future__ import annotations

import glob as globbing
import itertools
import re
from pathlib import Path
from typing import Any

from hpcray.spec.stages import FanOut


def expand(each: FanOut | None, base: Path) -> list[Any]:
    """[None] for a single task; otherwise one item per task, in a stable order."""
    if each is None:
        return [None]
    if each.items is not None:
        return list(each.items)
    if each.glob is not None:
        pattern = each.glob if Path(each.glob).is_absolute() else str(base / each.glob)
        return sorted(globbing.glob(pattern, recursive=True))
    assert each.grid is not None
    keys = list(each.grid)
    return [dict(zip(keys, values, strict=True))
            for values in itertools.product(*(each.grid[k] for k in keys))]


def fill(command: list[str], item: Any, values: dict[str, Any]) -> list[str]:
    """The command of one task: {item}, {index}, {stage}, {run_dir} and grid keys filled in.
    Other braces stay as they are (Python, awk or JSON in an argument), and each value stays
    one argument: no shell is involved."""
    fields = dict(values)
    if isinstance(item, dict):
        fields.update({k: v for k, v in item.items() if isinstance(k, str)})
    fields["item"] = item
    pattern = re.compile(r"\{(" + "|".join(re.escape(k) for k in fields) + r")\}")
    return [pattern.sub(lambda m: str(fields[m.group(1)]), arg) for arg in command]
