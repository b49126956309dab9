"""Bad input: each a clear ValueError / TypeError that names the argument."""

from __future__ import annotations

import math

import pytest
import torch

from hscl.hardening import Exponential, Threshold, linear_threshold
from hscl.losses import contrastive_loss, get_loss, supcon_loss

Z = torch.randn(8, 2, 4)
Y = torch.tensor([0, 1, 0, 1, 2, 2, 3, 3])


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: contrastive_loss(torch.randn(8, 4)), ValueError, r"z must have shape \(B, V, d\)"),
        (lambda: contrastive_loss(torch.randn(2, 8, 2, 4)), ValueError, "z must have shape"),
        (lambda: contrastive_loss([[1.0]]), TypeError, "z must be a torch.Tensor"),
        (lambda: contrastive_loss(torch.ones(4, 2, 3, dtype=torch.long)), TypeError, "floating-point"),
        (lambda: contrastive_loss(Z, Y[:5], positives="labels"), ValueError, r"labels must have shape \(B,\) = \(8,\)"),
        (lambda: contrastive_loss(Z, Y.float(), positives="labels"), TypeError, "labels must have an integer dtype"),
        (lambda: contrastive_loss(Z, Y.bool(), negatives="supervised"), TypeError, "integer dtype"),
        (lambda: contrastive_loss(Z, positives="labels"), ValueError, 'labels are required for positives="labels"'),
        (lambda: contrastive_loss(Z, negatives="supervised"), ValueError, 'labels are required for negatives="sup'),
        (lambda: contrastive_loss(Z[:, :1]), ValueError, 'positives="views" needs at least 2 views'),
        (lambda: contrastive_loss(Z, temperature=0.0), ValueError, "temperature must be a finite number > 0"),
        (lambda: contrastive_loss(Z, temperature=-1), ValueError, "temperature"),
        (lambda: contrastive_loss(Z, temperature=math.nan), ValueError, "temperature"),
        (lambda: contrastive_loss(Z, M=0), ValueError, "M must be a finite number > 0"),
        (lambda: contrastive_loss(Z, M=-3.0), ValueError, "M must"),
        (lambda: contrastive_loss(Z, M="all"), ValueError, "M must be None"),
        (lambda: contrastive_loss(Z, tau_plus=1.0), ValueError, r"tau_plus must lie in \[0, 1\)"),
        (lambda: contrastive_loss(Z, tau_plus=-0.1), ValueError, "tau_plus"),
        (lambda: contrastive_loss(Z, Y, negatives="supervised", tau_plus=0.1), ValueError, "unsupervised negatives"),
        (lambda: contrastive_loss(Z, positives="all"), ValueError, "positives must be one of 'views', 'labels'"),
        (lambda: contrastive_loss(Z, negatives="hard"), ValueError, "negatives must be one of"),
        (lambda: contrastive_loss(Z, reduction="avg"), ValueError, "reduction must be one of"),
        (lambda: contrastive_loss(Z, chunk_size=0), ValueError, "chunk_size must be None or an integer >= 1"),
        (lambda: contrastive_loss(Z, hardening=2.0), TypeError, "hardening must be None"),
        (lambda: contrastive_loss(Z, hardening=lambda g: g), ValueError, "negative weights"),
        (lambda: contrastive_loss(Z, hardening=lambda g: g[:1]), ValueError, "same shape"),
        (lambda: contrastive_loss(Z, hardening=lambda g: g * math.inf), ValueError, "non-finite weights"),
        (lambda: Exponential(-0.5), ValueError, "beta must be >= 0"),
        (lambda: Exponential("1"), TypeError, "beta must be a real number"),
        (lambda: Threshold(0.0), ValueError, "tau must be > 0"),
        (lambda: Threshold(-1.0), ValueError, "tau must be > 0"),
        (lambda: linear_threshold(-0.5, -0.1, 0, 0.5), ValueError, "epochs must be an integer >= 1"),
        (lambda: linear_threshold(-0.5, -0.1, 10, 0.5)(0), ValueError, r"epoch must be an integer in \[1, 10\]"),
        (lambda: linear_threshold(-0.5, -0.1, 10, 0.5)(11), ValueError, "1-based"),
        (lambda: linear_threshold(-1.5, -0.1, 10, 0.5), ValueError, r"must lie in \[-1, 1\]"),
        (lambda: get_loss("hscl-beta"), ValueError, "unknown loss method 'hscl-beta'; valid methods: ucl, h-ucl"),
        (lambda: get_loss("h-scl", beta=-1.0), ValueError, "beta must be >= 0"),
        (lambda: get_loss("h-scl", tau=0.0), ValueError, "tau must be > 0"),
        (lambda: get_loss("h-scl", beta=1.0, tau=1.0), ValueError, "at most one of beta=, tau=, hardening="),
        (lambda: get_loss("scl", beta=1.0), TypeError, r"get_loss\('scl'\) got unexpected keyword\(s\) beta"),
        (lambda: get_loss("ucl", tempreature=0.5), TypeError, "tempreature"),
        (lambda: get_loss("h-scl", tau_plus=0.1), TypeError, "tau_plus"),
        (lambda: get_loss(3), TypeError, "method must be a string"),
        (lambda: supcon_loss(Z, temperature=0), ValueError, "temperature"),
        (lambda: supcon_loss(Z[:, :1]), ValueError, "needs V >= 2"),
        (lambda: get_loss("supcon", base_temperature=-1), ValueError, "base_temperature"),
    ],
)
def test_bad_input_raises_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_non_finite_z_is_reported_not_propagated():
    z = Z.clone()
    z[3, 1, 2] = math.nan
    with pytest.raises(ValueError, match=r"z contains 1 non-finite value\(s\)"):
        contrastive_loss(z)
    z[0, 0, 0] = math.inf
    with pytest.raises(ValueError, match="2 non-finite"):
        get_loss("h-scl")(z, Y)
    with pytest.raises(ValueError, match="non-finite"):
        supcon_loss(z, Y)


def test_cli_reports_errors_without_traceback(capsys):
    from hscl.cli import main

    with pytest.raises(SystemExit):
        main(["losses", "--batch", "1"])
    assert main(["losses", "--batch", "16", "--temperature", "-1"]) == 2
    assert "temperature must be a finite number > 0" in capsys.readouterr().err
