"""Which part of a run wrote a line of its output (logs/driver.log, job.out, as driver.py
and `hpcray up` write them): the driver itself, or Ray, Serve, Tune, vLLM, transformers and
the workers (Ray forwards a worker's lines to the driver that started it, as `(name pid=N)
text`). The console of `hpcray submit --wait` shows the driver's own lines and holds the
others back unless they warn or fail; `hpcray logs` shows what it held back. One place
knows these formats, so both agree."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from hpcray.services.names import APP_PREFIX

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Ray's prefix on a worker's forwarded line: "(ServeReplica:app:deployment pid=12, ip=...)";
# its daemons' have no pid: "(raylet)", "(autoscaler +2s)", "(raylet, ip=10.0.0.2)"
FORWARDED = re.compile(r"^\((?P<who>[^()]*? pid=\d+|(?:raylet|gcs_server|autoscaler|scheduler|"
                       r"monitor)(?: \+[\d.]+[smh])?)(?:, ip=[^)]*)?\) ?(?P<rest>.*)$")
PID = re.compile(r" pid=\d+$")
REPEATED = re.compile(r"\s*\[repeated \d+x across cluster\].*$")
# a record of a library's logger, in that library's format
RECORDS = (
    # Serve: "INFO 2026-12-01 22:04:22,248 serve 22939 -- Started Serve"; a replica's record
    # made in a request carries more fields (request id, route) before the "--"
    ("Serve", re.compile(r"^(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL) \d{4}-\d\d-\d\d "
                         r"\d\d:\d\d:\d\d,\d+ (?:\S+ ){2,6}-- ")),
    # Ray: "2026-12-01 22:03:16,919\tINFO worker.py:1 -- Connecting to ..."
    ("Ray", re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\t(?P<level>[A-Z]+) \S+:\d+ -- ")),
    # vLLM: "INFO 12-01 15:37:21 [model.py:733] Resolved architecture"
    ("vLLM", re.compile(r"^(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL) \d\d-\d\d "
                        r"\d\d:\d\d:\d\d(?:\.\d+)? \[[^\]]*\] ")),
    # Optuna (Tune's searcher): "[I 2026-12-01 22:03:30,520] A new study created"
    ("Optuna", re.compile(r"^\[(?P<level>[DIWEC]) \d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\] ")),
    # Ray's C++ core in a process: "[2026-12-02 08:32:42,806 E 31710 31710] logging.cc:474: "
    ("Ray", re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (?P<level>[DIWEF]) \d+ \d+\] "
                       r"\S+:\d+: ")),
)
# a stack dump (Abseil's, on a fatal signal: Ray's core prints it, then logs it again line
# by line): its first line is the news, its frames are not
STACK_FRAME = re.compile(r"^\s*(PC: )?@ +0x")
CRASH = re.compile(r"^(\*\*\* SIG\w+ received at time=|\s*(PC: )?@ +0x)")
LETTERS = {"D": "DEBUG", "I": "INFO", "W": "WARNING", "E": "ERROR", "C": "CRITICAL",
           "F": "CRITICAL"}
# Tune's own prints (ray/tune/experimental/output.py), and progress bars (tqdm)
TUNE = re.compile(r"^(View detailed results here: |To visualize your results with TensorBoard|"
                  r"Trial status: |Current time: .*Running for: |Logical resource usage: |"
                  r"Trial \S+ (started with configuration|completed after|finished iteration|"
                  r"errored after))")
TUNE_BOX = re.compile(r"^│ (Configuration for experiment|Trial \S+ (config|result))")
BAR = re.compile(r"\d+%\|.*\|\s*\d+(?:\.\d+)?[kMG]?/\d+(?:\.\d+)?[kMG]? \[")
WARNS = ("WARNING", "ERROR", "CRITICAL")
WORD = re.compile(r"\b(?P<level>WARNING|WARN|ERROR|CRITICAL|FATAL)\b")
RAISED = re.compile(r"(^|: |\s)[\w.]*(Error|Exception|Warning)(\([^)]*\))?: ")


@dataclass(frozen=True)
class OutputLine:
    """One line of a run's output and who wrote it."""

    text: str                 # as written (colours and all)
    who: str | None = None    # None: the driver itself; else Ray's name for the writer
    service: str | None = None  # the service whose replica wrote it
    level: str = "INFO"
    message: str = ""         # without colours, the forwarding prefix and Ray's repeat note

    @property
    def held(self) -> bool:
        """Not the driver's own: kept out of the quiet console."""
        return self.who is not None

    @property
    def warns(self) -> bool:
        return self.level in WARNS

    def key(self) -> tuple[str | None, str]:
        """Equal for the same warning repeated (times, pids and counts differ)."""
        return self.service or self.who, re.sub(r"\d+", "0", _unstamped(self.message))


