import pytest
import torch

from mgpp import CubicSparsity, GlobalPruner, MixtureGaussian, PriorAnnealing
from mgpp.schedules import NoPruning, calibrate_sigma0_sq


def test_cubic_values():
    s = CubicSparsity(final_sparsity=0.9, t_i=10, t_f=110, prune_every=10)
    assert s.sparsity(0) == 0.0
    assert s.sparsity(10) == 0.0
    assert s.sparsity(60) == pytest.approx(0.9 - 0.9 * 0.5**3)  # midpoint
    assert s.sparsity(35) == pytest.approx(0.9 - 0.9 * 0.75**3)
    assert s.sparsity(110) == 0.9
    assert s.sparsity(500) == 0.9
    sparsities = [s.sparsity(t) for t in range(0, 200)]
    assert sparsities == sorted(sparsities)  # monotone


def test_prior_weight_warmup():
    s = CubicSparsity(0.9, t_i=10, t_f=110, prune_every=10)
    assert [s.prior_weight(t) for t in (0, 1, 5, 10, 11, 300)] == [0.0, 0.1, 0.5, 1.0, 1.0, 1.0]
    assert CubicSparsity(0.9, t_i=0, t_f=10).prior_weight(0) == 1.0


def test_exact_pruning_steps():
    s = CubicSparsity(0.9, t_i=10, t_f=105, prune_every=10)
    steps = [t for t in range(1, 131) if s.prunes_at(t)]
    assert steps == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100] + list(range(105, 131))


def test_fractions_bind_to_steps():
    s = CubicSparsity(0.8, t_i=0.1, t_f=0.7, prune_every=5).bind(1000)
    assert (s.t_i, s.t_f) == (100, 700)
    assert s.sparsity(700) == 0.8
    with pytest.raises(RuntimeError, match="bind"):
        CubicSparsity(0.8, t_i=0.1, t_f=0.7).sparsity(3)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(final_sparsity=1.0), "final_sparsity=1.0"),
        (dict(final_sparsity=1.5), "final_sparsity=1.5"),
        (dict(final_sparsity=-0.1), "final_sparsity=-0.1"),
        (dict(t_i=50, t_f=50), "t_i=50, t_f=50"),
        (dict(t_i=0.5, t_f=0.2), "t_i=0.5, t_f=0.2"),
        (dict(t_f=1.5), "t_f=1.5"),
        (dict(prune_every=0), "prune_every=0"),
    ],
)
def test_bad_schedule_values_are_named(kwargs, message):
    base = dict(final_sparsity=0.9, t_i=10, t_f=100, prune_every=10)
    with pytest.raises(ValueError, match=message):
        CubicSparsity(**{**base, **kwargs})


def test_bind_rejects_schedules_that_cannot_finish():
    with pytest.raises(ValueError, match="beyond the 50 training steps"):
        CubicSparsity(0.9, t_i=10, t_f=100).bind(50)
    with pytest.raises(ValueError, match="t_f must come after t_i"):
        CubicSparsity(0.9, t_i=5, t_f=0.01).bind(100)  # step 5 vs step 1


def test_no_pruning():
    s = NoPruning()
    assert not any(s.prunes_at(t) for t in range(100)) and s.sparsity(50) == 0.0


def test_prior_annealing_calibrates_anneals_to_its_own_end_and_then_retrains_on_the_loss():
    torch.manual_seed(0)
    params = [torch.randn(64, 64) * 0.05, torch.randn(200) * 0.05]
    prior = MixtureGaussian(1e-7, 1e-10, 0.05)  # MGPP's spike; PA ends at its own sigma0_sq_final
    pa = PriorAnnealing(final_sparsity=0.8, t_f=80, sigma0_sq_final=1e-6).bind(100, prior, params, GlobalPruner())
    init_prior = pa.prior_at(0, prior)
    mags = torch.cat([p.abs().view(-1) for p in params])
    below = (mags < init_prior.crossover()).float().mean().item()
    assert below == pytest.approx(0.8, abs=1e-3)  # fraction below the initial crossover ~ target
    assert pa.sigma0_sq_init > pa.sigma0_sq_final
    # linear in sigma0_sq from init (t_i=0) to sigma0_sq_final (t_f), never to MGPP's 1e-10
    assert pa.prior_at(40, prior).sigma0_sq == pytest.approx(0.5 * (pa.sigma0_sq_init + 1e-6))
    assert pa.prior_at(80, prior).sigma0_sq == 1e-6
    assert pa.prior_at(80, prior).lam == prior.lam and pa.prior_at(80, prior).sigma1_sq == prior.sigma1_sq
    crossovers = [pa.prior_at(t, prior).crossover() for t in range(0, 81, 10)]
    assert crossovers == sorted(crossovers, reverse=True)
    assert [t for t in range(1, 101) if pa.prunes_at(t)] == [80]
    assert [t for t in range(1, 101) if pa.fixes_mask_at(t)] == [80]
    assert pa.sparsity(79) == 0.0 and pa.sparsity(80) == 0.8 and pa.sparsity(100) == 0.8
    # the prior acts up to the prune and is off in the fixed-mask retraining (paper line 102)
    assert [pa.prior_weight(t) for t in (1, 79, 80, 81, 100)] == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_prior_annealing_final_spike_must_lie_below_start_and_slab():
    params = [torch.randn(64, 64) * 0.05]
    with pytest.raises(ValueError, match="sigma0_sq_final"):
        PriorAnnealing(0.8, t_f=80, sigma0_sq_final=0.1).bind(100, MixtureGaussian(1e-7, 1e-10, 0.05), params,
                                                              GlobalPruner())
    with pytest.raises(ValueError, match="sigma0_sq_final"):
        PriorAnnealing(0.8, t_f=80, sigma0_sq_final=-1.0)
    with pytest.raises(ValueError, match="below the final spike variance"):
        PriorAnnealing(0.8, t_f=80, sigma0_sq_init=1e-8, sigma0_sq_final=1e-6).bind(
            100, MixtureGaussian(1e-7, 1e-10, 0.05), params, GlobalPruner())


def test_calibrate_sigma0_sq_inverts_crossover():
    prior = MixtureGaussian(1e-7, 1e-10, 0.1)
    for target in (1e-3, 0.02, 0.1):
        s0 = calibrate_sigma0_sq(prior, target)
        assert MixtureGaussian(1e-7, s0, 0.1).crossover() == pytest.approx(target, rel=1e-9)


def test_prior_annealing_needs_mixture_prior():
    from mgpp import L2

    with pytest.raises(TypeError, match="MixtureGaussian"):
        PriorAnnealing(0.5, t_f=10).bind(20, L2(0.1), [torch.randn(4, 4)], GlobalPruner())


def test_negative_steps_count_back_from_the_end():
    """PLATON/LoSparse write the end of the ramp as 'the last N steps at the final sparsity'."""
    bound = CubicSparsity(final_sparsity=0.9, t_i=100, t_f=-300, prune_every=10).bind(1000)
    assert (bound.t_i, bound.t_f) == (100, 700)
    assert bound.sparsity(700) == pytest.approx(0.9) and bound.sparsity(699) < 0.9
    with pytest.raises(ValueError, match="t_f must come after t_i"):
        CubicSparsity(final_sparsity=0.9, t_i=800, t_f=-300).bind(1000)
    with pytest.raises(ValueError, match="counts back past the start"):
        CubicSparsity(final_sparsity=0.9, t_i=-2000, t_f=-300).bind(1000)
