"""Slow float64 references written directly from the loss page (docs/losses.md), one anchor and one pair at a time.

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
    memory=None,
):
    """List of ``(r, p, loss(r, p))`` over valid pairs, anchors ascending then positives ascending.

    ``labels`` are class ids ``(B,)`` or multi-hot ``(B, C)``; ``memory = (z_mem (K, d), labels_mem or None)``
    adds K columns (``V*B + k``), each its own instance, never anchors, without gradient.
    """
    B, V, _ = z.shape
    Z = _rows(z, normalize)
    N = V * B
    K = 0
    if memory is not None:
        Zm = memory[0].detach().double()
        if normalize:
            Zm = torch.stack([row / torch.sqrt((row * row).sum()) for row in Zm])
        K = Zm.shape[0]
        Z = torch.cat([Z, Zm])
    cols = N + K
    instance = [r % B for r in range(N)] + [B + k for k in range(K)]

    def classes(s):  # the set of classes of column s (empty: no class)
        if labels is None:
            return set()
        if s < N:
            value = labels[s % B]
        else:
            if memory[1] is None:
                return set()
            value = memory[1][s - N]
        if value.dim() == 1:
            return {c for c in range(value.shape[0]) if bool(value[c])}
        return {int(value)}

    label = [classes(s) for s in range(cols)]

    def shares(r, s):
        return instance[r] == instance[s] or bool(label[r] & label[s])

    out = []
    for r in range(N):
        if positives == "views":
            P = [s for s in range(N) if s != r and instance[s] == instance[r]]
        else:
            P = [s for s in range(cols) if s != r and shares(r, s)]
        if negatives == "unsupervised":
            Nr = [s for s in range(cols) if instance[s] != instance[r]]
        else:
            Nr = [s for s in range(cols) if not shares(r, s)]
        if not P or not Nr:
            continue
        g = {s: torch.dot(Z[r], Z[s]) / temperature for s in set(P) | set(Nr)}
        w = [_eta(hardening, g[s].detach() if detach_weights else g[s]) for s in Nr]
        if sum(float(x.detach()) for x in w) == 0.0:  # threshold fallback: untilted
            w = [torch.ones((), dtype=torch.float64) for _ in Nr]
        E = sum(w_s * torch.exp(g[s]) for w_s, s in zip(w, Nr)) / sum(w)
        if M is None:
            Mr = cols - 2
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


def reference_metric_learning(
    embeddings, labels, *, negatives, hardening=None, temperature=0.5, M=None, reduction="mean"
):
    """pytorch-metric-learning's call ``loss_fn(embeddings (N, d), labels (N,))``, loop over rows.

    No instance structure: P(r) = other rows of the label of r; N(r) = every other row (``"unsupervised"``)
    or the rows of another label (``"supervised"``). Then eq. (3) as in :func:`reference_pairs`.
    """
    Z = torch.stack([row.double() / torch.sqrt((row.double() * row.double()).sum()) for row in embeddings])
    N = Z.shape[0]
    label = [int(y) for y in labels]
    per_anchor = []
    for r in range(N):
        P = [s for s in range(N) if s != r and label[s] == label[r]]
        if negatives == "unsupervised":
            Nr = [s for s in range(N) if s != r]
        else:
            Nr = [s for s in range(N) if label[s] != label[r]]
        if not P or not Nr:
            continue
        g = {s: torch.dot(Z[r], Z[s]) / temperature for s in set(P) | set(Nr)}
        w = [_eta(hardening, g[s]) for s in Nr]
        if sum(float(x.detach()) for x in w) == 0.0:  # threshold fallback: untilted
            w = [torch.ones((), dtype=torch.float64) for _ in Nr]
        E = sum(w_s * torch.exp(g[s]) for w_s, s in zip(w, Nr)) / sum(w)
        Mr = N - 2 if M is None else len(Nr) if M == "count" else M
        per_anchor.append([torch.log(1 + Mr * torch.exp(-g[p]) * E) for p in P])
    if reduction == "anchor_mean":
        return torch.stack([torch.stack(losses).mean() for losses in per_anchor]).mean()
    values = torch.stack([loss for losses in per_anchor for loss in losses])
    return {"mean": values.mean(), "sum": values.sum(), "none": values}[reduction]


# ------------------------------------------------------------------------------- graphs (Table II)

LOG2 = math.log(2.0)


def random_graph_problem(seed: int, nodes_per_graph=(3, 1, 4, 2, 5, 2), labels=(0, 1, 0, 2, 1, 0), d=5, scale=0.7):
    """Random float64 local ``(n, d)`` and global ``(G, d)`` head outputs, the graph of each node, labels."""
    generator = torch.Generator().manual_seed(seed)
    batch = torch.repeat_interleave(torch.arange(len(nodes_per_graph)), torch.tensor(nodes_per_graph))
    local = scale * torch.randn(int(batch.numel()), d, generator=generator, dtype=torch.float64)
    global_ = scale * torch.randn(len(nodes_per_graph), d, generator=generator, dtype=torch.float64)
    return local, global_, batch, torch.tensor(labels)


def reference_local_global(local, global_, batch, labels, supervised: bool, hardening, estimator: str):
    """The local-global objective written from its definition, one node (anchor) and one graph at a time.

    ``hardening``: a beta (exponential tilting), an hscl hardening or a callable on the score, or None.
    Weights: w = |N| eta(s) / sum_N eta(s) (all 1 when every eta is 0); JSD: E_neg - E_pos with E_pos over
    every node and E_neg over the nodes that have negatives (each the mean over its negatives of
    w (softplus(s) - log 2)); InfoNCE: -s_pos + log(exp(s_pos) + sum_N w exp(s)) averaged over nodes with negatives.
    """
    if hardening is None or isinstance(hardening, (int, float)):
        hardening = Exponential(float(hardening or 0.0))
    local, global_ = local.double(), global_.double()
    positives, negatives, infonce = [], [], []
    for a in range(local.shape[0]):
        own = int(batch[a])
        scores = [sum(local[a, k] * global_[j, k] for k in range(local.shape[1])) for j in range(global_.shape[0])]
        negative_set = [
            j for j in range(global_.shape[0]) if j != own and (not supervised or int(labels[j]) != int(labels[own]))
        ]
        s_pos = scores[own]
        positives.append(LOG2 - torch.log(1 + torch.exp(-s_pos)))
        if not negative_set:
            continue
        tilts = [_eta(hardening, scores[j]) for j in negative_set]
        if sum(float(t.detach()) for t in tilts) == 0.0:  # threshold fallback: untilted
            tilts = [torch.ones((), dtype=torch.float64) for _ in negative_set]
        total = sum(tilts)
        weights = [len(negative_set) * t / total for t in tilts]
        negatives.append(
            sum(w * (torch.log(1 + torch.exp(scores[j])) - LOG2) for w, j in zip(weights, negative_set))
            / len(negative_set)
        )
        infonce.append(
            -s_pos + torch.log(torch.exp(s_pos) + sum(w * torch.exp(scores[j]) for w, j in zip(weights, negative_set)))
        )
    if estimator == "jsd":
        e_neg = sum(negatives) / len(negatives) if negatives else torch.zeros((), dtype=torch.float64)
        return e_neg - sum(positives) / len(positives)
    return sum(infonce) / len(infonce)