def _unstamped(text: str) -> str:
    for _, pattern in RECORDS:
        found = pattern.match(text)
        if found:
            return text[found.end():]
    return text


def _level(text: str) -> tuple[str | None, str]:
    """(the library that logged it or None, its level) of a line without Ray's prefix."""
    for library, pattern in RECORDS:
        found = pattern.match(text)
        if found:
            level = found["level"]
            if STACK_FRAME.match(text[found.end():]):
                return library, "INFO"
            return library, {"SUCC": "INFO", "WARN": "WARNING"}.get(
                level, LETTERS.get(level, level))
    word = WORD.search(text)
    if word:
        return None, {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(word["level"], word["level"])
    raised = RAISED.search(text)
    if raised:
        return None, "WARNING" if raised[2] == "Warning" else "ERROR"
    return None, "INFO"


def service_of(who: str) -> str | None:
    """The hpcray service a Serve replica belongs to ("ServeReplica:hpcray-NAME:NAME")."""
    parts = who.split(":")
    if len(parts) == 3 and parts[0] == "ServeReplica" and parts[1].startswith(APP_PREFIX):
        return parts[1][len(APP_PREFIX):]
    return None


def classify(lines: Iterable[str]) -> list[OutputLine]:
    """Each line with who wrote it; Tune's boxed tables are recognised by their first row."""
    lines = list(lines)
    out: list[OutputLine] = []
    in_box = False
    for i, text in enumerate(lines):
        plain = ANSI.sub("", text).rstrip("\r\n")
        if not in_box and plain.startswith("╭") and i + 1 < len(lines) \
                and TUNE_BOX.match(ANSI.sub("", lines[i + 1])):
            in_box = True
        if in_box:
            out.append(OutputLine(text, "Tune", message=plain))
            in_box = not plain.startswith("╰")
            continue
        out.append(_one(text, plain))
    return out


def _one(text: str, plain: str) -> OutputLine:
    forwarded = FORWARDED.match(plain)
    if forwarded:
        who = PID.sub("", forwarded["who"])
        rest = REPEATED.sub("", forwarded["rest"])
        inner = FORWARDED.match(rest)  # vLLM's engine inside a replica: "(EngineCore pid=..)"
        library, level = _level(inner["rest"] if inner else rest)
        return OutputLine(text, who, service_of(who), level, rest)
    library, level = _level(plain)
    if library is not None:
        return OutputLine(text, library, None, level, plain)
    if TUNE.match(plain):
        return OutputLine(text, "Tune", None, "INFO", plain)
    if CRASH.match(plain):  # logged again by Ray's core, with its level
        return OutputLine(text, "Ray", None, "INFO", plain)
    if BAR.search(plain):
        return OutputLine(text, "progress bar", None, "INFO", plain)
    return OutputLine(text, None, None, level, plain)


def held_back(lines: Iterable[str]) -> list[OutputLine]:
    """The lines the quiet console does not show as they are (see `classify`)."""
    return [line for line in classify(lines) if line.held]
