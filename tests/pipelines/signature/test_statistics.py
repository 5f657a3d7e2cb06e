"""Enrichment, FDR and the dose-response regression against values computed by hand or
by an independent formula."""

from __future__ import annotations

import math
import random

import pytest

from hpcray.pipelines.signature.dose import dose_response
from hpcray.pipelines.signature.enrichment import enrich
from hpcray.pipelines.signature.gmt import GeneSet
from hpcray.pipelines.signature.samples import Sample
from hpcray.pipelines.signature.stats import bh_fdr, hypergeom_sf, poisson_dose_fit
from hpcray.pipelines.signature.synthetic import poisson


def test_hypergeometric_tail_matches_the_sum_of_binomials():
    universe, set_size, drawn, overlap = 40, 8, 10, 5
    expected = sum(math.comb(set_size, k) * math.comb(universe - set_size, drawn - k)
                   for k in range(overlap, min(set_size, drawn) + 1)) / math.comb(universe, drawn)
    assert hypergeom_sf(overlap, universe, set_size, drawn) == pytest.approx(expected, rel=1e-12)
    assert hypergeom_sf(0, universe, set_size, drawn) == 1.0


def test_benjamini_hochberg_by_hand():
    p = [0.01, 0.04, 0.03, 0.20]
    # sorted 0.01, 0.03, 0.04, 0.20 -> 0.04, 0.06, 0.0533, 0.20 -> monotone from the top
    assert bh_fdr(p) == pytest.approx([0.04, 0.05333333, 0.05333333, 0.20])
    assert bh_fdr([]) == []


def test_enrichment_finds_the_set_holding_the_hits():
    universe = {f"G{i}" for i in range(200)}
    sets = [GeneSet("HIT", "", frozenset(f"G{i}" for i in range(10))),
            GeneSet("MISS", "", frozenset(f"G{i}" for i in range(100, 120))),
            GeneSet("TINY", "", frozenset({"G1", "G2"}))]
    mutated = [f"G{i}" for i in range(8)] + ["G150", "G151", "NOT_IN_UNIVERSE"]
    rows = {r.gene_set: r for r in enrich("s", mutated, sets, universe)}
    assert set(rows) == {"HIT", "MISS"}  # TINY is below min_size
    assert rows["HIT"].overlap == 8 and rows["HIT"].hits == 10
    assert rows["HIT"].fdr < 1e-6 and rows["MISS"].p == 1.0
    assert rows["HIT"].expected == pytest.approx(10 * 10 / 200)


def test_the_dose_fit_recovers_a_known_rate_ratio():
    rng = random.Random(3)
    doses = [0, 0.1, 0.25, 0.5, 1.0] * 6
    times = [24] * 15 + [72] * 15
    exposure = [rng.randint(800, 1200) for _ in doses]
    true_slope = math.log(3.0)
    counts = [poisson(rng, e / 100 * math.exp(true_slope * d))
              for e, d in zip(exposure, doses, strict=True)]
    fit = poisson_dose_fit(counts, doses, times, exposure)
    assert fit is not None and fit.converged
    assert fit.slope - 2 * fit.se < true_slope < fit.slope + 2 * fit.se
    assert fit.p < 1e-6
    flat = poisson_dose_fit([poisson(rng, e / 100) for e in exposure], doses, times, exposure)
    assert flat.p > 0.001
    # 30 samples, 3 coefficients: the p-value and the interval on t(27), not the normal
    from scipy.stats import t as student_t

    assert fit.df == 27
    assert fit.p == pytest.approx(2 * student_t.sf(abs(fit.z), 27))
    low, high = fit.interval(0.95)
    assert high - fit.slope == pytest.approx(student_t.ppf(0.975, 27) * fit.se)
    assert high - low > 2 * 1.96 * fit.se  # wider than the normal interval


def test_all_variants_at_one_dose_is_not_estimable():
    assert poisson_dose_fit([0, 0, 0, 0, 5], [0, 0.1, 0.2, 0.3, 0.5], [0] * 5, [100] * 5) is None
    assert poisson_dose_fit([0] * 5, [0, 0.1, 0.2, 0.3, 0.5], [0] * 5, [100] * 5) is None


def test_dose_response_rows_per_gene_and_gene_set_with_fdr():
    samples = [Sample(f"S{i}", None, d, 0) for i, d in enumerate([0, 0, 0.5, 0.5, 1, 1])]
    counts = {"S0": {"A": 1, "B": 2}, "S1": {"A": 1, "B": 3}, "S2": {"A": 4, "B": 2},
              "S3": {"A": 5, "B": 2}, "S4": {"A": 9, "B": 3}, "S5": {"A": 10, "B": 2}}
    totals = {s.name: 100 for s in samples}
    rows = dose_response(samples, counts, totals, [GeneSet("SET", "", frozenset({"A"}))])
    by = {(r.level, r.feature): r for r in rows}
    assert set(by) == {("gene", "A"), ("gene", "B"), ("gene_set", "SET")}
    assert by[("gene", "A")].rate_ratio > 3 and by[("gene", "A")].fdr < 0.01
    assert by[("gene", "B")].fdr > 0.05
    assert by[("gene_set", "SET")].variants == 30
    assert by[("gene_set", "SET")].burden_by_dose == "0:10.00 0.5:45.00 1:95.00"

