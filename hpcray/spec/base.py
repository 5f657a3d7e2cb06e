"""The base of every workflow and site model, apart from models.py so that a section's module
(containers.py) can import it without importing the whole workflow."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

# a variable a section sets or names (services' env and api_key_env, containers' env)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def single_lines(values: list[str], what: str) -> list[str]:
    """Each value one argv element of a command line: a newline or NUL is refused."""
    for value in values:
        if any(c in value for c in "\n\r\x00"):
            raise ValueError(f"{what} {value!r} contains a newline")
    return values


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, populate_by_name=True)
