"""Geometry diagnostics against float64 loops and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hscl.geometry import (
    alignment,
    alphas,
    assumption1,
    class_means,
    diagnose,
    effective_rank,
    isotropy,
    loss_quartet,
    neural_collapse,
    spectrum,
    uniformity,
)
from hscl.hardening import Exponential, Threshold
from reference import reference_loss


def batch(seed: int, B: int = 12, V: int = 2, d: int = 5, classes: int = 3, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    z = scale * torch.randn(B, V, d, generator=g, dtype=torch.float64)
    labels = torch.arange(B) % classes
    labels = labels[torch.randperm(B, generator=g)]
    return z, labels


def rows_of(z):
    B, V, _ = z.shape
    return [z[i, v] for v in range(V) for i in range(B)]  # r = v * B + i


def unit(x):
    return x / math.sqrt(float((x * x).sum()))


def eta_loop(hardening, g: float) -> float:
    if isinstance(hardening, Exponential):
        return math.exp(hardening.beta * g)
    return 1.0 if math.exp(g) >= hardening.tau else 0.0


# --------------------------------------------------------------------------------------------
# Lemma 1's quartet


@pytest.mark.parametrize("hardening", [Exponential(1.0), Exponential(2.5), Threshold(math.exp(-0.5))])
def test_quartet_equals_the_float64_loop(hardening):
    z, labels = batch(0)
    q = loss_quartet(z, labels, hardening, temperature=0.5)
    common = {"positives": "views", "temperature": 0.5}
    expected = {
        "ucl": reference_loss(z, labels, negatives="unsupervised", **common),
        "h-ucl": reference_loss(z, labels, negatives="unsupervised", hardening=hardening, **common),
        "scl": reference_loss(z, labels, negatives="supervised", **common),
        "h-scl": reference_loss(z, labels, negatives="supervised", hardening=hardening, **common),
    }
    got = {"ucl": q.ucl, "h-ucl": q.h_ucl, "scl": q.scl, "h-scl": q.h_scl}
    for method, value in expected.items():
        assert got[method] == pytest.approx(float(value), rel=1e-12), method


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("beta", [0.3, 1.0, 4.0])
def test_tilting_never_lowers_the_loss(seed, beta):
    z, labels = batch(seed, B=16, d=8, classes=4)
    q = loss_quartet(z, labels, Exponential(beta))
    assert q.h_scl >= q.scl - 1e-12
    assert q.h_ucl >= q.ucl - 1e-12
    # per pair as well (Chebyshev's sum inequality holds anchor by anchor)
    assert (q.per_pair["h-scl"] >= q.per_pair["scl"] - 1e-12).all()
    assert (q.per_pair["h-ucl"] >= q.per_pair["ucl"] - 1e-12).all()


def test_beta_zero_quartet_collapses_to_pairs():
    z, labels = batch(3)
    q = loss_quartet(z, labels, Exponential(0.0))
    assert q.h_ucl == pytest.approx(q.ucl, rel=1e-14)
    assert q.h_scl == pytest.approx(q.scl, rel=1e-14)


# --------------------------------------------------------------------------------------------
# Assumption 1, Lemma 1, Proposition 2


def loop_sets(z, labels, temperature=0.5):
    R = [unit(r) for r in rows_of(z)]
    B = z.shape[0]
    N = len(R)
    inst = [r % B for r in range(N)]
    lab = [int(labels[r % B]) for r in range(N)]
    g = [[float(torch.dot(R[r], R[s])) / temperature for s in range(N)] for r in range(N)]
    unsup = [[s for s in range(N) if inst[s] != inst[r]] for r in range(N)]
    sup = [[s for s in range(N) if lab[s] != lab[r]] for r in range(N)]
    hcol = [[s for s in range(N) if inst[s] != inst[r] and lab[s] == lab[r]] for r in range(N)]
    return g, unsup, sup, hcol


@pytest.mark.parametrize("hardening", [Exponential(1.0), Exponential(2.0), Threshold(math.exp(-0.1))])
def test_assumption1_matches_the_loop(hardening):
    z, labels = batch(5, B=14, classes=3)
    a1 = assumption1(z, labels, hardening)
    g, _, sup, hcol = loop_sets(z, labels)
    holds, excluded = [], 0
    for r in range(len(g)):

        def tilted(S, r=r):
            w = [eta_loop(hardening, g[r][s]) for s in S]
            return sum(wi * math.exp(g[r][s]) for wi, s in zip(w, S)) / sum(w) if sum(w) > 0 else None

        e_col, e_scl = tilted(hcol[r]), tilted(sup[r])
        if e_col is None or e_scl is None:
            excluded += 1
            assert math.isnan(float(a1.holds[r]))
            continue
        assert float(a1.log_e_hcol[r]) == pytest.approx(math.log(e_col), rel=1e-12, abs=1e-12)
        assert float(a1.log_e_hscl[r]) == pytest.approx(math.log(e_scl), rel=1e-12, abs=1e-12)
        holds.append(e_col >= e_scl)
        assert float(a1.holds[r]) == float(e_col >= e_scl)
    assert a1.num_excluded == excluded
    assert a1.fraction == pytest.approx(sum(holds) / len(holds))


def test_assumption1_counts_empty_sets():
    # a class with a single sample has no Hcol set (its other view is the same instance)
    z, _ = batch(1, B=6)
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    a1 = assumption1(z, labels, Exponential(1.0))
    assert a1.num_empty_hcol == 2  # both views of the lone class-2 sample
    assert a1.num_empty_hscl == 0
    assert a1.num_excluded == 2
    assert torch.isnan(a1.holds[5]) and torch.isnan(a1.holds[11])
    # one class only: every H-SCL set is empty, the fraction is undefined, not 0
    a1 = assumption1(z, torch.zeros(6, dtype=torch.long), Exponential(1.0))
    assert a1.num_empty_hscl == 12 and math.isnan(a1.fraction)


@pytest.mark.parametrize("seed", range(5))
def test_lemma1_holds_where_assumption1_holds(seed):
    z, labels = batch(seed, B=16, d=4, classes=4)
    hardening = Exponential(1.5)
    a1 = assumption1(z, labels, hardening)
    q = loss_quartet(z, labels, hardening)
    # V = 2 views and every anchor valid: one pair per anchor row, in row order
    assert q.per_pair["h-scl"].shape == (32,) and a1.num_excluded == 0
    gap = q.per_pair["h-ucl"] - q.per_pair["h-scl"]
    margin = a1.log_e_hcol - a1.log_e_hscl
    decided = margin.abs() > 1e-9
    assert ((gap >= -1e-12) == (margin >= 0))[decided].all()
    assert 0 < a1.fraction < 1  # random batches: the assumption holds for some anchors only


@pytest.mark.parametrize("hardening", [Exponential(0.7), Exponential(3.0), Threshold(math.exp(-0.2))])
def test_proposition2_and_alphas_loop(hardening):
    z, labels = batch(7, B=10, classes=3)
    al = alphas(z, labels, hardening)
    torch.testing.assert_close(al["h-ucl"], al["h-scl"] + al["hcol"], rtol=1e-13, atol=0)
    g, unsup, sup, hcol = loop_sets(z, labels)
    for r in range(len(g)):
        for key, S in (("h-ucl", unsup[r]), ("h-scl", sup[r]), ("hcol", hcol[r])):
            value = sum(eta_loop(hardening, g[r][s]) for s in S) / len(unsup[r])
            assert float(al[key][r]) == pytest.approx(value, rel=1e-12, abs=1e-15)


# --------------------------------------------------------------------------------------------
# neural collapse


def simplex_etf(C: int, d: int, seed: int = 0) -> torch.Tensor:
    """C unit vectors in R^d with pairwise cosine -1/(C-1), randomly rotated."""
    M = torch.eye(C, dtype=torch.float64) - 1.0 / C
    M = M / M.norm(dim=1, keepdim=True)
    Q, _ = torch.linalg.qr(torch.randn(d, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return M @ Q.T  # (C, d)


def test_collapsed_simplex_etf_has_zero_nc1_and_nc2():
    C, d, n = 5, 8, 7
    means = 3.0 * simplex_etf(C, d)
    h = means.repeat_interleave(n, 0)
    labels = torch.arange(C).repeat_interleave(n)
    nc = neural_collapse(h, labels)
    assert nc.nc1 == pytest.approx(0.0, abs=1e-20)
    assert nc.nc2_etf == pytest.approx(0.0, abs=1e-12)
    assert nc.nc2_cos_std == pytest.approx(0.0, abs=1e-12)
    assert nc.nc2_norm_cv == pytest.approx(0.0, abs=1e-12)
    assert nc.ncc_accuracy == 1.0
    # shifted by a global offset: still an ETF after centring
    assert neural_collapse(h + 5.0, labels).nc2_etf == pytest.approx(0.0, abs=1e-12)


def test_nc_against_a_numpy_loop():
    gen = torch.Generator().manual_seed(2)
    C, d = 4, 6
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3])
    h = torch.randn(len(labels), d, generator=gen, dtype=torch.float64) + 2 * torch.randn(C, d, generator=gen)[labels]
    nc = neural_collapse(h, labels)
    X, y = h.numpy(), labels.numpy()
    mus = [X[y == c].mean(0) for c in range(C)]
    mu_g = sum(mus) / C
    S_W = np.zeros((d, d))
    for i in range(len(y)):
        v = (X[i] - mus[y[i]])[:, None]
        S_W += v @ v.T
    S_W /= len(y)
    S_B = sum(((m - mu_g)[:, None] @ (m - mu_g)[None, :]) for m in mus) / C
    assert nc.nc1 == pytest.approx(np.trace(S_W @ np.linalg.pinv(S_B, rcond=1e-10)) / C, rel=1e-9)
    cs = [m - mu_g for m in mus]
    cos = [cs[a] @ cs[b] / np.linalg.norm(cs[a]) / np.linalg.norm(cs[b]) for a in range(C) for b in range(C) if a != b]
    assert nc.nc2_cos_std == pytest.approx(np.std(cos), rel=1e-9)
    assert nc.nc2_etf == pytest.approx(np.mean([abs(c + 1 / (C - 1)) for c in cos]), rel=1e-9)
    norms = [np.linalg.norm(c) for c in cs]
    assert nc.nc2_norm_cv == pytest.approx(np.std(norms) / np.mean(norms), rel=1e-9)
    ncc = np.mean([np.argmin([np.linalg.norm(X[i] - m) for m in mus]) == y[i] for i in range(len(y))])
    assert nc.ncc_accuracy == pytest.approx(ncc)
    means, classes = class_means(h, labels + 10)
    assert classes.tolist() == [10, 11, 12, 13]
    torch.testing.assert_close(means, torch.tensor(np.stack(mus)))


# --------------------------------------------------------------------------------------------
# dimensional collapse


def test_gaussian_embeddings_have_effective_rank_close_to_d():
    x = torch.randn(40000, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s = spectrum(x)
    assert 15.8 < s.effective_rank <= 16.0
    assert s.dims_99 == 16


def test_effective_rank_closed_forms():
    assert effective_rank(torch.tensor([2.0, 2.0, 2.0, 0.0, 0.0])) == pytest.approx(3.0)
    p = np.array([0.5, 0.25, 0.25])
    assert effective_rank(torch.tensor([2.0, 1.0, 1.0])) == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert effective_rank(torch.zeros(4)) == 0.0
    # data confined to a k-dimensional subspace: rank k, 3 equal directions
    gen = torch.Generator().manual_seed(1)
    basis, _ = torch.linalg.qr(torch.randn(10, 3, generator=gen, dtype=torch.float64))
    x = torch.randn(5000, 3, generator=gen, dtype=torch.float64) @ basis.T
    s = spectrum(x)
    assert s.dims_99 == 3 and 2.9 < s.effective_rank_cov <= s.effective_rank < 3.0 + 1e-9
    assert (s.eigenvalues[3:] < 1e-12).all() and (s.singular_values[3:] < 1e-9).all()


def _matrix_with_singular_values(values, N: int, d: int, seed: int) -> np.ndarray:
    """An ``(N, d)`` matrix of zero column means whose singular values are ``values`` (then zeros)."""
    rng = np.random.default_rng(seed)
    k = len(values)
    a = rng.standard_normal((N, k))
    a -= a.mean(0)  # columns orthogonal to the ones vector: centring leaves the matrix as it is
    U, _ = np.linalg.qr(a)
    V, _ = np.linalg.qr(rng.standard_normal((d, k)))
    return U @ np.diag(values) @ V.T


@pytest.mark.parametrize("values", [[3.0, 3.0, 3.0, 3.0], [5.0, 2.0, 1.0, 0.5, 0.1], [10.0, 1e-3, 1e-3], [7.0]])
def test_effective_rank_against_numpy_svd_both_conventions(values):
    N, d = 50, 6
    x = _matrix_with_singular_values(values, N, d, seed=len(values))
    s_np = np.linalg.svd(x - x.mean(0), compute_uv=False)  # float64, the independent computation
    np.testing.assert_allclose(s_np[: len(values)], sorted(values, reverse=True), rtol=1e-10)

    def entropy_rank(w):
        p = np.asarray(w, dtype=np.float64)
        p = p[p > 1e-12 * p.max()] / p.sum()
        return math.exp(-(p * np.log(p)).sum())

    spec = spectrum(torch.from_numpy(x))
    np.testing.assert_allclose(spec.singular_values.numpy(), s_np, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(spec.eigenvalues.numpy(), s_np**2 / N, rtol=1e-10, atol=1e-12)
    assert spec.effective_rank == pytest.approx(entropy_rank(values), rel=1e-9)
    assert spec.effective_rank_cov == pytest.approx(entropy_rank(np.square(values)), rel=1e-9)
    assert spec.as_dict()["effective_rank"] == spec.effective_rank
    assert spec.as_dict()["effective_rank_cov"] == spec.effective_rank_cov
    if len(set(values)) == 1:  # equal singular values: both conventions give the rank
        assert spec.effective_rank == pytest.approx(len(values), rel=1e-9)
        assert spec.effective_rank_cov == pytest.approx(len(values), rel=1e-9)
    else:  # squaring weighs the leading directions more: the covariance form is strictly lower
        assert spec.effective_rank_cov < spec.effective_rank


def test_effective_rank_conventions_ordered_on_random_spectra():
    rng = np.random.default_rng(7)
    for _ in range(200):
        s = rng.exponential(size=rng.integers(1, 12))
        assert effective_rank(torch.from_numpy(s**2)) <= effective_rank(torch.from_numpy(s)) + 1e-12


def test_dims_99_loop():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3000, 6, generator=gen, dtype=torch.float64) * torch.tensor([10.0, 3.0, 1.0, 0.5, 0.1, 0.01])
    s = spectrum(x)
    cov = np.cov(x.numpy().T, bias=True)
    ev = np.sort(np.linalg.eigvalsh(cov))[::-1]
    np.testing.assert_allclose(s.eigenvalues.numpy(), ev, rtol=1e-9, atol=1e-12)
    k = next(k for k in range(1, 7) if ev[:k].sum() / ev.sum() >= 0.99)
    assert s.dims_99 == k


# --------------------------------------------------------------------------------------------
# alignment, uniformity, isotropy


def test_alignment_and_uniformity_loops():
    z, _ = batch(8, B=6, V=3, d=4)
    R = [unit(r) for r in rows_of(z)]
    B, V = 6, 3
    pos = [
        float(((R[v * B + i] - R[u * B + i]) ** 2).sum()) for i in range(B) for v in range(V) for u in range(v + 1, V)
    ]
    assert alignment(z) == pytest.approx(sum(pos) / len(pos), rel=1e-12)
    pairs = [float(((R[a] - R[b]) ** 2).sum()) for a in range(len(R)) for b in range(a + 1, len(R))]
    expected = math.log(sum(math.exp(-2 * p) for p in pairs) / len(pairs))
    assert uniformity(z) == pytest.approx(expected, rel=1e-12)


def test_isotropy_closed_forms():
    x = torch.zeros(10, 5, dtype=torch.float64)
    x[:, 0] = 1.0  # Z(e_0) = 10 e, Z(-e_0) = 10 / e, Z(c) = 10 on the other eigenvectors
    assert isotropy(x) == pytest.approx(math.exp(-1.0), rel=1e-12)  # e_0 oriented positive: 10 / (10 e)
    assert isotropy(-x) == pytest.approx(math.exp(-1.0), rel=1e-12)  # e_0 again: (10 / e) / 10
    assert isotropy(x, symmetric=True) == pytest.approx(math.exp(-2.0), rel=1e-12)
    eye = torch.eye(4, dtype=torch.float64)
    assert isotropy(torch.cat([eye, -eye])) == pytest.approx(1.0, rel=1e-12)
    assert isotropy(torch.cat([eye, -eye]), symmetric=True) == pytest.approx(1.0, rel=1e-12)
    # a shifted cloud is less isotropic than a centred one
    gen = torch.Generator().manual_seed(0)
    cloud = torch.nn.functional.normalize(torch.randn(500, 8, generator=gen, dtype=torch.float64), dim=1)
    assert isotropy(cloud + 0.5) < isotropy(cloud)


def _isotropy_loop(x: np.ndarray, symmetric: bool) -> float:
    """Mu and Viswanath's score by a float64 loop over numpy's eigenvectors of X^T X, each oriented with its
    entry of largest magnitude positive (and their negatives when ``symmetric``)."""
    _, vectors = np.linalg.eigh(x.T @ x)
    cs = []
    for k in range(vectors.shape[1]):
        c = vectors[:, k]
        c = c if c[np.argmax(np.abs(c))] > 0 else -c
        cs += [c, -c] if symmetric else [c]
    Z = [sum(math.exp(float(c @ row)) for row in x) for c in cs]
    return min(Z) / max(Z)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_isotropy_equals_the_float64_loop_over_numpy_eigenvectors(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((60, 5)) * np.array([2.0, 1.0, 0.7, 0.4, 0.2]) + 0.3
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for symmetric in (False, True):
        expected = _isotropy_loop(x, symmetric)
        assert isotropy(torch.from_numpy(x), symmetric=symmetric) == pytest.approx(expected, rel=1e-10)
    # (B, V, d) input is the same rows
    assert isotropy(torch.from_numpy(x).view(30, 2, 5)) == pytest.approx(_isotropy_loop(x, False), rel=1e-10)
    # the default form differs from the symmetric one on a shifted cloud
    assert isotropy(torch.from_numpy(x), symmetric=True) < isotropy(torch.from_numpy(x))


def test_symmetric_isotropy_never_above_the_default():
    gen = torch.Generator().manual_seed(3)
    for k in range(40):
        n, d = 5 + k, 2 + k % 6
        x = torch.randn(n, d, generator=gen, dtype=torch.float64) * torch.rand(d, generator=gen, dtype=torch.float64)
        x = x + torch.randn(d, generator=gen, dtype=torch.float64) * (k % 3)
        assert isotropy(x, symmetric=True) <= isotropy(x) + 1e-15
    with pytest.raises(TypeError, match="symmetric must be True or False"):
        isotropy(x, symmetric="yes")


# --------------------------------------------------------------------------------------------
# diagnose and errors


def test_diagnose_collects_every_metric():
    z, labels = batch(9, B=20, d=6, classes=4)
    metrics, eigenvalues = diagnose(z, labels, Exponential(1.0))
    q = loss_quartet(z, labels, Exponential(1.0))
    assert metrics["loss_h_scl"] == q.h_scl and metrics["loss_ucl"] == q.ucl
    assert metrics["assumption1"] == assumption1(z, labels, Exponential(1.0)).fraction
    assert metrics["alpha_h_ucl"] == pytest.approx(metrics["alpha_h_scl"] + metrics["alpha_hcol"], rel=1e-12)
    assert eigenvalues.shape == (6,)
    rows = z.transpose(0, 1).reshape(-1, 6).numpy()
    cov_ev = np.sort(np.linalg.eigvalsh(np.cov(rows.T, bias=True)))[::-1]
    np.testing.assert_allclose(eigenvalues.numpy(), cov_ev, rtol=1e-9, atol=1e-12)
    s = np.linalg.svd(rows - rows.mean(0), compute_uv=False)
    p = s / s.sum()
    assert metrics["effective_rank"] == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-9)
    q = cov_ev / cov_ev.sum()
    assert metrics["effective_rank_cov"] == pytest.approx(math.exp(-(q * np.log(q)).sum()), rel=1e-9)
    assert metrics["isotropy"] == pytest.approx(_isotropy_loop(rows, symmetric=False), rel=1e-10)
    assert all(isinstance(v, float) for v in metrics.values())
    assert metrics["mean_norm"] == pytest.approx(float(z.norm(dim=-1).mean()))


def test_bad_input_errors():
    z, labels = batch(0)
    with pytest.raises(ValueError, match=r"shape \(B, V, d\)"):
        assumption1(z[0], labels)
    with pytest.raises(ValueError, match="labels must have shape"):
        assumption1(z, labels[:3])
    with pytest.raises(TypeError, match="integer dtype"):
        alphas(z, labels.float())
    with pytest.raises(ValueError, match="temperature"):
        loss_quartet(z, labels, temperature=0)
    with pytest.raises(ValueError, match="NaN"):
        assumption1(z * float("nan"), labels)
    with pytest.raises(ValueError, match="at least 2 views"):
        loss_quartet(z[:, :1], labels)
    with pytest.raises(ValueError, match="at least 2 classes"):
        neural_collapse(z[:, 0], torch.zeros(12, dtype=torch.long))
    with pytest.raises(TypeError, match="hardening"):
        assumption1(z, labels, hardening=3)
    with pytest.raises(ValueError, match="non-negative"):
        alphas(z, labels, hardening=lambda g: g)
