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
from .export import export_sparse, load_sparse
from .inference import SparseLinear, sparsify_for_inference
from .pruning import GlobalPruner, MagnitudeScore, NMPruner, TargetSelector, kth_smallest
from .schedules import CubicSparsity, FixedSparsity, NoPruning, PriorAnnealing

__version__ = "0.1.0"

__all__ = [
    "Prior", "MixtureGaussian", "L2",
    "Laplace", "NoPrior",
    "CubicSparsity", "PriorAnnealing", "NoPruning", "FixedSparsity",
    "TargetSelector", "MagnitudeScore", "GlobalPruner", "NMPruner", "kth_smallest",
    "export_sparse", "load_sparse", "sparsify_for_inference", "SparseLinear",
    "PruningMethod", "method_names", "preset",
]
