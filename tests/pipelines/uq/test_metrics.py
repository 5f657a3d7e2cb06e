"""The UQ metrics against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from hpcray.pipelines.uq.metrics import (
    Evaluation,
    accuracy,
    auroc,
    brier,
    ece,
    mean_ci,
    nll,
    reliability_bins,
)

# three questions: right and sure, right and unsure, wrong and fairly sure
EV = Evaluation(probs=[[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]], answers=[0, 0, 0])


def test_accuracy_and_confidence():
    assert EV.correct == [True, True, False]
    assert EV.confidence == [0.9, 0.6, 0.7]
    assert accuracy(EV) == pytest.approx(2 / 3)


def test_nll_is_the_mean_negative_log_of_the_right_option():
    assert nll(EV) == pytest.approx(-(math.log(0.9) + math.log(0.6) + math.log(0.3)) / 3)


def test_brier_sums_over_options():
    # (0.1^2 + 0.1^2) + (0.4^2 + 0.4^2) + (0.7^2 + 0.7^2) = 0.02 + 0.32 + 0.98
    assert brier(EV) == pytest.approx(1.32 / 3)


def test_ece_by_bins():
    # bins of width 0.1: 0.6 -> [0.6, 0.7) right; 0.7 -> [0.7, 0.8) wrong; 0.9 -> right
    assert reliability_bins(EV) == [(pytest.approx(0.6), 1.0, 1), (pytest.approx(0.7), 0.0, 1),
                                    (pytest.approx(0.9), 1.0, 1)]
    assert ece(EV) == pytest.approx((0.4 + 0.7 + 0.1) / 3)
    # two bins: [0, 0.5) empty; [0.5, 1]: confidence 2.2/3, accuracy 2/3
    assert ece(EV, bins=2) == pytest.approx(abs(2 / 3 - 2.2 / 3))


def test_a_confidence_of_one_falls_in_the_last_bin():
    ev = Evaluation([[1.0, 0.0]], [0])
    assert reliability_bins(ev, bins=10) == [(1.0, 1.0, 1)]


def test_auroc_counts_pairs_and_half_ties():
    # right: 0.9, 0.6; wrong: 0.7 -> pairs (0.9 > 0.7) and (0.6 < 0.7): 1/2
    assert auroc(EV) == pytest.approx(0.5)
    tie = Evaluation([[0.7, 0.3], [0.3, 0.7]], [0, 0])  # right 0.7, wrong 0.7
    assert auroc(tie) == pytest.approx(0.5)
    perfect = Evaluation([[0.9, 0.1], [0.4, 0.6]], [0, 0])  # right 0.9 over wrong 0.6
    assert auroc(perfect) == 1.0
    assert math.isnan(auroc(Evaluation([[0.9, 0.1]], [0])))  # no wrong answer: undefined


def test_mean_and_95_percent_interval_over_seeds():
    mean, half = mean_ci([0.8, 0.6])
    # sd = 0.1414; t(1 dof) = 12.706; half = 12.706 * 0.1414 / sqrt(2) = 1.2706
    assert mean == pytest.approx(0.7) and half == pytest.approx(1.2706, rel=1e-3)
    assert mean_ci([0.5]) == (0.5, 0.0)
    assert mean_ci([0.5, float("nan")]) == (0.5, 0.0)  # an undefined AUROC is left out


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError):
        Evaluation([[0.5, 0.5]], [0, 1])
