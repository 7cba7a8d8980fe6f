"""adapterkit.linalg against first principles: dense SVDs of the formed matrices (small sizes),
Eckart–Young, and the rank rules computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from adapterkit.linalg import dense_svd, energy_kept, factored_svd, randomized_svd, select_rank


def rand(g: torch.Generator, *shape: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=dtype)


@st.composite
def products(draw):
    """A sum of 1-3 low-rank products with weights, in fp64 (the oracle is the dense sum)."""
    m, n = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    ranks = draw(st.lists(st.integers(1, 8), min_size=1, max_size=3))
    weights = draw(st.lists(st.floats(-2, 2, allow_nan=False).filter(lambda w: abs(w) > 1e-3), min_size=len(ranks), max_size=len(ranks)))
    terms = [(rand(g, m, r), rand(g, r, n)) for r in ranks]
    return terms, weights


@given(products())
def test_factored_svd_is_the_svd_of_the_dense_sum(case):
    terms, weights = case
    dense = sum(w * (B @ A) for (B, A), w in zip(terms, weights))
    svd = factored_svd(terms, weights)
    m, n = dense.shape
    assert svd.rank == min(m, n, sum(B.shape[1] for B, _ in terms))
    reference = torch.linalg.svdvals(dense)
    torch.testing.assert_close(svd.S, reference[: svd.rank], rtol=1e-9, atol=1e-9)
    assert torch.all(reference[svd.rank:] < 1e-9)  # nothing beyond Σr
    torch.testing.assert_close(svd.dense(), dense, rtol=1e-9, atol=1e-9)
    eye = torch.eye(svd.rank, dtype=torch.float64)
    torch.testing.assert_close(svd.U.T @ svd.U, eye, rtol=0, atol=1e-9)
    torch.testing.assert_close(svd.Vh @ svd.Vh.T, eye, rtol=0, atol=1e-9)
    assert torch.all(svd.S[:-1] >= svd.S[1:])


@given(products(), st.integers(1, 10), st.booleans())
def test_truncation_is_the_best_rank_k_approximation(case, k, balanced):
    """Eckart–Young: the rank-k truncation's Frobenius error is sqrt(Σ_{i>=k} σᵢ²) of the dense
    sum, the least any rank-k matrix achieves; the factors reproduce it either way."""
    terms, weights = case
    dense = sum(w * (B @ A) for (B, A), w in zip(terms, weights))
    sv = torch.linalg.svdvals(dense)
    B, A = factored_svd(terms, weights).factors(k, balanced=balanced)
    assert B.shape == (dense.shape[0], k) and A.shape == (k, dense.shape[1])  # zero-padded past the rank
    err = torch.linalg.matrix_norm(dense - B @ A)
    torch.testing.assert_close(err, sv[k:].square().sum().sqrt(), rtol=1e-7, atol=1e-9)
    if balanced:  # canonical: both factors carry the same norms, column by row
        torch.testing.assert_close(B.norm(dim=0), A.norm(dim=1), rtol=1e-9, atol=1e-12)


def test_factored_svd_fp32_on_a_4096_module_and_zero_factors():
    g = torch.Generator().manual_seed(0)
    terms = [(rand(g, 4096, 16, dtype=torch.float32) * 0.02, rand(g, 16, 4096, dtype=torch.float32) * 0.02) for _ in range(2)]
    svd = factored_svd(terms, [0.7, 0.3])
    assert svd.S.dtype == torch.float32 and svd.rank == 32
    dense = 0.7 * terms[0][0].double() @ terms[0][1].double() + 0.3 * terms[1][0].double() @ terms[1][1].double()
    B, A = svd.factors(32)
    rel = torch.linalg.matrix_norm(B.double() @ A.double() - dense) / torch.linalg.matrix_norm(dense)
    assert rel < 1e-5
    zero = factored_svd([(torch.zeros(8, 4), rand(g, 4, 6))])  # PEFT's initial B = 0
    assert torch.all(zero.S == 0) and torch.all(zero.dense() == 0)


def test_factored_svd_refuses_mismatched_terms():
    g = torch.Generator().manual_seed(1)
    with pytest.raises(ValueError, match="do not make"):
        factored_svd([(rand(g, 8, 2), rand(g, 2, 6)), (rand(g, 8, 2), rand(g, 2, 5))])
    with pytest.raises(ValueError, match="weights"):
        factored_svd([(rand(g, 8, 2), rand(g, 2, 6))], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least one"):
        factored_svd([])


@given(st.integers(0, 2**31 - 1), st.integers(1, 6))
def test_randomized_svd_is_exact_for_low_rank_matrices(seed, r):
    g = torch.Generator().manual_seed(seed)
    M = rand(g, 40, r) @ rand(g, r, 30)
    svd = randomized_svd(M, r, oversample=4, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(svd.S, torch.linalg.svdvals(M)[:r], rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(svd.dense(), M, rtol=1e-8, atol=1e-8)


def test_randomized_svd_with_a_decaying_spectrum_and_reproducibly():
    g = torch.Generator().manual_seed(3)
    U, _ = torch.linalg.qr(rand(g, 200, 60))
    V, _ = torch.linalg.qr(rand(g, 150, 60))
    S = 0.5 ** torch.arange(60, dtype=torch.float64)
    M = (U * S) @ V.T
    a = randomized_svd(M, 8, generator=torch.Generator().manual_seed(7))
    b = randomized_svd(M, 8, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a.S, S[:8], rtol=1e-6, atol=0)
    assert torch.equal(a.U, b.U) and torch.equal(a.S, b.S)
    exact = dense_svd(M)
    torch.testing.assert_close(exact.S[:60], S, rtol=1e-9, atol=1e-12)
    assert torch.all(exact.S[60:] < 1e-12)


def test_select_rank_rules():
    S = torch.tensor([4.0, 2.0, 1.0, 1.0, 0.0])  # energies 16, 4, 1, 1, 0 of 22
    assert select_rank(S, rank=3) == 3 and select_rank(S, rank=9) == 9
    assert select_rank(S, energy=16 / 22) == 1
    assert select_rank(S, energy=16 / 22 + 1e-6) == 2
    assert select_rank(S, energy=20 / 22) == 2
    assert select_rank(S, energy=21 / 22) == 3
    assert select_rank(S, energy=1.0) == 4  # the zero singular value is never needed
    assert select_rank(S, sv_ratio=2) == 2  # σ >= 4 / 2
    assert select_rank(S, sv_ratio=4) == 4
    assert select_rank(torch.zeros(3), energy=0.9) == 1 and select_rank(torch.zeros(3), sv_ratio=2) == 1
    assert energy_kept(S, 2) == pytest.approx(20 / 22) and energy_kept(torch.zeros(2), 1) == 1.0
    for bad in ({}, {"rank": 2, "energy": 0.5}, {"rank": 0}, {"rank": 2.0}, {"energy": 0.0}, {"energy": 1.5}, {"sv_ratio": 0.5}):
        with pytest.raises(ValueError):
            select_rank(S, **bad)


@pytest.mark.cuda
def test_factored_svd_on_cuda_matches_cpu():
    g = torch.Generator().manual_seed(4)
    terms = [(rand(g, 512, 16, dtype=torch.float32), rand(g, 16, 384, dtype=torch.float32)) for _ in range(3)]
    cpu = factored_svd(terms, [0.5, -1.0, 2.0])
    gpu = factored_svd(terms, [0.5, -1.0, 2.0], device="cuda")
    assert gpu.U.device.type == "cuda"
    torch.testing.assert_close(gpu.S.cpu(), cpu.S, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gpu.dense().cpu(), cpu.dense(), rtol=1e-4, atol=1e-4)


def test_all_finite_and_nonfinite_count_see_every_value():
    """The sum shortcut: a sum that overflows from finite values is still all finite; one NaN
    or Inf anywhere, in any float dtype, is seen and counted (first principles: math.isfinite)."""
    from adapterkit.linalg.norms import all_finite, nonfinite_count

    big = torch.full((8,), 3e38)  # sums to Inf, every value finite
    assert all_finite(big) and nonfinite_count(big) == 0
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for bad in (float("nan"), float("inf"), float("-inf")):
            x = torch.zeros(1000, dtype=dtype)
            x[[3, 999]] = bad
            expected = sum(not math.isfinite(float(v)) for v in x)
            assert not all_finite(x) and nonfinite_count(x) == expected == 2, (dtype, bad)
    assert all_finite(torch.zeros(0)) and all_finite(torch.arange(5))
    # Inf and -Inf that cancel to NaN, and a pair whose sum is finite only in exact arithmetic
    assert nonfinite_count(torch.tensor([float("inf"), float("-inf"), 1.0])) == 2


def test_frobenius_is_the_exact_norm_to_1e_6_at_tens_of_millions_of_values():
    from adapterkit.linalg.norms import frobenius

    torch.manual_seed(0)
    for shape in [(0,), (5,), (4097,), (3, 5000), (2, 3, 700), (20_000, 2048), (45_000_000,)]:
        x = torch.randn(*shape) * 1e-3
        exact = math.sqrt(sum(float(v) ** 2 for v in x.reshape(-1)[:5000])) if x.numel() <= 5000 else float(x.double().norm())
        assert abs(frobenius(x) - exact) <= 1e-6 * exact + 1e-30, shape
    x = torch.randn(4, 300).to(torch.bfloat16)
    assert abs(frobenius(x) - float(x.double().norm())) <= 1e-6 * float(x.double().norm())
