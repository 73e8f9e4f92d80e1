"""When to prune, to what sparsity, and how strongly the prior acts.

A schedule answers, for the 1-based index ``t`` of the optimizer step being taken:

* ``sparsity(t)``: the target fraction of zero target weights after step ``t``;
* ``prunes_at(t)``: whether the pruner runs after step ``t``;
* ``prior_weight(t)``: eta(t), the factor of the prior gradient (Eq. 5);
* ``prior_at(t, prior)``: the prior in force at step ``t`` (annealing changes it);
* ``fixes_mask_at(t)``: whether the pruned set is frozen after step ``t`` (``t = 0``: before training).

Step arguments (``t_i``, ``t_f``) accept a step count (int), a negative step count that
counts back from the end (``t_f=-27000``: the last 27,000 steps run at the final sparsity,
as PLATON and LoSparse write their ``final_warmup``), or a fraction of the total number of
steps (float in [0, 1]); :meth:`bind` turns them into steps once the trainer knows the
total, and can calibrate against the model.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Sequence, Union

from torch import Tensor

from .priors import MixtureGaussian, Prior
from .pruning import GlobalPruner, kth_smallest, num_to_prune

log = logging.getLogger(__name__)

__all__ = ["Schedule", "NoPruning", "FixedSparsity", "CubicSparsity", "PriorAnnealing"]

Step = Union[int, float]


def _check_step(name: str, value: Step) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a step count (int) or a fraction of training (float), got {name}={value!r}")
    if isinstance(value, float) and not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} as a fraction of training must lie in [0, 1], got {name}={value!r}")


def _to_steps(value: Step, total_steps: int) -> int:
    if isinstance(value, float):
        return int(round(value * total_steps))
    return int(value) if value >= 0 else total_steps + int(value)


def _comparable(a: Step, b: Step) -> bool:
    """Whether two unresolved steps can be ordered before the total is known."""
    if isinstance(a, float) and isinstance(b, float):
        return True
    return isinstance(a, int) and isinstance(b, int) and (a >= 0) == (b >= 0)


def _check_sparsity(value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
        raise ValueError(f"final_sparsity must lie in [0, 1), got final_sparsity={value!r}")


class Schedule:
    """Interface and neutral defaults (never prune, full prior weight, prior unchanged)."""

    final_sparsity: float = 0.0

    def bind(self, total_steps: int, prior: Prior, params: Sequence[Tensor], pruner: GlobalPruner) -> "Schedule":
        """A copy with every step resolved against ``total_steps`` (and calibrated, if the schedule needs it)."""
        return self

    def sparsity(self, t: int) -> float:
        return 0.0

    def prunes_at(self, t: int) -> bool:
        return False

    def prior_weight(self, t: int) -> float:
        return 1.0

    def prior_at(self, t: int, prior: Prior) -> Prior:
        return prior

    def fixes_mask_at(self, t: int) -> bool:
        return False

    def calibration(self) -> dict:
        """Values :meth:`bind` measured on the model (kept with checkpoints, so that a resumed run
        reuses them instead of measuring the half-trained weights again)."""
        return {}


@dataclass(frozen=True)
class NoPruning(Schedule):
    """Dense fine-tuning: nothing is ever pruned."""


@dataclass(frozen=True)
class FixedSparsity(Schedule):
    """Sparse transfer: the model arrives pruned; its zeros are frozen before the first step.

    ``final_sparsity`` is what the loaded model is expected to have (reported, not enforced);
    ``fixes_mask_at(0)`` tells the callback to take the mask from the loaded weights.
    """

    final_sparsity: float = 0.0

    def sparsity(self, t: int) -> float:
        """The sparsity the loaded model holds throughout (a curve of 0 would read as dense)."""
        return self.final_sparsity

    def fixes_mask_at(self, t: int) -> bool:
        return t == 0


@dataclass(frozen=True)
class CubicSparsity(Schedule):
    """Cubic sparsity schedule of Eq. 1 with the prior warm-up of Eq. 5 (Algorithm 1).

    Sparsity is 0 up to ``t_i``, rises as ``v_T - v_T (1 - (t - t_i)/(t_f - t_i))^3``
    and stays at ``v_T`` from ``t_f`` on. Pruning runs every ``prune_every`` steps in
    ``[t_i, t_f]`` (and at ``t_f`` itself), then after every step past ``t_f``.
    eta(t) = t / t_i before ``t_i``, 1 afterwards.
    """

    final_sparsity: float = 0.9
    t_i: Step = 0.1
    t_f: Step = 0.7
    prune_every: int = 10

    def __post_init__(self) -> None:
        _check_sparsity(self.final_sparsity)
        _check_step("t_i", self.t_i)
        _check_step("t_f", self.t_f)
        if isinstance(self.prune_every, bool) or not isinstance(self.prune_every, int) or self.prune_every < 1:
            raise ValueError(f"prune_every must be a positive number of steps, got prune_every={self.prune_every!r}")
        if _comparable(self.t_i, self.t_f) and self.t_f <= self.t_i:
            raise ValueError(f"t_f must come after t_i, got t_i={self.t_i!r}, t_f={self.t_f!r}")

    def bind(self, total_steps: int, prior=None, params=None, pruner=None) -> "CubicSparsity":
        t_i, t_f = _to_steps(self.t_i, total_steps), _to_steps(self.t_f, total_steps)
        if t_i < 0:
            raise ValueError(f"t_i={self.t_i!r} counts back past the start of {total_steps} training steps")
        if t_f <= t_i:
            raise ValueError(
                f"t_f must come after t_i, got t_i={self.t_i!r} -> step {t_i}, t_f={self.t_f!r} -> step {t_f} "
                f"of {total_steps} training steps"
            )
        if t_f > total_steps:
            raise ValueError(
                f"t_f={self.t_f!r} (step {t_f}) lies beyond the {total_steps} training steps: "
                f"the final sparsity {self.final_sparsity} would never be reached"
            )
        return dataclasses.replace(self, t_i=t_i, t_f=t_f)

    def _steps(self) -> tuple[int, int]:
        if isinstance(self.t_i, float) or isinstance(self.t_f, float):
            raise RuntimeError("t_i/t_f are fractions of training: call bind(total_steps) first")
        return self.t_i, self.t_f

    def sparsity(self, t: int) -> float:
        t_i, t_f = self._steps()
        if t <= t_i:
            return 0.0
        if t >= t_f:
            return self.final_sparsity
        return self.final_sparsity * (1.0 - (1.0 - (t - t_i) / (t_f - t_i)) ** 3)

    def prunes_at(self, t: int) -> bool:
        t_i, t_f = self._steps()
        if t < t_i:
            return False
        return t >= t_f or (t - t_i) % self.prune_every == 0

    def prior_weight(self, t: int) -> float:
        t_i, _ = self._steps()
        return min(t / t_i, 1.0) if t_i > 0 else 1.0


def _crossover(prior: MixtureGaussian, sigma0_sq: float) -> float:
    return dataclasses.replace(prior, sigma0_sq=sigma0_sq).crossover()


def calibrate_sigma0_sq(prior: MixtureGaussian, magnitude: float) -> float:
    """The spike variance whose prior crossover equals ``magnitude`` (bisection in log space).

    The crossover grows monotonically with sigma0_sq on (0, sigma1_sq).
    """
    lo, hi = math.log(prior.sigma0_sq), math.log(prior.sigma1_sq) + math.log1p(-1e-6)  # stay below the slab
    if _crossover(prior, prior.sigma0_sq) >= magnitude:
        return prior.sigma0_sq
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _crossover(prior, math.exp(mid)) < magnitude:
            lo = mid
        else:
            hi = mid
    return math.exp(hi)


#: PA's own end of annealing. The paper (line 112) cites (sigma0_end)^2 in [1e-7, 1e-5] for the
#: earlier prior-annealing works, far above MGPP's 1e-10; 1e-6 is the middle of that range.
PA_SIGMA0_SQ_FINAL = 1e-6


@dataclass(frozen=True)
class PriorAnnealing(Schedule):
    """Prior annealing (PA, paper lines 102-106): anneal the spike, prune once, retrain on the loss.

    sigma0_sq decreases linearly from ``sigma0_sq_init`` at ``t_i`` to ``sigma0_sq_final`` at
    ``t_f``; lam and sigma1_sq stay the prior's. With ``sigma0_sq_init=None`` the start is
    calibrated on the pretrained weights so that the fraction of target weights below the
    initial crossover equals the target sparsity (line 106). Nothing is pruned while
    annealing; at ``t_f`` one global magnitude prune reaches the target, the mask is fixed,
    and the rest of training uses "only the loss function" (line 102): the prior is off.
    """

    final_sparsity: float = 0.9
    t_f: Step = 0.7
    t_i: Step = 0
    sigma0_sq_init: float | None = None
    sigma0_sq_final: float = PA_SIGMA0_SQ_FINAL

    def __post_init__(self) -> None:
        _check_sparsity(self.final_sparsity)
        _check_step("t_i", self.t_i)
        _check_step("t_f", self.t_f)
        if _comparable(self.t_i, self.t_f) and self.t_f <= self.t_i:
            raise ValueError(f"t_f must come after t_i, got t_i={self.t_i!r}, t_f={self.t_f!r}")
        if self.sigma0_sq_init is not None and not self.sigma0_sq_init > 0:
            raise ValueError(f"sigma0_sq_init must be a positive variance, got sigma0_sq_init={self.sigma0_sq_init!r}")
        if not (isinstance(self.sigma0_sq_final, (int, float)) and self.sigma0_sq_final > 0):
            raise ValueError(f"sigma0_sq_final must be a positive variance, got sigma0_sq_final={self.sigma0_sq_final!r}")

    def bind(self, total_steps: int, prior: Prior, params: Sequence[Tensor], pruner: GlobalPruner) -> "PriorAnnealing":
        if not isinstance(prior, MixtureGaussian):
            raise TypeError(f"prior annealing needs a MixtureGaussian prior, got {type(prior).__name__}")
        if self.sigma0_sq_final >= prior.sigma1_sq:
            raise ValueError(f"sigma0_sq_final={self.sigma0_sq_final!r} must lie below the slab variance "
                             f"sigma1_sq={prior.sigma1_sq!r}")
        t_i, t_f = _to_steps(self.t_i, total_steps), _to_steps(self.t_f, total_steps)
        if not 0 <= t_i < t_f <= total_steps:
            raise ValueError(
                f"prior annealing needs t_i < t_f <= total steps, got t_i={self.t_i!r} -> {t_i}, "
                f"t_f={self.t_f!r} -> {t_f}, total {total_steps}"
            )
        init = self.sigma0_sq_init
        if init is None:
            numel = sum(p.numel() for p in params)
            k = max(num_to_prune(self.final_sparsity, numel), 1)
            magnitude, _ = kth_smallest(params, k, pruner.calibration_score, pruner.chunk_numel)
            init = calibrate_sigma0_sq(dataclasses.replace(prior, sigma0_sq=self.sigma0_sq_final), magnitude)
            log.info(
                "prior annealing: sigma0_sq_init=%.3g puts the crossover at %.3g, the %.0f%% quantile of |theta|",
                init, magnitude, 100 * self.final_sparsity,
            )
        if init < self.sigma0_sq_final:
            raise ValueError(
                f"sigma0_sq_init={init!r} is below the final spike variance sigma0_sq_final={self.sigma0_sq_final!r}: "
                "annealing must decrease it"
            )
        return dataclasses.replace(self, t_i=t_i, t_f=t_f, sigma0_sq_init=init)

    def _bound(self) -> tuple[int, int, float]:
        if isinstance(self.t_i, float) or isinstance(self.t_f, float) or self.sigma0_sq_init is None:
            raise RuntimeError("prior annealing is not bound to a run yet: call bind(...) first")
        return self.t_i, self.t_f, self.sigma0_sq_init

    def sigma0_sq_at(self, t: int) -> float:
        t_i, t_f, init = self._bound()
        frac = min(max((t - t_i) / (t_f - t_i), 0.0), 1.0)
        return (1.0 - frac) * init + frac * self.sigma0_sq_final  # exact at both ends

    def prior_at(self, t: int, prior: Prior) -> Prior:
        return dataclasses.replace(prior, sigma0_sq=self.sigma0_sq_at(t))

    def prior_weight(self, t: int) -> float:
        """1 while annealing (up to and including the prune step ``t_f``), 0 in the fixed-mask retraining."""
        return 1.0 if t <= self._bound()[1] else 0.0

    def sparsity(self, t: int) -> float:
        return self.final_sparsity if t >= self._bound()[1] else 0.0

    def prunes_at(self, t: int) -> bool:
        return t == self._bound()[1]

    def fixes_mask_at(self, t: int) -> bool:
        return t == self._bound()[1]

    def calibration(self) -> dict:
        return {"sigma0_sq_init": self.sigma0_sq_init} if self.sigma0_sq_init is not None else {}
