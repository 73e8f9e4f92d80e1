"""mgpp: magnitude pruning of pretrained transformers with a mixture Gaussian prior (MGPP).

The engine is a handful of small, composable pieces:

* :mod:`mgpp.priors` -- ``MixtureGaussian``, ``L2``, ``NoPrior``
* :mod:`mgpp.schedules` -- ``CubicSparsity``, ``PriorAnnealing``, ``NoPruning``
* :mod:`mgpp.pruning` -- ``TargetSelector``, ``MagnitudeScore``, ``GlobalPruner``, ``kth_smallest``
* :mod:`mgpp.methods` -- ``PruningMethod``; ``preset(name, **knobs)`` builds a method of ``conf/method/``
* :mod:`mgpp.callback` -- ``PruningCallback`` for the Hugging Face ``Trainer``

and, to deploy what it prunes:

* :mod:`mgpp.export` -- ``export_sparse``/``load_sparse``: bitmask + values on disk (``python -m mgpp.export``)
* :mod:`mgpp.inference` -- ``sparsify_for_inference``: sparse CPU matmuls where they measure faster
"""

from .methods import PruningMethod, method_names, preset
from .priors import L2, Laplace, MixtureGaussian, NoPrior, Prior
from .pruning import BlockScore, GlobalPruner, LayerwisePruner, MagnitudeScore, NMPruner, TargetSelector, kth_smallest
from .schedules import CubicSparsity, FixedSparsity, NoPruning, PriorAnnealing

__version__ = "0.1.0"

#: imported on first use, so that ``python -m mgpp.export`` runs a module the package has not loaded yet
_LAZY = {"export_sparse": "export", "load_sparse": "export", "SparseLinear": "inference",
         "sparsify_for_inference": "inference"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Prior", "MixtureGaussian", "L2",
    "Laplace", "NoPrior",
    "CubicSparsity", "PriorAnnealing", "NoPruning", "FixedSparsity",
    "TargetSelector", "MagnitudeScore", "GlobalPruner", "NMPruner", "LayerwisePruner", "BlockScore", "kth_smallest",
    "export_sparse", "load_sparse", "sparsify_for_inference", "SparseLinear",
    "PruningMethod", "method_names", "preset",
]
