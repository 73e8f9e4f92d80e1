import math

import pytest
import torch

from mgpp import priors
from mgpp.priors import L2, Laplace, MixtureGaussian, NoPrior

SETTINGS = [  # (lam, sigma0_sq, sigma1_sq): the paper's grid plus harsher corners
    (1e-7, 1e-9, 0.05),
    (1e-7, 1e-10, 0.1),
    (1e-7, 1e-12, 0.1),
    (1e-3, 1e-6, 0.5),
    (0.3, 1e-4, 1.0),
]


def probe_points(prior: MixtureGaussian) -> torch.Tensor:
    c = prior.crossover()
    pts = [0.0, 1e-6, c, 0.5 * c, 2 * c, 1.0, 10.0, 3.7e-3, 0.02]
    return torch.tensor(sorted({s * x for x in pts for s in (1, -1)}), dtype=torch.float64)


@pytest.mark.parametrize("lam,s0,s1", SETTINGS)
def test_grad_matches_autograd_of_neg_log_density(lam, s0, s1):
    prior = MixtureGaussian(lam, s0, s1)
    theta = probe_points(prior).requires_grad_(True)
    (auto,) = torch.autograd.grad(prior.neg_log_density(theta).sum(), theta)
    torch.testing.assert_close(prior.grad(theta.detach()), auto, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_inf_or_nan_for_tiny_spike(dtype):
    prior = MixtureGaussian(1e-7, 1e-12, 0.1)
    theta = torch.cat([torch.linspace(-10, 10, 20001, dtype=dtype), torch.tensor([0.0, 1e-7, -1e-7], dtype=dtype)])
    for out in (prior.neg_log_density(theta), prior.grad(theta)):
        assert torch.isfinite(out).all()
    grad = torch.zeros_like(theta, dtype=torch.float32)
    prior.add_grad_([theta.float()], [grad], scale=1e-3)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("lam,s0,s1", SETTINGS)
def test_crossover_is_where_weighted_components_meet(lam, s0, s1):
    prior = MixtureGaussian(lam, s0, s1)
    c = prior.crossover()

    def log_parts(x):
        t = torch.tensor([x], dtype=torch.float64)
        return [float(v) for v in prior._log_weighted_components(t)]

    spike, slab = log_parts(c)
    assert spike == pytest.approx(slab, abs=1e-8)
    spike, slab = log_parts(0.9 * c)
    assert spike > slab  # spike dominates inside
    spike, slab = log_parts(1.1 * c)
    assert spike < slab  # slab dominates outside
    # independent closed form: theta^2 = ln((1-lam)/lam * sqrt(s1/s0)) / (1/(2 s0) - 1/(2 s1))
    closed = math.sqrt(math.log((1 - lam) / lam * math.sqrt(s1 / s0)) / (0.5 / s0 - 0.5 / s1))
    assert c == pytest.approx(closed, rel=1e-12)


def test_spike_probability_is_eq4_g():
    prior = MixtureGaussian(1e-3, 1e-4, 0.5)
    theta = torch.linspace(-0.1, 0.1, 101, dtype=torch.float64)
    g = 1.0 / (torch.exp(prior.c2 * theta**2 + prior.c1) + 1.0)
    torch.testing.assert_close(prior.spike_probability(theta), g)


@pytest.mark.parametrize("prior", [MixtureGaussian(1e-7, 1e-10, 0.05), MixtureGaussian(1e-3, 1e-4, 0.5), L2(0.05),
                                   Laplace(0.1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_grad_equals_scaled_grad_over_many_tensors(prior, dtype, monkeypatch):
    monkeypatch.setattr(priors, "BUCKET_NUMEL", 50)  # force several buckets
    torch.manual_seed(0)
    params = [(torch.randn(s) * 0.02).to(dtype) for s in [(7, 5), (40,), (3, 3, 3), (90,)]]
    grads = [torch.randn_like(p) for p in params]
    expected = [g.double() + 0.3 * prior.grad(p.double()) for p, g in zip(params, grads)]
    prior.add_grad_(params, grads, scale=0.3)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    for g, e in zip(grads, expected):
        assert g.dtype == dtype
        torch.testing.assert_close(g.double(), e.to(dtype).double(), **tol)


def test_l2_and_no_prior():
    theta = torch.linspace(-2, 2, 41, dtype=torch.float64).requires_grad_(True)
    l2 = L2(0.1)
    (auto,) = torch.autograd.grad(l2.neg_log_density(theta).sum(), theta)
    torch.testing.assert_close(l2.grad(theta.detach()), theta.detach() / 0.1)
    torch.testing.assert_close(auto, theta.detach() / 0.1)
    assert l2.crossover() is None
    none = NoPrior()
    g = torch.ones(5)
    none.add_grad_([torch.randn(5)], [g], 1.0)
    assert torch.equal(g, torch.ones(5)) and not none.active and none.crossover() is None


@pytest.mark.parametrize(
    "kwargs,names",
    [
        (dict(lam=0.0), "lam=0.0"),
        (dict(lam=1.0), "lam=1.0"),
        (dict(lam=-0.2), "lam=-0.2"),
        (dict(sigma0_sq=0.1, sigma1_sq=0.05), "sigma0_sq=0.1 >= sigma1_sq=0.05"),
        (dict(sigma0_sq=0.05, sigma1_sq=0.05), "sigma0_sq=0.05 >= sigma1_sq=0.05"),
        (dict(sigma0_sq=0.0), "sigma0_sq=0.0"),
        (dict(sigma1_sq=-1.0), "sigma1_sq=-1.0"),
    ],
)
def test_bad_prior_values_are_named(kwargs, names):
    with pytest.raises(ValueError, match=names.replace("(", r"\(")):
        MixtureGaussian(**kwargs)


def test_bad_l2_variance():
    with pytest.raises(ValueError, match="sigma_sq=0"):
        L2(0)


@pytest.mark.parametrize("prior", [MixtureGaussian(1e-7, 1e-10, 0.05), L2(0.05), Laplace(0.1)])
def test_penalty_is_sum_of_neg_log_density_from_zero(prior):
    torch.manual_seed(0)
    params = [torch.randn(10, 3) * 0.05, torch.randn(7)]
    expected = sum(float((prior.neg_log_density(p.double()) - prior.neg_log_density(torch.zeros(1).double())).sum())
                   for p in params)
    assert prior.penalty(params) == pytest.approx(expected, rel=1e-5)
    assert prior.penalty([torch.zeros(5)]) == 0.0
    assert prior.penalty(params) > 0


@pytest.mark.compiles
def test_compiled_prior_gradient_matches_foreach_without_recompiling():
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    params = [torch.randn(16, 8) * 0.02, torch.randn(40) * 0.02, torch.randn(8, 8) * 1e-5]
    base = [torch.randn_like(p) for p in params]
    compiled = MixtureGaussian(1e-7, 1e-6, 0.05, compile=True)
    eager = MixtureGaussian(1e-7, 1e-6, 0.05)
    for step, (sigma0_sq, scale) in enumerate([(1e-6, 0.3), (1e-7, 0.1), (1e-8, 1.0)]):
        fused = [g.clone() for g in base]
        ref = [g.clone() for g in base]
        MixtureGaussian(1e-7, sigma0_sq, 0.05, compile=True).add_grad_(params, fused, scale)
        MixtureGaussian(1e-7, sigma0_sq, 0.05).add_grad_(params, ref, scale)
        for f, r in zip(fused, ref):
            torch.testing.assert_close(f, r, rtol=1e-5, atol=1e-5)
        if step == 0:
            frames = counters["stats"]["unique_graphs"]
    assert counters["stats"]["unique_graphs"] == frames  # new sigma0_sq / scale: no recompilation
    assert compiled.crossover() == eager.crossover()


def test_laplace_is_the_l1_penalty():
    prior = Laplace(0.1)
    theta = torch.tensor([-0.3, 0.0, 0.2], dtype=torch.float64)
    assert torch.allclose(prior.neg_log_density(theta) - prior.neg_log_density(torch.zeros((), dtype=torch.float64)),
                          theta.abs() / 0.1)
    assert torch.equal(prior.grad(theta), torch.sign(theta) / 0.1)
    with pytest.raises(ValueError, match="scale"):
        Laplace(0.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mixture_gradient_in_half_precision_is_the_float32_one(dtype):
    """1/sigma0_sq = 1e10 overflows fp16: half weights get the float32 gradient of their value, and
    adding it (scaled by 1/n) into half gradients stays finite."""
    prior = MixtureGaussian(1e-7, 1e-10, 0.05)
    theta = torch.cat([torch.zeros(1), torch.logspace(-8, 0, 200)]).to(dtype)
    got = prior.grad(theta)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got, prior.grad(theta.float()), rtol=0, atol=0)
    assert got[0] == 0  # theta = 0: no pull (NaN in half precision before)
    for n in (1, 1000):
        grads = [torch.zeros_like(theta)]
        prior.add_grad_([theta], grads, 1.0 / n)
        expected = (prior.grad(theta.float()) / n).to(dtype)
        assert torch.isfinite(grads[0]).all() or n == 1  # at n=1 the true value exceeds fp16's range
        if n > 1:
            torch.testing.assert_close(grads[0], expected, rtol=1e-2, atol=0)


def test_variances_below_the_float32_normal_range_are_refused():
    with pytest.raises(ValueError, match="smallest float32 normal"):
        MixtureGaussian(1e-7, 1e-45, 0.05)
