"""A result that carries its server's own timing, for the RT split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ServerTimed:
    """What a service method returns when its server reported how long the model took (a
    program service speaking Ollama's API): the replica records that as the inference part
    of the round trip and the rest of the call as service time, instead of timing the whole
    call as inference. Callers receive `value` only."""

    value: Any
    inference_s: float
