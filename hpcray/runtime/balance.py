"""Power of two choices: the one rule that picks where a request goes, shared by the direct
client (over replicas) and the federation (over local replicas and remote endpoints).

Two candidates drawn at random, the less loaded one wins (ties: the first drawn). Sampling
two instead of scanning for the least loaded keeps many callers, each with its own view of
the load, from all piling onto the same target (Mitzenmacher)."""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence
from typing import TypeVar

Candidate = TypeVar("Candidate")


def pick_two(candidates: Sequence[Candidate], load: Callable[[Candidate], float], *,
             exclude: Collection[Candidate] = (), rng: random.Random | None = None
             ) -> Candidate | None:
    """One of `candidates` not in `exclude` (those already tried), or None when none is left.

    `load` is what the caller balances on: requests outstanding for the direct client; the
    federation's score, which folds in round trips and divides by the instance's weight. A
    lone candidate is taken without drawing. `rng` defaults to the module's shared one."""
    choices = [c for c in candidates if c not in exclude] if exclude else candidates
    if not choices:
        return None
    if len(choices) == 1:
        return choices[0]
    sample = random.sample if rng is None else rng.sample
    a, b = sample(choices, 2)
    return a if load(a) <= load(b) else b
