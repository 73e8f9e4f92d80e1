"""The paper's figures as PNG: Fig. 1 and A1 from the priors themselves, Fig. 2a and 2b from runs.

Every curve of Fig. 1 and A1 is ``prior.neg_log_density(theta) - prior.neg_log_density(0)``
of the classes in :mod:`mgpp.priors`, so the figures show exactly the penalties training uses.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..priors import L2, Laplace, MixtureGaussian, Prior
from .runs import Run

__all__ = ["penalty", "figure1_curves", "figure1", "figure_a1", "figure2a", "figure2b"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def penalty(prior: Prior, theta: np.ndarray) -> np.ndarray:
    """``-log pi(theta) + log pi(0)`` in float64."""
    x = torch.as_tensor(theta, dtype=torch.float64)
    return (prior.neg_log_density(x) - prior.neg_log_density(torch.zeros((), dtype=torch.float64))).numpy()


def figure1_priors(lam: float = 1e-7, sigma0_sq: float = 1e-10, sigma1_sq: float = 0.05) -> dict[str, Prior]:
    """The three penalties of Fig. 1. The Laplace scale gives it the slab's variance (2 b^2 = sigma1_sq)."""
    return {"MGP": MixtureGaussian(lam=lam, sigma0_sq=sigma0_sq, sigma1_sq=sigma1_sq),
            "L2": L2(sigma_sq=sigma1_sq), "L1": Laplace(scale=math.sqrt(sigma1_sq / 2))}


def figure1_curves(lam: float = 1e-7, sigma0_sq: float = 1e-10, sigma1_sq: float = 0.05, points: int = 801):
    """``{panel: {prior name: (theta, penalty)}}`` for the near-zero and the large-scale panel.

    Near zero spans four times the MGP's crossover, where the spike's steep quadratic hands
    over to the flat slab; the large scale spans +-3 slab standard deviations.
    """
    priors = figure1_priors(lam, sigma0_sq, sigma1_sq)
    near = 4 * (priors["MGP"].crossover() or math.sqrt(sigma0_sq))
    panels = {"near zero": np.linspace(-near, near, points), "large scale": np.linspace(-3, 3, points) * math.sqrt(sigma1_sq)}
    return {panel: {name: (x, penalty(p, x)) for name, p in priors.items()} for panel, x in panels.items()}


def figure1(path: str | Path, **prior_kwargs) -> Path:
    plt = _pyplot()
    curves = figure1_curves(**prior_kwargs)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (panel, by_prior) in zip(axes, curves.items()):
        for name, (x, y) in by_prior.items():
            ax.plot(x, y, label=name)
        ax.set_title(f"Penalty {panel}")
        ax.set_xlabel(r"$\theta$")
        ax.set_ylabel(r"$-\log\pi(\theta) + \log\pi(0)$")
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 3))
        ax.legend()
    axes[0].set_ylim(-1, 1.5 * float(curves["near zero"]["MGP"][1].max()))
    fig.suptitle("Fig. 1: MGP vs L2 vs L1 penalties")
    return _save(fig, path)


