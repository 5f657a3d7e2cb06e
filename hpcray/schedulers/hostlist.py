"""Slurm/Flux hostlist syntax (``node[01-03,7],gpu-a``) and Slurm's ``2(x3),4`` counts."""

from __future__ import annotations

import re


def _split_top(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in hostlist {text!r}")
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth:
        raise ValueError(f"unbalanced '[' in hostlist {text!r}")
    parts.append("".join(current))
    return [p for p in (s.strip() for s in parts) if p]


def _expand_one(item: str) -> list[str]:
    m = re.search(r"\[([^\[\]]+)\]", item)
    if not m:
        return [item]
    prefix, suffix = item[: m.start()], item[m.end():]
    out: list[str] = []
    for rng in m.group(1).split(","):
        if "-" in rng:
            lo, hi = rng.split("-", 1)
            if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
                raise ValueError(f"bad range {rng!r} in hostlist {item!r}")
            width = len(lo)
            values = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
        else:
            if not rng.isdigit():
                raise ValueError(f"bad index {rng!r} in hostlist {item!r}")
            values = [rng]
        for v in values:
            out.extend(_expand_one(prefix + v + suffix))
    return out


def expand_hostlist(text: str) -> list[str]:
    """All host names in order, as ``scontrol show hostnames`` prints them."""
    hosts: list[str] = []
    for item in _split_top(text):
        hosts.extend(_expand_one(item))
    return hosts


def expand_counts(text: str) -> list[int]:
    """``SLURM_JOB_CPUS_PER_NODE`` form, e.g. ``64(x2),32`` -> [64, 64, 32]."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part)
        if not m:
            raise ValueError(f"cannot read count {part!r} in {text!r}")
        out.extend([int(m.group(1))] * int(m.group(2) or 1))
    return out
