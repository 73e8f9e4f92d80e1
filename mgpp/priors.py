"""Priors over prunable weights and the gradient of their negative log density.

A prior adds ``scale * grad(theta)`` to each target weight's gradient, where
``scale = eta(t) / n`` (Eq. 5 of the MGPP paper). All priors are frozen dataclasses
so that Hydra can build them with ``_target_`` and schedules can derive new ones
(prior annealing changes ``sigma0_sq``) with :func:`dataclasses.replace`.

Hot path: :meth:`Prior.add_grad_` works on whole lists of tensors with
``torch._foreach_*`` kernels, in float32, over buckets of bounded size; there is no
Python loop over parameters doing tensor math.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import Tensor

log = logging.getLogger(__name__)

__all__ = ["Prior", "MixtureGaussian", "L2", "Laplace", "NoPrior"]

# Elements per bucket of the float32 work lists: bounds the transient memory of the
# prior update for models whose weights are not float32 (bf16/fp16 copies) and the
# temporaries of the mixture gradient (one float32 value per weight in the bucket).
BUCKET_NUMEL = 1 << 24


def _buckets(tensors: Sequence[Tensor], max_numel: int = BUCKET_NUMEL) -> Iterator[slice]:
    """Slices of ``tensors`` whose total size stays under ``max_numel`` (one tensor at least)."""
    start, total = 0, 0
    for i, t in enumerate(tensors):
        if i > start and total + t.numel() > max_numel:
            yield slice(start, i)
            start, total = i, 0
        total += t.numel()
    if start < len(tensors):
        yield slice(start, len(tensors))


def _as_fp32(tensors: Sequence[Tensor]) -> list[Tensor]:
    return [t if t.dtype == torch.float32 else t.float() for t in tensors]


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite variance, got {name}={value!r}")


class Prior:
    """Interface: an elementwise prior on target weights.

    Subclasses implement :meth:`neg_log_density` and :meth:`grad`; they may override
    :meth:`add_grad_` with a fused multi-tensor version.
    """

    #: False for priors that never change a gradient (lets callers skip work).
    active: bool = True

    def neg_log_density(self, theta: Tensor) -> Tensor:
        raise NotImplementedError

    def grad(self, theta: Tensor) -> Tensor:
        """Elementwise d/dtheta of :meth:`neg_log_density`."""
        raise NotImplementedError

    def crossover(self) -> float | None:
        """|theta| where the prior switches from shrinking to zero to leaving weights alone, if any."""
        return None

    @torch.no_grad()
    def add_grad_(self, params: Sequence[Tensor], grads: Sequence[Tensor], scale: float) -> None:
        """``grads[i] += scale * grad(params[i])``, computed in float32."""
        if not self.active or scale == 0:
            return
        for part in _buckets(params):
            updates = [self.grad(p) for p in _as_fp32(params[part])]
            _add_(grads[part], updates, scale)

    @torch.no_grad()
    def penalty(self, params: Sequence[Tensor]) -> float:
        """``sum(-log pi(theta) + log pi(0))`` over all ``params``, for logging.

        The same as the prior's term of the objective up to a constant, but measured from
        the all-zero model, so it is non-negative and its trend is readable on a dashboard
        (the raw sum is dominated by the normalising constants).
        """
        at_zero = self.neg_log_density(torch.zeros((), dtype=torch.float32))
        total = 0.0
        for p in params:
            x = p.detach().float()
            total += float((self.neg_log_density(x) - at_zero.to(x.device)).sum(dtype=torch.float64))
        return total


def _add_(grads: Sequence[Tensor], updates: Sequence[Tensor], alpha: float) -> None:
    """``grads += alpha * updates``; updates are float32, grads may be any float dtype."""
    if all(g.dtype == torch.float32 for g in grads):
        torch._foreach_add_(list(grads), list(updates), alpha=alpha)
    else:  # scale in float32 first: the unscaled update may exceed the half-precision range
        for g, u in zip(grads, updates):
            g.add_((u * alpha).to(g.dtype))


def _mixture_update(params, grads, c1, c2, a, b):
    """``grads += theta * (b + a * g)``, ``g = sigmoid(-(c1 + c2 theta^2))``: one fused pass per tensor once compiled."""
    for p, g in zip(params, grads):
        x = p.float()
        gate = torch.sigmoid(-(c1 + c2 * x * x))
        g.add_((x * (b + a * gate)).to(g.dtype))


_compiled_mixture_update = None  # built on first use; False once compilation has failed here


@dataclass(frozen=True)
class MixtureGaussian(Prior):
    """Spike-and-slab Gaussian mixture: ``lam * N(0, sigma1_sq) + (1 - lam) * N(0, sigma0_sq)``.

    ``sigma0_sq`` (spike) and ``sigma1_sq`` (slab) are variances, as in the paper (Eq. 2).
    ``compile=True`` runs the gradient as one ``torch.compile``-d function over all target
    tensors (one read of theta and one read-write of the gradient instead of seven
    foreach passes; about 4x faster on CPU) at the price of a one-off compilation
    (~20 s for MiniLM on 2 CPU cores). Its constants are tensors, so annealing sigma0_sq
    or warming up eta never recompiles. Falls back to foreach if compilation fails.
    """

    lam: float = 1e-7
    sigma0_sq: float = 1e-10
    sigma1_sq: float = 0.05
    compile: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.lam, (int, float)) and 0.0 < self.lam < 1.0):
            raise ValueError(f"lam (mixture weight of the slab) must lie in (0, 1), got lam={self.lam!r}")
        _check_positive("sigma0_sq", self.sigma0_sq)
        _check_positive("sigma1_sq", self.sigma1_sq)
        tiny = torch.finfo(torch.float32).tiny  # below it, 1/sigma^2 overflows the float32 gradient
        for name, value in (("sigma0_sq", self.sigma0_sq), ("sigma1_sq", self.sigma1_sq)):
            if value < tiny:
                raise ValueError(f"{name} must be at least the smallest float32 normal {tiny:.3g}, got {name}={value!r}")
        if self.sigma0_sq >= self.sigma1_sq:
            raise ValueError(
                "the spike variance must be smaller than the slab variance, got "
                f"sigma0_sq={self.sigma0_sq!r} >= sigma1_sq={self.sigma1_sq!r}"
            )

    # Constants of Eq. 4: g = 1 / (exp(c2 * theta^2 + c1) + 1) is the posterior
    # probability that theta belongs to the spike.
    @property
    def c1(self) -> float:
        return (
            math.log(self.lam)
            - math.log1p(-self.lam)
            + 0.5 * math.log(self.sigma0_sq)
            - 0.5 * math.log(self.sigma1_sq)
        )

    @property
    def c2(self) -> float:
        return 0.5 / self.sigma0_sq - 0.5 / self.sigma1_sq

    def _log_weighted_components(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        sq = theta * theta
        log_spike = math.log1p(-self.lam) - 0.5 * math.log(2 * math.pi * self.sigma0_sq) - sq / (2 * self.sigma0_sq)
        log_slab = math.log(self.lam) - 0.5 * math.log(2 * math.pi * self.sigma1_sq) - sq / (2 * self.sigma1_sq)
        return log_spike, log_slab

    def neg_log_density(self, theta: Tensor) -> Tensor:
        # log-sum-exp of the two weighted components: finite for sigma0_sq down to 1e-12
        # and any finite theta (each term is a finite quadratic; logaddexp never overflows).
        log_spike, log_slab = self._log_weighted_components(theta)
        return -torch.logaddexp(log_spike, log_slab)

    def spike_probability(self, theta: Tensor) -> Tensor:
        """g of Eq. 4, as a sigmoid so that no exponential of a huge number is formed (in float32 at
        least: c2 = 0.5/sigma0_sq overflows half precision)."""
        x = theta if theta.dtype in (torch.float32, torch.float64) else theta.float()
        g = torch.sigmoid(-(self.c1 + self.c2 * (x * x)))
        return g.to(theta.dtype)

    def grad(self, theta: Tensor) -> Tensor:
        """Eq. 4, in float32 for fp16/bf16 weights (float64 stays float64): 1/sigma0_sq = 1e10 and the
        spike's pull on weights near 1e-5 (~1e5) overflow half precision, so half weights get a
        float32 gradient, which callers scale by eta/n before adding it to their gradients."""
        x = theta if theta.dtype in (torch.float32, torch.float64) else theta.float()
        g = torch.sigmoid(-(self.c1 + self.c2 * (x * x)))
        inv0, inv1 = 1.0 / self.sigma0_sq, 1.0 / self.sigma1_sq
        return x * (inv1 + g * (inv0 - inv1))

    def crossover(self) -> float:
        """|theta| where ``(1-lam) N(theta; 0, sigma0_sq) = lam N(theta; 0, sigma1_sq)`` (c1 + c2 theta^2 = 0).

        Weights below it are pulled towards zero by the spike; 0 when the slab dominates everywhere.
        """
        return math.sqrt(max(-self.c1, 0.0) / self.c2)

    @torch.no_grad()
    def add_grad_(self, params: Sequence[Tensor], grads: Sequence[Tensor], scale: float) -> None:
        if scale == 0:
            return
        # grad = theta * (inv1 + g * (inv0 - inv1)); the scale is folded into the two constants
        # so that the last pass is a single fused grads += tmp * theta.
        a = scale * (1.0 / self.sigma0_sq - 1.0 / self.sigma1_sq)
        b = scale / self.sigma1_sq
        if self.compile and self._add_grad_compiled(params, grads, a, b):
            return
        for part in _buckets(params):
            thetas = _as_fp32(params[part])
            tmp = torch._foreach_mul(thetas, thetas)
            torch._foreach_mul_(tmp, -self.c2)
            torch._foreach_add_(tmp, -self.c1)
            torch._foreach_sigmoid_(tmp)  # g
            torch._foreach_mul_(tmp, a)
            torch._foreach_add_(tmp, b)
            target = list(grads[part])
            if all(g.dtype == torch.float32 for g in target):
                torch._foreach_addcmul_(target, tmp, thetas)
            else:
                _add_(target, torch._foreach_mul(tmp, thetas), 1.0)


    def _add_grad_compiled(self, params, grads, a: float, b: float) -> bool:
        global _compiled_mixture_update
        if _compiled_mixture_update is False:
            return False
        if _compiled_mixture_update is None:
            _compiled_mixture_update = torch.compile(_mixture_update, dynamic=False)
        dev = params[0].device
        consts = [torch.tensor(v, dtype=torch.float32, device=dev) for v in (self.c1, self.c2, a, b)]
        try:
            _compiled_mixture_update(list(params), list(grads), *consts)
            return True
        except Exception as err:  # no C++ compiler / Triton, unsupported backend ...
            log.warning("compiled prior gradient failed (%s); falling back to torch._foreach", err)
            _compiled_mixture_update = False
            return False


@dataclass(frozen=True)
class L2(Prior):
    """Gaussian prior ``N(0, sigma_sq)``: the L2 ablation of the paper uses the slab variance."""

    sigma_sq: float = 0.05

    def __post_init__(self) -> None:
        _check_positive("sigma_sq", self.sigma_sq)

    def neg_log_density(self, theta: Tensor) -> Tensor:
        return theta * theta / (2 * self.sigma_sq) + 0.5 * math.log(2 * math.pi * self.sigma_sq)

    def grad(self, theta: Tensor) -> Tensor:
        return theta / self.sigma_sq

    @torch.no_grad()
    def add_grad_(self, params: Sequence[Tensor], grads: Sequence[Tensor], scale: float) -> None:
        if scale == 0:
            return
        for part in _buckets(params):
            _add_(grads[part], _as_fp32(params[part]), scale / self.sigma_sq)


@dataclass(frozen=True)
class Laplace(Prior):
    """Laplace prior with scale ``b``: the L1 penalty ``|theta|/b`` (Fig. 1's third curve)."""

    scale: float = 0.05

    def __post_init__(self) -> None:
        _check_positive("scale", self.scale)

    def neg_log_density(self, theta: Tensor) -> Tensor:
        return theta.abs() / self.scale + math.log(2 * self.scale)

    def grad(self, theta: Tensor) -> Tensor:
        return torch.sign(theta) / self.scale


@dataclass(frozen=True)
class NoPrior(Prior):
    """Flat (improper) prior: no penalty, no gradient. GMP and dense fine-tuning use it."""

    active = False

    def neg_log_density(self, theta: Tensor) -> Tensor:
        return torch.zeros_like(theta)

    def grad(self, theta: Tensor) -> Tensor:
        return torch.zeros_like(theta)

    def add_grad_(self, params: Sequence[Tensor], grads: Sequence[Tensor], scale: float) -> None:
        return None

    def penalty(self, params: Sequence[Tensor]) -> float:
        return 0.0
