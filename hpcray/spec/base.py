"""The base of every workflow and site model, apart from models.py so that a section's module
(containers.py) can import it without importing the whole workflow."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, populate_by_name=True)
