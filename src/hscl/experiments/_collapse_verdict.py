"""The verdict of ``hscl reproduce collapse``: neural collapse, dimensional collapse, neither, or borderline.

The rule is applied under two conventions of the effective rank (:class:`hscl.geometry.Spectrum`): over the
singular values ``s`` of the centred embeddings (Roy and Vetterli, as RankMe uses it) and over the covariance
eigenvalues ``s^2``. A run is *borderline* when the two conventions give different verdicts or when a value the
rule compares lies within 10% of its threshold; only then does the convention, or noise, decide the verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: thresholds of :func:`collapse_verdict`, applied to the last epoch's probe-set measurements
COLLAPSE_RULES = {
    "dimensional_erank_fraction": 0.75,  # effective rank < 0.75 (C - 1): dimensional collapse
    "neural_nc1": 0.5,  # NC1 below this ...
    "neural_nc2_etf": 0.1,  # ... and mean |cos + 1/(C-1)| below this: neural collapse (ETF)
    "borderline_tolerance": 0.1,  # |value - threshold| <= 0.1 * threshold: borderline
}

#: the two conventions of the effective rank: metrics column -> what the entropy is taken over
CONVENTIONS = {
    "effective_rank": "singular values s of the centred embeddings",
    "effective_rank_cov": "covariance eigenvalues s^2",
}


def collapse_verdict(nc1: float, nc2_etf: float, effective_rank: float, num_classes: int) -> str:
    """The verdict under one convention: ``"dimensional collapse"`` when the effective rank of the embeddings
    is below ``0.75 (C - 1)``; else ``"neural collapse"`` when NC1 < 0.5 and NC2 (distance to the ETF cosine)
    < 0.1; else ``"neither"``. Non-finite measurements (a diverged run) give ``"diverged"``."""
    if not all(math.isfinite(v) for v in (nc1, nc2_etf, effective_rank)):
        return "diverged"
    if effective_rank < COLLAPSE_RULES["dimensional_erank_fraction"] * (num_classes - 1):
        return "dimensional collapse"
    if nc1 < COLLAPSE_RULES["neural_nc1"] and nc2_etf < COLLAPSE_RULES["neural_nc2_etf"]:
        return "neural collapse"
    return "neither"


def near_threshold(value: float, threshold: float, tolerance: float | None = None) -> bool:
    """``|value - threshold| <= tolerance * |threshold|`` (tolerance: ``COLLAPSE_RULES["borderline_tolerance"]``),
    the bound inclusive up to rounding (a slack of ``1e-12 |threshold|``: 6.75 * 1.1 is on the bound)."""
    tolerance = COLLAPSE_RULES["borderline_tolerance"] if tolerance is None else tolerance
    return abs(value - threshold) <= (tolerance + 1e-12) * abs(threshold)


def collapse_rule_text(num_classes: int) -> str:
    """The rule and its thresholds in words, for the outputs (``C = num_classes``)."""
    r = COLLAPSE_RULES
    erank = r["dimensional_erank_fraction"] * (num_classes - 1)
    return (
        f"Under each convention of the effective rank (exp of the entropy of p = s / sum s over the singular values "
        f"s of the centred embeddings, or of p = s^2 / sum s^2 over the covariance eigenvalues): dimensional "
        f"collapse if eff. rank < {r['dimensional_erank_fraction']:g} (C-1) = {erank:g}; else neural collapse if "
        f"NC1 < {r['neural_nc1']:g} and NC2 < {r['neural_nc2_etf']:g}; else neither. Borderline when the two "
        f"conventions disagree or a compared value (either eff. rank, NC1, NC2) is within "
        f"{100 * r['borderline_tolerance']:g}% of its threshold (|value - threshold| <= "
        f"{r['borderline_tolerance']:g} threshold)."
    )


@dataclass
class CollapseVerdict:
    """The verdict of one run under both conventions.

    ``by_convention`` maps each key of :data:`CONVENTIONS` to :func:`collapse_verdict` under it; ``borderline``
    is True when they differ or a compared value is near its threshold (``reasons`` says which); ``verdict`` is
    the agreed verdict, ``"borderline"`` when ``borderline``, or ``"diverged"``.
    """

    verdict: str
    by_convention: dict[str, str]
    borderline: bool
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "verdict": self.verdict,
            "verdict_by_convention": dict(self.by_convention),
            "borderline": self.borderline,
            "borderline_reasons": list(self.reasons),
        }


def collapse_verdicts(measured: dict[str, float], num_classes: int) -> CollapseVerdict:
    """:func:`collapse_verdict` under both conventions, and whether the run is borderline.

    ``measured`` holds ``nc1``, ``nc2_etf`` and both effective ranks (the keys of :data:`CONVENTIONS`).
    """
    missing = [k for k in ("nc1", "nc2_etf", *CONVENTIONS) if k not in measured]
    if missing:
        raise KeyError(f"collapse_verdicts: measured lacks {missing}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    nc1, nc2 = float(measured["nc1"]), float(measured["nc2_etf"])
    by = {k: collapse_verdict(nc1, nc2, float(measured[k]), num_classes) for k in CONVENTIONS}
    if "diverged" in by.values():
        return CollapseVerdict("diverged", by, False)
    r = COLLAPSE_RULES
    compared = [(k, float(measured[k]), r["dimensional_erank_fraction"] * (num_classes - 1)) for k in CONVENTIONS]
    compared += [("nc1", nc1, r["neural_nc1"]), ("nc2_etf", nc2, r["neural_nc2_etf"])]
    reasons = [f"{k} = {v:.4g} within {100 * r['borderline_tolerance']:g}% of {t:g}" for k, v, t in compared]
    reasons = [text for text, (_, v, t) in zip(reasons, compared) if near_threshold(v, t)]
    if len(set(by.values())) > 1:
        reasons.insert(0, "the conventions disagree: " + ", ".join(f"{k}: {v}" for k, v in by.items()))
    if reasons:
        return CollapseVerdict("borderline", by, True, reasons)
    return CollapseVerdict(next(iter(by.values())), by, False)