def figure_a1(path: str | Path, lam: float = 1e-7, sigma0_sq: float = 1e-10, sigma1_sq: float = 0.05) -> Path:
    """How each of lam, sigma0_sq, sigma1_sq moves the MGP penalty (the others fixed)."""
    plt = _pyplot()
    theta = np.logspace(-8, 0, 800)
    variations = {
        "lam": [lam / 100, lam, lam * 100],
        "sigma0_sq": [sigma0_sq / 10, sigma0_sq, sigma0_sq * 10],
        "sigma1_sq": [sigma1_sq / 5, sigma1_sq, sigma1_sq * 2],
    }
    base = dict(lam=lam, sigma0_sq=sigma0_sq, sigma1_sq=sigma1_sq)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), sharey=True)
    for ax, (knob, values) in zip(axes, variations.items()):
        for value in values:
            prior = MixtureGaussian(**(base | {knob: value}))
            ax.plot(theta, penalty(prior, theta), label=f"{knob}={value:g}")
            ax.axvline(prior.crossover(), color=ax.lines[-1].get_color(), lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel(r"$|\theta|$ (dotted: crossover)")
        ax.set_title(f"varying {knob}")
        ax.legend(fontsize=8)
    axes[0].set_ylabel(r"$-\log\pi(\theta) + \log\pi(0)$")
    axes[0].set_ylim(0, 60)
    fig.suptitle("Fig. A1: the mixture Gaussian prior's knobs")
    return _save(fig, path)


def _one_run_per_method(runs: Sequence[Run], methods: Sequence[str]) -> dict[str, Run]:
    """The lowest-seed run of each method that has a log."""
    chosen: dict[str, Run] = {}
    for run in sorted(runs, key=lambda r: r.get("seed", 0)):
        method = run.get("method.name")
        if method in methods and method not in chosen and run.records:
            chosen[method] = run
    return chosen


LINEAR, LOG_MAGNITUDE = "weights/nonzero_targets", "weights/nonzero_log10_magnitude"


def figure2a(runs: Sequence[Run], path: str | Path, methods: Sequence[str] = ("mgpp", "l2"), title: str = "") -> Path | None:
    """Distribution of the remaining nonzero target weights at the end of training."""
    chosen = _one_run_per_method(runs, methods)
    # log10-magnitude histograms where the runs have them (they show the gap at zero), else linear
    log_scale = all(r.last_histogram(LOG_MAGNITUDE) for r in chosen.values()) and bool(chosen)
    name = LOG_MAGNITUDE if log_scale else LINEAR
    hists = {m: r.last_histogram(name) for m, r in chosen.items()}
    hists = {m: h for m, h in hists.items() if h and h["num"] > 0}
    if not hists:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, h in hists.items():
        edges, counts = np.asarray(h["edges"]), np.asarray(h["counts"], dtype=float)
        if log_scale:
            edges = 10.0 ** edges
        density = counts / counts.sum()
        ax.stairs(density, edges, label=f"{method} (seed {chosen[method].get('seed')}, {h['num']:,} nonzero)")
    if log_scale:
        ax.set_xscale("log")
        ax.set_xlabel("|remaining nonzero weight|")
        occupied = [10.0 ** h["edges"][i] for h in hists.values() for i, c in enumerate(h["counts"]) if c]
        ax.set_xlim(left=min(occupied) / 3)
    else:
        ax.set_yscale("log")
        ax.set_xlabel("remaining nonzero weight")
    ax.set_ylabel("fraction of nonzero weights per bin")
    ax.set_title(f"Fig. 2a: remaining weights {title}".strip())
    ax.legend(fontsize=8)
    return _save(fig, path)


def figure2b(runs: Sequence[Run], path: str | Path, methods: Sequence[str] = ("mgpp", "l2", "gmp", "pa"),
             title: str = "") -> Path | None:
    """The magnitude threshold over training: the smallest surviving |theta| after each logged prune
    (solid) and the largest pruned score (dotted, lower once pruned weights regrow)."""
    chosen = _one_run_per_method(runs, methods)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for method, run in chosen.items():
        kept = _positive(*run.scalars("pruning/kept_min_magnitude"))
        pruned = _positive(*run.scalars("pruning/threshold"))
        if kept:  # logs from before kept_min_magnitude existed have the threshold only
            line = ax.plot(*zip(*kept), label=f"{method}: smallest kept |θ|")[0]
            if pruned:
                ax.plot(*zip(*pruned), ls=":", color=line.get_color(), lw=1)
        elif pruned:
            ax.plot(*zip(*pruned), label=f"{method}: largest pruned |θ|")
        drawn = drawn or bool(kept or pruned)
    if not drawn:
        plt.close(fig)
        return None
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("magnitude threshold")
    if any(line.get_linestyle() == ":" for line in ax.lines):
        ax.plot([], [], ls=":", color="gray", label="dotted: largest pruned |θ|")
    ax.set_title(f"Fig. 2b: threshold over training {title}".strip())
    ax.legend(fontsize=8)
    return _save(fig, path)


def _positive(steps, values) -> list[tuple[int, float]]:
    return [(s, v) for s, v in zip(steps, values) if v > 0]


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path
