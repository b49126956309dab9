"""The pair term of eq. (3) of arXiv 2209.00078 and its derivatives, shared by the kernels and the generic path.

For an anchor ``r`` and a positive ``p``, with ``g = g(r, p)`` and ``log E = log E(r)``::

    loss(r, p) = softplus(log M(r) + log E(r) - g(r, p))     (eq. (3); SupCon: the linear term, no softplus)

and with ``tau_plus > 0`` Robinson et al.'s debiased ``log Ng`` in place of ``log M + log E``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# softplus(x) is computed exactly as log1p(exp(x)) below this and as x above it; at 40 the
# difference is below 5e-18, i.e. exact in float64 and exp(40) does not overflow float32.
_SOFTPLUS_LINEAR_FROM = 40.0

#: ``sigmoid(x)`` is a normal number for ``x`` down to this (float32: 1.8e-35 at -80): where the caller knows that
#: ``x`` stays above it, ``softplus(x) = x - log(sigmoid(x))`` reuses the sigmoid the gradient needs
_SIGMOID_NORMAL_FROM = {torch.float32: -80.0, torch.float64: -700.0}


def _debias(s: Tensor, log_c: Tensor, tau_plus: float, inv_t: float):
    """H-UCL's debiased ``log(Ng / M)`` in log space, and the pieces its derivative needs.

    ``log(Ng / M) = max(log(E - tau_plus * e^s) - log(1 - tau_plus), -1/temperature)``.
    """
    a = tau_plus * torch.exp(s - log_c)  # tau_plus e^s / E
    ok = a < 1
    a_safe = torch.where(ok, a, torch.zeros_like(a))
    branch = log_c + torch.log1p(-a_safe) - math.log1p(-tau_plus)
    active = ok & (branch > -inv_t)
    return torch.where(active, branch, torch.full_like(branch, -inv_t)), a_safe, active


def _pair_loss(s: Tensor, log_c: Tensor, log_M: Tensor, tau_plus: float, inv_t: float) -> Tensor:
    """``loss(r, p) = softplus(log M - g(r,p) + log E(r))`` (eq. (3)); debiased if ``tau_plus > 0``.

    ``s = g(r, p)``; ``log_c = log E(r)`` and ``log_M`` broadcast against it. Built from
    differentiable torch ops (the generic path differentiates it with autograd).
    """
    if tau_plus == 0.0:
        x = log_M + log_c - s
    else:
        x = log_M + _debias(s, log_c, tau_plus, inv_t)[0] - s
    return F.softplus(x, threshold=_SOFTPLUS_LINEAR_FROM)


def _pair_grads(s: Tensor, log_c: Tensor, log_M: Tensor, tau_plus: float, inv_t: float) -> tuple[Tensor, Tensor]:
    """Analytic ``(d loss / d s, d loss / d log_c)`` of :func:`_pair_loss`."""
    if tau_plus == 0.0:
        sig = torch.sigmoid(log_M + log_c - s)
        return -sig, sig
    log_ng, a_safe, active = _debias(s, log_c, tau_plus, inv_t)
    sig = torch.sigmoid(log_M + log_ng - s)
    inv = torch.where(active, 1.0 / (1.0 - a_safe), torch.zeros_like(a_safe))  # d log Ng / d log E
    return sig * (-a_safe * inv - 1.0), sig * inv


@dataclass
class PairTerms:
    """The pair terms of a tile of anchors. Shapes ``(t, K)`` over the positive table, ``(t,)`` per anchor.

    ``loss``: ``loss(r, p)``, 0 where the pair is not real. With a gradient: ``sigma``, the anchor's
    ``Sigma(r) = sum_p weight * d loss(r, p) / d log E(r)``, and :meth:`d_g`.
    """

    loss: Tensor
    sigma: Tensor | None = None
    d_c: Tensor | None = None  # weight x d loss / d log E(r), when d loss / d g(r, p) is its negative (no debiasing)
    d_s: Tensor | None = None  # weight x d loss / d g(r, p), with debiasing
    owned: bool = True  # d_c or d_s may be overwritten (not the caller's weight)

    def d_g(self, scale: Tensor | None = None) -> Tensor:
        """The pair weight times ``d loss(r, p) / d g(r, p)`` (the positive's own term), times ``scale`` (t,) per
        anchor when given, in one pass (in place over :attr:`d_c` or :attr:`d_s` where it may)."""
        if self.d_s is not None:
            return self.d_s if scale is None else self.d_s.mul_(scale[:, None])
        if scale is None:
            return self.d_c.neg_() if self.owned else torch.neg(self.d_c)
        return self.d_c.mul_(-scale[:, None]) if self.owned else torch.mul(self.d_c, -scale[:, None])


def pair_terms(
    s: Tensor,
    real: Tensor,
    log_c: Tensor,
    log_M: Tensor,
    *,
    shift: float,
    tau_plus: float,
    inv_t: float,
    linear: bool,
    weight: Tensor | None = None,
    x_min: float = -math.inf,
    scratch: tuple[Tensor, Tensor] | None = None,
) -> PairTerms:
    """The pair terms from ``s = g(r, p) - shift`` (t, K), overwritten. ``real`` (t, K): 1 on the real pairs
    (not padding, not ``r`` itself), 0 elsewhere; ``log_c``, ``log_M`` (t,): ``log E(r)`` and ``log M(r)``;
    ``linear``: SupCon's pair term; ``weight`` (t, K): the weight of each pair in the output (None: no gradient);
    ``x_min``: a lower bound of ``log M + log E - g`` over every entry (real or not), when the caller knows one;
    ``scratch``: two buffers of the shape of ``s`` for the temporaries (None: allocated)."""
    if tau_plus != 0.0:
        g = s + shift
        loss = _pair_loss(g, log_c[:, None], log_M[:, None], tau_plus, inv_t) * real
        if weight is None:
            return PairTerms(loss)
        d_s, d_c = _pair_grads(g, log_c[:, None], log_M[:, None], tau_plus, inv_t)
        return PairTerms(loss, d_c.mul_(weight).sum(1), d_s=d_s.mul_(weight))
    x = torch.sub((log_M + log_c - shift)[:, None], s, out=s)  # log M + log E - g(r, p), in the buffer of s
    first, second = scratch if scratch is not None else (None, None)
    if linear:  # d loss / d log E = -d loss / d g = 1
        loss, d_c = x.mul_(real), (weight if first is None or weight is None else first.copy_(weight))
    elif weight is not None and x_min >= _SIGMOID_NORMAL_FROM.get(x.dtype, math.inf):
        d_c = torch.sigmoid(x, out=first)
        loss = x.sub_(torch.log(d_c, out=second)).mul_(real)  # softplus(x) = x - log(sigmoid(x))
        d_c.mul_(weight)
    else:
        loss = torch.mul(F.softplus(x, threshold=_SOFTPLUS_LINEAR_FROM), real, out=first)
        d_c = None if weight is None else x.sigmoid_().mul_(weight)
    if weight is None:
        return PairTerms(loss)
    return PairTerms(loss, d_c.sum(1), d_c=d_c, owned=d_c is not weight)
