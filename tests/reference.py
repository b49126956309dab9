"""Slow float64 references written directly from LOSSES.md, one anchor and one pair at a time.

They follow the formulas literally (exp, then divide, then log), share no code with
``hscl.losses`` and are differentiable with autograd, so tests compare values and gradients.
"""

from __future__ import annotations

import math

import torch

from hscl.hardening import Exponential, Threshold


def _rows(z: torch.Tensor, normalize: bool) -> torch.Tensor:
    B, V, _ = z.shape
    rows = [z[i, v] for v in range(V) for i in range(B)]  # row r = v * B + i
    Z = torch.stack(rows).double()
    if normalize:
        Z = torch.stack([row / torch.sqrt((row * row).sum()) for row in Z])
    return Z


def _eta(hardening, g: torch.Tensor) -> torch.Tensor:
    """Weight of one negative with scaled similarity ``g`` (0-d tensor)."""
    if hardening is None:
        return torch.ones((), dtype=g.dtype)
    if isinstance(hardening, Exponential):
        return torch.exp(hardening.beta * g)
    if isinstance(hardening, Threshold):
        return (
            torch.ones((), dtype=g.dtype)
            if math.exp(float(g.detach())) >= hardening.tau
            else torch.zeros((), dtype=g.dtype)
        )
    return hardening(g.reshape(1, 1)).reshape(())


def reference_pairs(
    z,
    labels=None,
    *,
    positives="views",
    negatives="unsupervised",
    hardening=None,
    temperature=0.5,
    M=None,
    tau_plus=0.0,
    normalize=True,
    detach_weights=False,
):
    """List of ``(r, p, loss(r, p))`` over valid pairs, anchors ascending then positives ascending."""
    B, V, _ = z.shape
    Z = _rows(z, normalize)
    N = V * B
    instance = [r % B for r in range(N)]
    label = [int(labels[r % B]) for r in range(N)] if labels is not None else None
    out = []
    for r in range(N):
        if positives == "views":
            P = [s for s in range(N) if s != r and instance[s] == instance[r]]
        else:
            P = [s for s in range(N) if s != r and label[s] == label[r]]
        if negatives == "unsupervised":
            Nr = [s for s in range(N) if instance[s] != instance[r]]
        else:
            Nr = [s for s in range(N) if label[s] != label[r]]
        if not P or not Nr:
            continue
        g = {s: torch.dot(Z[r], Z[s]) / temperature for s in set(P) | set(Nr)}
        w = [_eta(hardening, g[s].detach() if detach_weights else g[s]) for s in Nr]
        if sum(float(x.detach()) for x in w) == 0.0:  # threshold fallback: untilted
            w = [torch.ones((), dtype=torch.float64) for _ in Nr]
        E = sum(w_s * torch.exp(g[s]) for w_s, s in zip(w, Nr)) / sum(w)
        if M is None:
            Mr = N - 2
        elif M == "count":
            Mr = len(Nr)
        else:
            Mr = M
        for p in P:
            if tau_plus == 0:
                loss = torch.log(1 + Mr * torch.exp(-g[p]) * E)
            else:
                Ng = (-tau_plus * Mr * torch.exp(g[p]) + Mr * E) / (1 - tau_plus)
                Ng = torch.maximum(Ng, torch.tensor(Mr * math.exp(-1 / temperature), dtype=torch.float64))
                loss = torch.log(1 + torch.exp(-g[p]) * Ng)
            out.append((r, p, loss))
    return out


def reference_loss(z, labels=None, *, reduction="mean", **kw):
    pairs = reference_pairs(z, labels, **kw)
    if not pairs:
        return torch.zeros((0,) if reduction == "none" else (), dtype=torch.float64)
    values = torch.stack([loss for _, _, loss in pairs])
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    if reduction == "anchor_mean":
        by_anchor: dict[int, list] = {}
        for r, _, loss in pairs:
            by_anchor.setdefault(r, []).append(loss)
        return torch.stack([torch.stack(v).mean() for v in by_anchor.values()]).mean()
    raise ValueError(reduction)


def reference_supcon(z, labels=None, *, temperature=0.1, base_temperature=0.07):
    """Khosla et al. L_out, loop over anchors: mean over anchors with a positive."""
    B, V, _ = z.shape
    Z = _rows(z, True)
    N = V * B
    ids = [int(labels[r % B]) if labels is not None else r % B for r in range(N)]
    per_anchor = []
    for r in range(N):
        P = [s for s in range(N) if s != r and ids[s] == ids[r]]
        if not P:
            continue
        denom = sum(torch.exp(torch.dot(Z[r], Z[s]) / temperature) for s in range(N) if s != r)
        terms = [torch.log(torch.exp(torch.dot(Z[r], Z[p]) / temperature) / denom) for p in P]
        per_anchor.append(-(temperature / base_temperature) * torch.stack(terms).mean())
    return torch.stack(per_anchor).mean()
