"""mgpp: magnitude pruning of pretrained transformers with a mixture Gaussian prior (MGPP).

The engine is a handful of small, composable pieces:

* :mod:`mgpp.priors` -- ``MixtureGaussian``, ``L2``, ``NoPrior``
* :mod:`mgpp.schedules` -- ``CubicSparsity``, ``PriorAnnealing``, ``NoPruning``
* :mod:`mgpp.pruning` -- ``TargetSelector``, ``MagnitudeScore``, ``GlobalPruner``, ``kth_smallest``
* :mod:`mgpp.methods` -- ``PruningMethod``; ``preset(name, **knobs)`` builds a method of ``conf/method/``
* :mod:`mgpp.callback` -- ``PruningCallback`` for the Hugging Face ``Trainer``
"""

from .methods import PruningMethod, method_names, preset
from .priors import L2, Laplace, MixtureGaussian, NoPrior, Prior
from .pruning import GlobalPruner, MagnitudeScore, TargetSelector, kth_smallest
from .schedules import CubicSparsity, FixedSparsity, NoPruning, PriorAnnealing

__version__ = "0.1.0"

__all__ = [
    "Prior", "MixtureGaussian", "L2",
    "Laplace", "NoPrior",
    "CubicSparsity", "PriorAnnealing", "NoPruning", "FixedSparsity",
    "TargetSelector", "MagnitudeScore", "GlobalPruner", "kth_smallest",
    "PruningMethod", "method_names", "preset",
]
