"""What `hpcray submit --wait` prints of a run's output once it ends: the driver's own lines
(its summary among them), and of Ray's, Serve's, Tune's, vLLM's and the workers' lines only
warnings and errors, each once, with the command that shows its full text. Everything stays
in the run directory; `-v` prints logs/driver.log whole instead."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from hpcray.api import output_lines
from hpcray.bootstrap.output import OutputLine

MAX_MESSAGE = 240


def pointer(line: OutputLine, run_id: str) -> str:
    """Where the full text of a held-back line is: its service's logs, else Ray's."""
    where = f"--service {line.service}" if line.service else "--ray"
    return f"hpcray logs {run_id} {where}"


def _echo(line: OutputLine, run_id: str) -> str:
    who = f"service {line.service}" if line.service else line.who
    message = line.message.strip()
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + "..."
    return f"[{who}] {message}  (full text: {pointer(line, run_id)})"


def quiet_lines(run_dir: Path, run_id: str) -> Iterator[str]:
    """The driver's output (logs/driver.log) as the quiet console shows it, then the warnings
    not shown already of `hpcray up`'s output (job.out: hpcray's own) and of the services'
    replicas (Ray's session logs kept at teardown: `hpcray up` does not take its workers'
    output, log_to_driver=False, so a workflow's services are heard only there)."""
    shown: set[tuple[str | None, str]] = set()
    last_held, blanks = False, 0  # blank lines beside held-back ones (Tune's) go with them
    for line in output_lines(run_dir, "driver"):
        if not line.held and not line.message.strip():
            blanks += 1
            continue
        if not line.held:
            if not last_held:
                yield from [""] * blanks
            blanks, last_held = 0, False
            shown.add(line.key())
            yield line.text
            continue
        blanks, last_held = 0, True
        if line.warns and line.key() not in shown:
            shown.add(line.key())
            yield _echo(line, run_id)
    for which in ("job", "services"):
        for line in output_lines(run_dir, which):
            if line.warns and line.key() not in shown:
                shown.add(line.key())
                yield _echo(line, run_id) if line.held else line.text
