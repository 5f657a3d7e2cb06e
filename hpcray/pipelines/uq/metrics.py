"""The UQ metrics of one evaluation, and their aggregate over seeds.

Inputs are per question: the predicted probabilities over its options and the right
option's index. Confidence is the largest probability; a prediction is correct when that
option is the right one."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

METRICS = ("accuracy", "nll", "ece", "brier", "auroc")


@dataclass(frozen=True)
class Evaluation:
    probs: list[list[float]]  # per question, over its options (each row sums to 1)
    answers: list[int]

    def __post_init__(self) -> None:
        if len(self.probs) != len(self.answers) or not self.probs:
            raise ValueError("probs and answers must be non-empty and of the same length")

    @property
    def confidence(self) -> list[float]:
        return [max(p) for p in self.probs]

    @property
    def correct(self) -> list[bool]:
        return [max(range(len(p)), key=p.__getitem__) == a
                for p, a in zip(self.probs, self.answers, strict=True)]


def accuracy(ev: Evaluation) -> float:
    return sum(ev.correct) / len(ev.answers)


def nll(ev: Evaluation, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of the right option."""
    return -sum(math.log(max(p[a], eps)) for p, a in zip(ev.probs, ev.answers, strict=True)
                ) / len(ev.answers)


def brier(ev: Evaluation) -> float:
    """Mean over questions of the squared error against the one-hot answer, summed over
    options (0 is perfect, 2 the worst)."""
    total = 0.0
    for p, a in zip(ev.probs, ev.answers, strict=True):
        total += sum((q - (1.0 if i == a else 0.0)) ** 2 for i, q in enumerate(p))
    return total / len(ev.answers)


def reliability_bins(ev: Evaluation, bins: int = 10) -> list[tuple[float, float, int]]:
    """(mean confidence, accuracy, count) per equal-width confidence bin, empty bins left out.
    A confidence of exactly 1 falls in the last bin."""
    sums: list[list[float]] = [[0.0, 0.0, 0] for _ in range(bins)]
    for c, ok in zip(ev.confidence, ev.correct, strict=True):
        b = min(int(c * bins), bins - 1)
        sums[b][0] += c
        sums[b][1] += ok
        sums[b][2] += 1
    return [(s[0] / s[2], s[1] / s[2], int(s[2])) for s in sums if s[2]]


def ece(ev: Evaluation, bins: int = 10) -> float:
    """Expected calibration error: |accuracy - confidence| per bin, weighted by bin size."""
    n = len(ev.answers)
    return sum(count / n * abs(acc - conf) for conf, acc, count in reliability_bins(ev, bins))


def auroc(ev: Evaluation) -> float:
    """How well confidence ranks correct answers above wrong ones (Mann-Whitney U; ties
    count one half). NaN when every answer is right, or every one wrong."""
    pos = [c for c, ok in zip(ev.confidence, ev.correct, strict=True) if ok]
    neg = [c for c, ok in zip(ev.confidence, ev.correct, strict=True) if not ok]
    if not pos or not neg:
        return float("nan")
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def evaluate(ev: Evaluation) -> dict[str, float]:
    return {"accuracy": accuracy(ev), "nll": nll(ev), "ece": ece(ev), "brier": brier(ev),
            "auroc": auroc(ev)}


# two-sided 95% Student t quantiles for 1..30 degrees of freedom
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (Student t over seeds; 0 for
    a single seed). NaN values (an undefined AUROC) are left out."""
    xs = [v for v in values if not math.isnan(v)]
    if not xs:
        return float("nan"), float("nan")
    mean = sum(xs) / len(xs)
    if len(xs) == 1:
        return mean, 0.0
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
    t = _T95[len(xs) - 2] if len(xs) - 1 <= len(_T95) else 1.96
    return mean, t * sd / math.sqrt(len(xs))
