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
from ..run_folder import LOG_MAGNITUDE_HISTOGRAM, NONZERO_HISTOGRAM
from .runs import Run
from .tables import target_sparsity

__all__ = ["penalty", "figure1_curves", "figure1", "figure_a1", "figure2a", "figure2a_histograms", "draw_figure2a",
           "figure2b", "draw_figure2b", "figure_dev_curves"]


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


def _method(label: str) -> str:
    """The method a group label names first (``mgpp (sigma1_sq=1.0)`` -> ``mgpp``)."""
    return label.partition(" (")[0]


#: one colour, line style and marker per method, the same in every figure, so that lines that
#: overlap stay distinguishable (and readable in grey scale)
METHOD_STYLE = {
    "mgpp": dict(color="tab:red", ls="-", marker="o"),
    "l2": dict(color="tab:blue", ls="--", marker="s"),
    "gmp": dict(color="tab:green", ls="-.", marker="^"),
    "pa": dict(color="tab:purple", ls=":", marker="D"),
    "dense": dict(color="black", ls="-", marker=None),
}


#: colours for a method's second, third ... setting (another prior, say); past the last, the
#: colours repeat with a dotted line
VARIANT_COLORS = ("tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")

#: more lines than this and the legend goes beside the axes, in a wider figure
LEGEND_BESIDE = 5


def style(method: str, points: int = 0) -> dict:
    """Matplotlib keywords for ``method``'s lines: markers spaced to about a dozen per line."""
    return _with_points(METHOD_STYLE.get(method, dict(color="gray", ls="-", marker="x")), points)


def label_styles(labels) -> dict[str, dict]:
    """A style per group label, in the order given: a method's first label gets the method's colour,
    its other settings the colours of :data:`VARIANT_COLORS` with the method's marker (and its line
    style, dotted once the colours repeat), so that several settings of one method stay apart and
    still read as that method. Made once per report, so a setting keeps its colour in every figure."""
    styles: dict[str, dict] = {}
    seen, extra = set(), 0
    for label in labels:
        method = _method(label)
        styles[label] = style(method)
        if method in seen:  # the colours go round all methods' extra settings, so none shares one
            styles[label]["color"] = VARIANT_COLORS[extra % len(VARIANT_COLORS)]
            if extra >= len(VARIANT_COLORS):
                styles[label]["ls"] = ":"
            extra += 1
        seen.add(method)
    return styles


