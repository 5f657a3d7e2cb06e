"""Walltime strings as schedulers accept them, normalised to seconds."""

from __future__ import annotations

import re

_CLOCK = re.compile(r"^(?:(\d+)-)?(\d+):(\d{1,2})(?::(\d{1,2}))?$")
_UNIT = re.compile(r"^(\d+)\s*([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

ACCEPTED = "HH:MM:SS, D-HH:MM:SS, HH:MM, a number of minutes, or 90s/30m/2h/1d"


def parse_walltime(value: str | int) -> int:
    """Seconds for a walltime; raises ValueError naming the accepted forms."""
    if isinstance(value, bool):
        raise ValueError(f"invalid walltime {value!r}; use {ACCEPTED}")
    if isinstance(value, int):
        seconds = value * 60
    else:
        text = str(value).strip()
        if text.isdigit():
            seconds = int(text) * 60
        elif m := _UNIT.match(text):
            seconds = int(m.group(1)) * _UNITS[m.group(2)]
        elif m := _CLOCK.match(text):
            days, a, b, c = m.groups()
            if c is None:  # HH:MM (or D-HH:MM)
                hours, minutes, secs = int(a), int(b), 0
            else:
                hours, minutes, secs = int(a), int(b), int(c)
            if minutes >= 60 or secs >= 60:
                raise ValueError(f"invalid walltime {value!r}: minutes and seconds must be < 60")
            seconds = int(days or 0) * 86400 + hours * 3600 + minutes * 60 + secs
        else:
            raise ValueError(f"invalid walltime {value!r}; use {ACCEPTED}")
    if seconds <= 0:
        raise ValueError(f"invalid walltime {value!r}: must be positive")
    return seconds


def hhmmss(seconds: int) -> str:
    """PBS and Slurm clock form; hours may exceed 24 (both accept it)."""
    h, rest = divmod(int(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}:{s:02d}"


def lsf_minutes(seconds: int) -> str:
    """LSF's ``-W [hours:]minutes``; rounds up so the job never gets less than asked."""
    minutes = -(-int(seconds) // 60)
    h, m = divmod(minutes, 60)
    return f"{h}:{m:02d}"
