"""Pruning methods: a prior, a schedule, a pruner and a target selector, composed.

The training code only ever sees a :class:`PruningMethod`. The methods of the paper are the
files of ``conf/method/`` (each picks a prior and a schedule file; no branching on method
names anywhere); :func:`build_method` builds one from a composed config, :func:`preset` from those
same files, for use without Hydra:

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

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .priors import NoPrior, Prior
from .pruning import SPARSITY_TOLERANCE, GlobalPruner, TargetSelector
from .schedules import NoPruning, Schedule

if TYPE_CHECKING:
    from omegaconf import DictConfig

__all__ = ["PruningMethod", "build_method", "preset", "method_names", "knobs_read", "KNOBS"]


@dataclass
class PruningMethod:
    """Everything the pruning callback needs to know about *how* to prune."""

    prior: Prior = field(default_factory=NoPrior)
    schedule: Schedule = field(default_factory=NoPruning)
    pruner: GlobalPruner = field(default_factory=GlobalPruner)
    targets: TargetSelector = field(default_factory=TargetSelector)

    def __post_init__(self) -> None:
        final, reachable = self.schedule.final_sparsity, getattr(self.pruner, "max_sparsity", 1.0)
        if final > reachable + SPARSITY_TOLERANCE:
            raise ValueError(f"sparsity={final!r} is more than {self.pruner!r} can reach: run with "
                             f"sparsity={reachable:.6g} (its pattern), or prune unstructured")


def build_method(cfg: DictConfig) -> PruningMethod:
    """The engine objects named by the config: no branching on the method's name."""
    from .config import build

    return PruningMethod(
        prior=build(cfg.prior),
        schedule=build(cfg.schedule),
        pruner=build(cfg.pruning.pruner),
        targets=TargetSelector(include=list(cfg.pruning.include), exclude=list(cfg.pruning.exclude),
                               min_ndim=cfg.pruning.min_ndim),
    )


def _conf() -> Path:
    from .config import config_dir

    return Path(config_dir())


def method_names() -> list[str]:
    """The methods ``conf/method/`` defines."""
    return sorted(p.stem for p in (_conf() / "method").glob("*.yaml"))


def preset(name: str, **knobs) -> PruningMethod:
    """The method ``conf/method/<name>.yaml`` with ``knobs`` set, built as ``python -m mgpp.train`` builds it:
    ``preset("mgpp", sparsity=0.8, sigma1_sq=0.1, t_i=100, t_f=800)``.

    A knob is a top-level key (``sparsity lam sigma0_sq sigma1_sq t_i t_f prune_every``) or a key of
    the method's prior or schedule (``sigma0_sq_final``, ``compile``); anything else fails by name.
    """
    if name not in method_names():
        raise ValueError(f"unknown method {name!r}; choose one of {method_names()}")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from . import config as _schema  # noqa: F401  registers the schema and resolvers

    def compose_with(overrides):
        """Compose from mgpp's own configs, whatever Hydra app (or test fixture) is initialised around."""
        outer = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(_conf()), version_base="1.3"):
                return compose("train", overrides=overrides)
        finally:
            if outer is not None:
                GlobalHydra.instance().initialize(outer)

    base = compose_with([f"method={name}", "output_dir=unused"])
    overrides = [f"method={name}", "output_dir=unused"]
    for key, value in knobs.items():
        value = "null" if value is None else repr(value) if isinstance(value, str) else value
        if key in base and key not in ("prior", "schedule", "pruning"):
            overrides.append(f"{key}={value}")
        elif key in (base.schedule or {}):
            overrides.append(f"schedule.{key}={value}")
        elif key in (base.prior or {}):
            overrides.append(f"prior.{key}={value}")
        else:
            raise ValueError(f"method {name!r} has no knob {key!r}: top-level {sorted(k for k in base if k in KNOBS)}, "
                             f"prior {sorted(base.prior)}, schedule {sorted(base.schedule)}")
    return build_method(compose_with(overrides))


#: the top-level keys the prior and schedule files read (conf/train.yaml sets them; `preset` takes them)
KNOBS = ("sparsity", "lam", "sigma0_sq", "sigma1_sq", "t_i", "t_f", "prune_every")


def knobs_read(target: str) -> frozenset[str] | None:
    """The top-level knobs (:data:`KNOBS`) a prior or schedule class reads, from the ``conf/prior`` and
    ``conf/schedule`` files naming it as ``_target_`` (``mgpp.priors.L2`` reads ``sigma1_sq``; ``NoPrior``
    none). None for a class no file names: nothing is known about it. Reports use it so a GMP run is not
    labelled with the sigma0_sq it never read."""
    return _knobs_by_target().get(target)


@functools.cache
def _knobs_by_target() -> dict[str, frozenset[str]]:
    from omegaconf import OmegaConf

    found: dict[str, set[str]] = {}
    for group in ("prior", "schedule"):
        for path in sorted((_conf() / group).glob("*.yaml")):
            node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
            if isinstance(node, dict) and "_target_" in node:
                text = " ".join(str(v) for v in node.values())
                found.setdefault(node["_target_"], set()).update(
                    k for k in re.findall(r"\$\{(\w+)\}", text) if k in KNOBS)
    return {target: frozenset(knobs) for target, knobs in found.items()}
