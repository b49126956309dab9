"""The collapse verdict under both effective-rank conventions and its borderline rule, on constructed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hscl.experiments._collapse_verdict import (
    COLLAPSE_RULES,
    collapse_rule_text,
    collapse_verdict,
    collapse_verdicts,
    near_threshold,
)
from hscl.experiments.figures import _collapse_table, _with_both_ranks

C = 10  # threshold of the effective rank: 0.75 * 9 = 6.75; NC1 0.5; NC2 0.1


def measured(erank: float, erank_cov: float, nc1: float = 50.0, nc2: float = 0.3) -> dict:
    return {"effective_rank": erank, "effective_rank_cov": erank_cov, "nc1": nc1, "nc2_etf": nc2}


def test_near_threshold_is_within_ten_percent_inclusive():
    assert near_threshold(6.75 * 1.1, 6.75) and near_threshold(6.75 * 0.9, 6.75)
    assert near_threshold(0.55, 0.5) and near_threshold(0.45, 0.5)
    assert not near_threshold(6.75 * 1.1 + 1e-9, 6.75) and not near_threshold(6.75 * 0.9 - 1e-9, 6.75)
    assert not near_threshold(0.089, 0.1) and near_threshold(0.0905, 0.1)
    assert near_threshold(1.25, 1.0, tolerance=0.25) and not near_threshold(1.26, 1.0, tolerance=0.25)


def test_clear_cases_agree_and_are_not_borderline():
    v = collapse_verdicts(measured(9.0, 8.5), C)  # both ranks far above 6.75, NC1 / NC2 far above theirs
    assert (v.verdict, v.borderline, v.reasons) == ("neither", False, [])
    assert v.by_convention == {"effective_rank": "neither", "effective_rank_cov": "neither"}
    v = collapse_verdicts(measured(4.0, 3.0), C)
    assert (v.verdict, v.borderline) == ("dimensional collapse", False)
    v = collapse_verdicts(measured(8.9, 8.8, nc1=0.1, nc2=0.02), C)
    assert (v.verdict, v.borderline) == ("neural collapse", False)


def test_conventions_that_disagree_are_borderline():
    # results/collapse before the change, SCL with sphere: s-rank 6.77 (above 6.75), s^2-rank 5.65 (below)
    v = collapse_verdicts(measured(6.77, 5.65), C)
    assert v.by_convention == {"effective_rank": "neither", "effective_rank_cov": "dimensional collapse"}
    assert v.verdict == "borderline" and v.borderline
    assert v.reasons[0].startswith("the conventions disagree")
    # disagreement far from the threshold is still borderline: the convention decides the verdict
    v = collapse_verdicts(measured(8.0, 5.0), C)
    assert v.verdict == "borderline" and len(v.reasons) == 1 and "disagree" in v.reasons[0]


def test_a_value_within_ten_percent_of_its_threshold_is_borderline():
    # both conventions say dimensional collapse, but the s-rank 6.2 is within 10% of 6.75 (6.075 .. 7.425)
    v = collapse_verdicts(measured(6.2, 5.0), C)
    assert v.by_convention["effective_rank"] == v.by_convention["effective_rank_cov"] == "dimensional collapse"
    assert v.verdict == "borderline" and v.reasons == ["effective_rank = 6.2 within 10% of 6.75"]
    # just outside the band on both sides: not borderline
    assert not collapse_verdicts(measured(6.75 * 1.1 + 1e-6, 9.0), C).borderline
    assert not collapse_verdicts(measured(6.75 * 0.9 - 1e-6, 3.0), C).borderline
    # NC1 and NC2 near their thresholds
    v = collapse_verdicts(measured(8.9, 8.8, nc1=0.52, nc2=0.02), C)
    assert v.verdict == "borderline" and v.reasons == ["nc1 = 0.52 within 10% of 0.5"]
    v = collapse_verdicts(measured(8.9, 8.8, nc1=0.1, nc2=0.095), C)
    assert v.verdict == "borderline" and v.reasons == ["nc2_etf = 0.095 within 10% of 0.1"]


def test_diverged_and_bad_input():
    v = collapse_verdicts(measured(math.nan, 5.0), C)
    assert v.verdict == "diverged" and not v.borderline
    assert collapse_verdict(1.0, 0.2, math.inf, C) == "diverged"
    with pytest.raises(KeyError, match="effective_rank_cov"):
        collapse_verdicts({"effective_rank": 1.0, "nc1": 1.0, "nc2_etf": 1.0}, C)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        collapse_verdicts(measured(8.0, 8.0), 1)


def test_the_rule_text_states_every_threshold():
    text = collapse_rule_text(C)
    for piece in ("eff. rank < 0.75 (C-1) = 6.75", "NC1 < 0.5", "NC2 < 0.1", "within 10%", "singular values"):
        assert piece in text, piece
    assert "covariance eigenvalues" in text and "|value - threshold| <= 0.1 threshold" in text
    assert COLLAPSE_RULES["borderline_tolerance"] == 0.1


def test_the_table_shows_both_ranks_and_verdicts():
    runs = {}
    for key, ranks in (("scl-sphere", (6.77, 5.65)), ("ucl-sphere", (8.85, 8.45))):
        last = {**measured(*ranks), "ncc_accuracy": 0.7, "dims_99": 9.0, "knn_top1": 70.0, "mean_norm": 1.0}
        last["nc2_norm_cv"] = 0.1
        v = collapse_verdicts(last, C)
        runs[key] = {"label": key, "method": key, "normalization": "sphere", "num_classes": C, "first": last}
        runs[key] |= {"last": last, **v.as_dict()}
    table, csv_rows = _collapse_table({"runs": runs})
    lines = table.splitlines()
    assert "eff. rank s / (C-1)" in lines[0] and "eff. rank s² / (C-1)" in lines[0]
    cells = [c.strip() for c in lines[2].split("|")[1:-1]]
    assert cells[5:7] == ["6.77 / 9", "5.65 / 9"] and cells[-3:] == ["neither", "dimensional collapse", "borderline"]
    cells = [c.strip() for c in lines[3].split("|")[1:-1]]
    assert cells[-3:] == ["neither", "neither", "neither"]
    assert csv_rows[0][-4:] == ["neither", "dimensional collapse", "borderline", True]


def test_rows_from_before_both_conventions_are_converted(tmp_path):
    """An old metrics row holds the covariance-eigenvalue rank in effective_rank; the singular-value one is
    recomputed from that epoch's spectrum.csv row (covariance eigenvalues = s^2 / N)."""
    eig = np.array([0.3, 0.1, 0.05, 1e-4])
    (tmp_path / "spectrum.csv").write_text("epoch,sv1,sv2,sv3,sv4\n1,1,1,1,1\n2," + ",".join(map(str, eig)) + "\n")
    q = eig / eig.sum()
    old_rank = math.exp(-(q * np.log(q)).sum())
    rows = [{"epoch": "2", "effective_rank": str(old_rank), "effective_rank_cov": ""}]
    rows.append({"epoch": "3", "effective_rank": "7.5", "effective_rank_cov": "6.5"})  # written by the new code
    out = _with_both_ranks(rows, tmp_path)
    s = np.sqrt(eig)
    p = s / s.sum()
    assert float(out[0]["effective_rank_cov"]) == old_rank
    assert out[0]["effective_rank"] == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-12)
    assert out[1] == rows[1]