def _with_points(kw: dict, points: int) -> dict:
    """A copy of ``kw`` with its markers spaced to about a dozen on a line of ``points`` points."""
    kw = dict(kw)
    if kw.get("marker") and points:
        kw["markevery"] = max(points // 12, 1)
    return kw


def _legend(ax, beside: bool, fontsize: int = 8, ncol: int = 1) -> None:
    """In the axes while it stays small; beside them once it would cover the lines."""
    if beside:
        ax.legend(fontsize=fontsize - 1, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=fontsize, ncol=ncol)


def _prunes(run: Run) -> bool:
    """Whether ``run`` pruned anything: a dense run (target sparsity 0) has no kept/pruned boundary."""
    return target_sparsity(run) > 0


def figure2a_histograms(groups: dict[str, Sequence[Run]],
                        methods: Sequence[str] | None = None) -> list[tuple[dict, bool]]:
    """What Fig. 2a draws: ``[({label: {seed: histogram}}, log_scale)]``, a panel per kind of histogram
    (log-magnitude bins first; linear bins for runs whose older logs lack them), every seed of every
    group whose method prunes (dense does not) and is in ``methods`` (None: all). Every seed, so that
    a difference between methods can be told from one between seeds."""
    panels = []
    drawn: set[int] = set()
    for name, log_scale in ((LOG_MAGNITUDE_HISTOGRAM, True), (NONZERO_HISTOGRAM, False)):
        hists: dict[str, dict] = {}
        for label, runs in groups.items():
            if methods is not None and _method(label) not in methods:
                continue
            for run in sorted((r for r in runs if _prunes(r)), key=lambda r: r.get("seed", 0)):
                h = run.last_histogram(name)
                if id(run) not in drawn and h and h.get("num"):
                    hists.setdefault(label, {})[run.get("seed")] = h
                    drawn.add(id(run))
        if hists:
            panels.append((hists, log_scale))
    return panels


def draw_figure2a(groups: dict[str, Sequence[Run]], methods: Sequence[str] | None = None, title: str = "",
                  styles: dict[str, dict] | None = None):
    """Fig. 2a as a matplotlib figure (None when no run logged a histogram): see :func:`figure2a`."""
    panels = figure2a_histograms(groups, methods)
    if not panels:
        return None
    styles = {**label_styles(groups), **(styles or {})}  # a label the given styles lack still gets one
    plt = _pyplot()
    wide = len({label for hists, _ in panels for label in hists}) > LEGEND_BESIDE
    fig, axes = plt.subplots(1, len(panels), figsize=((9.5 if wide else 6.5) * len(panels), 4), squeeze=False)
    for ax, (hists, log_scale) in zip(axes[0], panels):
        _draw_histograms(ax, hists, styles, log_scale)
        _legend(ax, wide)
    fig.suptitle(f"Fig. 2a: remaining weights {title}".strip())
    return fig


def figure2a(groups: dict[str, Sequence[Run]], path: str | Path, methods: Sequence[str] | None = None,
             title: str = "", styles: dict[str, dict] | None = None) -> Path | None:
    """Distribution of the remaining nonzero target weights at the end of training: a line per seed of
    every group (``{label: runs}``, the label starting with the method) whose method prunes and is in
    ``methods`` (None: every one), the seeds of a group in its style (``styles``; default:
    :func:`label_styles` of the groups). Log-magnitude bins (they show how far the survivors sit from
    zero) for every run that logged them; runs whose log has only linear bins (older logs) get a
    linear panel of their own. None when no run logged a histogram."""
    fig = draw_figure2a(groups, methods, title, styles)
    return _save(fig, path) if fig is not None else None


def _seed_text(hists: dict) -> str:
    """``seeds 1, 2, 3; 1,234 nonzero`` (a range where the seeds kept different counts)."""
    seeds = ", ".join(map(str, hists))
    nums = sorted(int(h["num"]) for h in hists.values())
    kept = f"{nums[0]:,}" if nums[0] == nums[-1] else f"{nums[0]:,}–{nums[-1]:,}"
    return f"seed{'s' * (len(hists) > 1)} {seeds}; {kept} nonzero"


def _draw_histograms(ax, hists: dict[str, dict], styles: dict, log_scale: bool) -> None:
    """A stairs line per seed (its ``gid``: ``"<label> seed <seed>"``), in its group's colour and line
    style; one legend entry per group, naming its seeds."""
    for i, (label, by_seed) in enumerate(hists.items()):
        kw = styles[label]
        for j, (seed, h) in enumerate(by_seed.items()):
            edges, counts = np.asarray(h["edges"], dtype=float), np.asarray(h["counts"], dtype=float)
            if log_scale:
                edges = 10.0 ** edges
            density = counts / counts.sum()
            # earlier groups drawn wider, so a later one on top of the same steps leaves them visible
            ax.stairs(density, edges, color=kw["color"], ls=kw["ls"], lw=max(2.5 - 0.75 * i, 1.0), alpha=0.8,
                      label=f"{label} ({_seed_text(by_seed)})" if j == 0 else "_nolegend_",
                      gid=f"{label} seed {seed}")
            if kw.get("marker") and j == 0:  # markers at bin centres, staggered per group, tell overlaps apart
                centers = np.sqrt(edges[:-1] * edges[1:]) if log_scale else (edges[:-1] + edges[1:]) / 2
                every = max(len(centers) // 16, 2)
                ax.plot(centers, density, ls="none", marker=kw["marker"], color=kw["color"], ms=4,
                        markevery=(i % every, every), label="_nolegend_")
    if log_scale:
        ax.set_xscale("log")
        ax.set_xlabel("|remaining nonzero weight| (log-magnitude bins)")
        occupied = [10.0 ** h["edges"][i] for by_seed in hists.values() for h in by_seed.values()
                    for i, c in enumerate(h["counts"]) if c]
        ax.set_xlim(left=min(occupied) / 3)
    else:
        ax.set_yscale("log")
        ax.set_xlabel("remaining nonzero weight (linear bins)")
    ax.set_ylabel("fraction of nonzero weights per bin")


#: a series with at most this many points gets a marker on each, whatever its style, so that a short
#: run's few prunes show as points rather than as a line too short to see
FEW_POINTS = 12


def _series_style(kw: dict, points: int) -> dict:
    """:func:`_with_points` of ``kw``, with a marker on every point of a short series."""
    kw = _with_points(kw, points)
    if points <= FEW_POINTS:
        kw["marker"] = kw.get("marker") or "o"
        kw["markevery"] = 1
    return kw


def _plot_series(ax, series: list[tuple[int, float]], label: str, kw: dict, name_single: bool = True,
                 **line) -> bool:
    """Plot ``series`` (``[(step, value)]``); a single point is drawn as a marker (and, with
    ``name_single``, named as one in the legend). Whether it was a single point."""
    single = len(series) == 1
    if single and name_single:
        label += f" (one logged point, step {series[0][0]})"
    ax.plot(*zip(*series), label=label, **line, **_series_style(kw, len(series)))
    return single


def _runs_per_label(groups: dict[str, Sequence[Run]], methods: Sequence[str] | None) -> dict[str, list[Run]]:
    """Every seed's run with a log, of each group whose method prunes and is in ``methods`` (None:
    all), in the groups' order, seeds ascending."""
    chosen: dict[str, list[Run]] = {}
    for label, runs in groups.items():
        if methods is None or _method(label) in methods:
            logged = [r for r in sorted(runs, key=lambda r: r.get("seed", 0)) if r.records and _prunes(r)]
            if logged:
                chosen[label] = logged
    return chosen


def draw_figure2b(groups: dict[str, Sequence[Run]], methods: Sequence[str] | None = None, title: str = "",
                  styles: dict[str, dict] | None = None):
    """Fig. 2b as a matplotlib figure (None when no run logged a boundary): see :func:`figure2b`."""
    chosen = _runs_per_label(groups, methods)
    styles = {**label_styles(groups), **(styles or {})}  # a label the given styles lack still gets one
    plt = _pyplot()
    wide = len(chosen) > LEGEND_BESIDE
    fig, (ax, ax_regrowth) = plt.subplots(2, 1, figsize=(9.5 if wide else 6.5, 6), sharex=True, height_ratios=[2, 1])
    singles = []
    for label, runs in chosen.items():  # every seed, in the method's style; one legend entry naming them
        seeds = ", ".join(str(r.get("seed", "?")) for r in runs)
        for i, run in enumerate(runs):
            kept = _positive(*run.scalars("pruning/kept_min_magnitude"))
            series, what = (kept, "smallest kept |θ|") if kept else (_positive(*run.scalars("pruning/threshold")),
                                                                     "largest pruned |θ|")
            named = f"{label}: {what}" + (f" (seeds {seeds})" if len(runs) > 1 else "")
            width = 1.4 if i == 0 else 0.9
            if series:
                singles.append(_plot_series(ax, series, named if i == 0 else "_nolegend_", styles[label],
                                            name_single=i == 0, lw=width, ms=4 if i == 0 else 2, alpha=1 if i == 0
                                            else 0.6))
            regrowth = _positive(*run.scalars("pruning/regrowth_mean"))
            if regrowth:
                _plot_series(ax_regrowth, regrowth, label if i == 0 else "_nolegend_", styles[label],
                             name_single=False, lw=1 if i == 0 else 0.7, ms=3 if i == 0 else 2,
                             alpha=1 if i == 0 else 0.6)
    if not singles:
        plt.close(fig)
        return None
    ax.set_yscale("log")
    ax.set_ylabel("kept/pruned boundary |θ|")
    heading = f"Fig. 2b: the magnitude threshold over training {title}".strip()
    if all(singles):  # said above the axes, where no point can sit under it
        heading += f"\n{ONE_PRUNE_NOTE}"
        _spread_single_points(ax, ax_regrowth)
    ax.set_title(heading)
    _legend(ax, wide)
    if ax_regrowth.lines:
        ax_regrowth.set_yscale("log")
        _legend(ax_regrowth, wide, fontsize=7, ncol=len(ax_regrowth.lines))
    else:
        _note(ax_regrowth, "no regrowth logged")
    ax_regrowth.set_ylabel("regrowth: mean |θ|\nof last prune's zeros")
    ax_regrowth.set_xlabel("step")
    return fig


#: Fig. 2b's heading when every run logged a single prune (a short run)
ONE_PRUNE_NOTE = "each run logged one prune: a point per run, no curve"


def _spread_single_points(*axes) -> None:
    """Axes of single points: the steps from 0, and room above and below the points for the legend."""
    for ax in axes:
        ax.margins(y=0.25)
    steps = [x for ax in axes for line in ax.lines for x in line.get_xdata()]
    axes[0].set_xlim(0, 1.15 * max(steps))


def _note(ax, text: str) -> None:
    """``text`` inside ``ax``, centred: what the axes do not show, and why."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def figure2b(groups: dict[str, Sequence[Run]], path: str | Path, methods: Sequence[str] | None = None,
             title: str = "", styles: dict[str, dict] | None = None) -> Path | None:
    """The kept/pruned boundary over training (the smallest surviving |theta| right after each logged
    prune; the largest pruned score for older logs), and, on a second panel, the regrowth: the mean
    |theta| the weights zeroed by the previous prune had reached before the next one. A line per seed
    of each group (``{label: runs}``) whose method prunes and is in ``methods`` (None: all), styled as
    in :func:`figure2a`, the first seed's named in the legend with every seed. A record without the value, or with it None, NaN or 0 (no prune
    yet), is no point: the axis is logarithmic. A short run's few points each get a marker, and a
    series of one point says so. None when no run logged a boundary."""
    fig = draw_figure2b(groups, methods, title, styles)
    return _save(fig, path) if fig is not None else None


def figure_dev_curves(groups: dict[str, Sequence[Run]], path: str | Path, metric: str, scale: float = 100.0,
                      title: str = "", styles: dict[str, dict] | None = None) -> Path | None:
    """The dev metric over training steps, a line per group (``{label: runs}``; the label starts with
    the method; styled as in :func:`figure2a`): the mean over its seeds, with their range shaded.
    ``scale`` (the task's) makes percent."""
    curves_by_label: dict[str, list[tuple[list[int], list[float]]]] = {}
    for label, runs in groups.items():
        for run in runs:
            steps, values = run.scalars(metric)
            if steps:
                curves_by_label.setdefault(label, []).append((steps, values))
    if not curves_by_label:
        return None
    plt = _pyplot()
    styles = {**label_styles(groups), **(styles or {})}  # a label the given styles lack still gets one
    wide = len(curves_by_label) > LEGEND_BESIDE
    fig, ax = plt.subplots(figsize=(9.5 if wide else 6.5, 4))
    for label in curves_by_label:
        curves = curves_by_label[label]
        common = sorted(set.intersection(*(set(s) for s, _ in curves)))
        if not common:
            continue
        table = np.array([[dict(zip(s, v))[step] for step in common] for s, v in curves]) * scale
        ax.plot(common, table.mean(0), label=f"{label} ({len(curves)} seed{'s' * (len(curves) > 1)})", lw=1.4, ms=4,
                **_with_points(styles[label], len(common)))
        if len(curves) > 1:
            ax.fill_between(common, table.min(0), table.max(0), color=styles[label]["color"], alpha=0.12, lw=0)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{metric.removeprefix('eval_')} (dev{', %' if scale == 100 else ''})")
    ax.set_title(f"Dev score over training {title}".strip())
    _legend(ax, wide)
    return _save(fig, path)


def _positive(steps, values) -> list[tuple[int, float]]:
    """The points a log axis can show: a 0.0 (an older log's "no prune yet") is left out."""
    return [(s, v) for s, v in zip(steps, values) if v is not None and v > 0]


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path
