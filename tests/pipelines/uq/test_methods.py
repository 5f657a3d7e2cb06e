"""The UQ methods' own arithmetic (training runs are in test_uq_runs.py)."""

from __future__ import annotations


def test_laplace_prior_precision_by_marginal_likelihood_matches_the_closed_form():
    """With every curvature h and |theta|^2 = s, the optimum solves
    lam^2 + h lam - P h / s = 0."""
    import math

    import torch

    from hpcray.pipelines.uq.methods import marglik_prior_precision

    p, h, s = 100, 10.0, 1.0
    curvature = [torch.full((60,), h), torch.full((40,), h)]
    mode = [torch.full((60,), math.sqrt(s / p)), torch.full((40,), math.sqrt(s / p))]
    expected = (-h + math.sqrt(h * h + 4 * p * h / s)) / 2  # 27.0
    assert abs(marglik_prior_precision(curvature, mode) / expected - 1) < 0.07
    # a larger adapter norm asks for a weaker prior
    assert marglik_prior_precision(curvature, [m * 3 for m in mode]) < expected
