"""NOOP service: answers at once. The paper's RT/BT experiments measure overheads with it."""

from __future__ import annotations

from typing import Any


class Noop:
    """Every method returns immediately; `echo` returns its payload."""

    def __init__(self, reply: Any = "ok") -> None:
        self.reply = reply

    def echo(self, payload: Any = None) -> Any:
        return payload

    def noop(self, payload: Any = None) -> Any:
        return self.reply

    def generate(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"text": self.reply}
