"""Pruning methods: a prior, a schedule, a pruner and a target selector, composed.

The training code only ever sees a :class:`PruningMethod`; the five methods of the
paper are presets that fill its slots differently (no branching on method names):

========  =====================  ======================================================
method    prior                  schedule
========  =====================  ======================================================
dense     NoPrior                NoPruning
gmp       NoPrior                CubicSparsity (gradual magnitude pruning)
l2        L2(sigma1_sq)          CubicSparsity
mgpp      MixtureGaussian        CubicSparsity (Algorithm 1)
pa        MixtureGaussian        PriorAnnealing (one-shot prune, then the loss only, mask fixed)
========  =====================  ======================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .priors import L2, MixtureGaussian, NoPrior, Prior
from .pruning import GlobalPruner, TargetSelector
from .schedules import PA_SIGMA0_SQ_FINAL, CubicSparsity, NoPruning, PriorAnnealing, Schedule, Step

__all__ = ["PruningMethod", "dense", "gmp", "l2", "mgpp", "pa", "PRESETS", "preset"]

#: Paper defaults (Sec. 4): lambda = 1e-7, sigma0^2 in {1e-9, 1e-10}, sigma1^2 in {0.05, 0.1}.
LAM, SIGMA0_SQ, SIGMA1_SQ = 1e-7, 1e-10, 0.05


@dataclass
class PruningMethod:
    """Everything the pruning callback needs to know about *how* to prune."""

    prior: Prior = field(default_factory=NoPrior)
    schedule: Schedule = field(default_factory=NoPruning)
    pruner: GlobalPruner = field(default_factory=GlobalPruner)
    targets: TargetSelector = field(default_factory=TargetSelector)


def dense() -> PruningMethod:
    """Plain fine-tuning, for the unpruned reference."""
    return PruningMethod()


def gmp(sparsity: float = 0.9, t_i: Step = 0.1, t_f: Step = 0.7, prune_every: int = 10) -> PruningMethod:
    """Gradual magnitude pruning with the cubic schedule and no prior."""
    return PruningMethod(NoPrior(), CubicSparsity(sparsity, t_i, t_f, prune_every))


def l2(
    sparsity: float = 0.9, sigma1_sq: float = SIGMA1_SQ, t_i: Step = 0.1, t_f: Step = 0.7, prune_every: int = 10
) -> PruningMethod:
    """The paper's L2 ablation: a Gaussian prior with the slab variance instead of the mixture."""
    return PruningMethod(L2(sigma1_sq), CubicSparsity(sparsity, t_i, t_f, prune_every))


def mgpp(
    sparsity: float = 0.9,
    lam: float = LAM,
    sigma0_sq: float = SIGMA0_SQ,
    sigma1_sq: float = SIGMA1_SQ,
    t_i: Step = 0.1,
    t_f: Step = 0.7,
    prune_every: int = 10,
) -> PruningMethod:
    """MGPP (Algorithm 1): mixture Gaussian prior plus cubic gradual magnitude pruning."""
    return PruningMethod(MixtureGaussian(lam, sigma0_sq, sigma1_sq), CubicSparsity(sparsity, t_i, t_f, prune_every))


def pa(
    sparsity: float = 0.9,
    lam: float = LAM,
    sigma0_sq: float = SIGMA0_SQ,
    sigma1_sq: float = SIGMA1_SQ,
    t_f: Step = 0.7,
    t_i: Step = 0,
    sigma0_sq_init: float | None = None,
    sigma0_sq_final: float = PA_SIGMA0_SQ_FINAL,
) -> PruningMethod:
    """Prior annealing: sigma0_sq annealed down to ``sigma0_sq_final``, one-shot prune at ``t_f``, then
    loss-only training under the fixed mask (``sigma0_sq`` is the prior's, unused by the annealing)."""
    return PruningMethod(
        MixtureGaussian(lam, sigma0_sq, sigma1_sq),
        PriorAnnealing(sparsity, t_f, t_i, sigma0_sq_init, sigma0_sq_final),
    )


PRESETS: dict[str, Callable[..., PruningMethod]] = {"dense": dense, "gmp": gmp, "l2": l2, "mgpp": mgpp, "pa": pa}


def preset(name: str, **kwargs) -> PruningMethod:
    """Build a preset by name: ``preset("mgpp", sparsity=0.8, sigma1_sq=0.1)``."""
    try:
        factory = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(PRESETS)}") from None
    return factory(**kwargs)
