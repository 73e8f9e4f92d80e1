"""Sparse CPU inference: pruned ``nn.Linear`` layers swapped for sparse matmuls where that measures faster.

Whether a sparse layout beats the dense GEMM depends on the layer's shape, its sparsity, the number of
tokens per call and the CPU, so :func:`sparsify_for_inference` times each candidate on the machine at
hand (dense, torch's CSR and, when the zeros fall in whole blocks, BSR) and keeps the fastest. Layers
below their break-even sparsity stay dense. Inference only: the sparse weights get no gradients.
"""

from __future__ import annotations

import logging
import statistics
import time
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

__all__ = ["SparseLinear", "sparsify_for_inference", "SparsifyReport", "LayerChoice", "time_call"]

LAYOUTS = ("csr", "bsr")


class SparseLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` held as a torch sparse CSR or BSR tensor.

    The product is computed as ``W @ x^T`` (sparse times dense, the form torch's CPU kernels are fast
    at) on a contiguous copy of ``x^T`` (free when ``x`` arrives in that layout, as from another
    ``SparseLinear``); the bias is fused into it with ``addmm``. ``contiguous_output=False`` returns
    ``(W @ x^T)^T`` as a transposed view, saving a copy (measured: 5-10% end to end); safe for models
    that only reshape or ``.view``-split a linear layer's output, which is most of them, and an error,
    never a wrong result, for those that ``.view``-merge it.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, layout: str = "csr", blocksize: int = 16,
                 contiguous_output: bool = True):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got layout={layout!r}")
        weight = weight.detach()
        self.out_features, self.in_features = weight.shape
        self.layout = layout
        self.blocksize = blocksize if layout == "bsr" else None
        self.contiguous_output = contiguous_output
        with warnings.catch_warnings():  # torch flags its sparse layouts as beta, once per process
            warnings.filterwarnings("ignore", message=".*tensor support is in beta.*")
            sparse = weight.to_sparse_csr() if layout == "csr" else weight.to_sparse_bsr((blocksize, blocksize))
        self.register_buffer("weight", sparse)
        self.register_buffer("bias_column", None if bias is None else bias.detach().reshape(-1, 1).clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear, layout: str = "csr", blocksize: int = 16,
                    contiguous_output: bool = True) -> "SparseLinear":
        return cls(linear.weight, linear.bias, layout, blocksize, contiguous_output)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        xt = x.reshape(-1, self.in_features).t().contiguous()
        if self.bias_column is None:
            y = self.weight @ xt
        else:
            y = torch.addmm(self.bias_column, self.weight, xt)
        y = y.t().contiguous() if self.contiguous_output else y.t()
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        nnz = self.weight.values().numel() if self.layout == "csr" else self.weight.values().count_nonzero()
        return (f"in_features={self.in_features}, out_features={self.out_features}, layout={self.layout}"
                + (f", blocksize={self.blocksize}" if self.blocksize else "")
                + f", density={int(nnz) / (self.in_features * self.out_features):.3f}")


def time_call(fn, reps: int = 10, warmup: int = 2, budget_s: float | None = None) -> float:
    """Median wall time of ``fn()`` in seconds (fewer reps if ``budget_s`` runs out)."""
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        times, start = [], time.perf_counter()
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
            if budget_s is not None and time.perf_counter() - start > budget_s and len(times) >= 3:
                break
    return statistics.median(times)


def empty_block_fraction(weight: Tensor, blocksize: int) -> float:
    """Fraction of ``blocksize x blocksize`` blocks that are entirely zero (0 when the shape does not tile)."""
    rows, cols = weight.shape
    if rows % blocksize or cols % blocksize:
        return 0.0
    blocks = (weight != 0).reshape(rows // blocksize, blocksize, cols // blocksize, blocksize).any(3).any(1)
    return 1.0 - blocks.float().mean().item()


@dataclass
class LayerChoice:
    name: str
    shape: tuple[int, int]
    sparsity: float
    times_ms: dict[str, float]  #: measured layouts: dense, csr, bsr
    choice: str  #: the layout kept

    @property
    def speedup(self) -> float:
        return self.times_ms["dense"] / self.times_ms[self.choice]


@dataclass
class SparsifyReport:
    tokens: int
    layers: list[LayerChoice] = field(default_factory=list)

    @property
    def swapped(self) -> list[LayerChoice]:
        return [c for c in self.layers if c.choice != "dense"]

    def table(self) -> str:
        lines = [f"{'layer':<52} {'shape':>11} {'sparsity':>8} {'dense ms':>9} {'csr ms':>8} {'bsr ms':>8}  choice",
                 "-" * 110]
        for c in self.layers:
            t = c.times_ms
            lines.append(f"{c.name[-52:]:<52} {c.shape[0]:>5}x{c.shape[1]:<5} {c.sparsity:>8.3f} {t['dense']:>9.3f} "
                         f"{t.get('csr', float('nan')):>8.3f} {t.get('bsr', float('nan')):>8.3f}  {c.choice}"
                         + (f" ({c.speedup:.2f}x)" if c.choice != "dense" else ""))
        lines.append(f"{len(self.swapped)} of {len(self.layers)} linear layers sparse ({self.tokens} tokens per call)")
        return "\n".join(lines)


@torch.no_grad()
def sparsify_for_inference(model: nn.Module, tokens: int = 128, layouts=LAYOUTS, min_sparsity: float = 0.3,
                           min_speedup: float = 1.05, blocksize: int = 16, reps: int = 10,
                           include=None, contiguous_output: bool = True) -> SparsifyReport:
    """Swap, in place, each ``nn.Linear`` of ``model`` for a :class:`SparseLinear` when a sparse layout
    is at least ``min_speedup`` times faster than the dense one for ``tokens`` rows per call, timed here.

    ``min_sparsity``: layers with fewer zeros are not timed (no sparse kernel wins there). ``include``:
    an optional predicate on the module name. BSR is timed only when at least half of a layer's
    ``blocksize`` blocks are empty (block-sparse masks; an unstructured mask leaves almost none empty).
    ``contiguous_output``: see :class:`SparseLinear`. A layout whose kernel fails for a layer (a dtype
    or device torch's sparse kernels lack) is skipped for it. Returns what was measured and chosen per
    layer; the model is put in eval mode.
    """
    unknown = set(layouts) - set(LAYOUTS)
    if unknown:
        raise ValueError(f"unknown layouts {sorted(unknown)}; choose from {LAYOUTS}")
    if tokens < 1:
        raise ValueError(f"tokens must be positive, got tokens={tokens}")
    model.eval()
    report = SparsifyReport(tokens)
    candidates = [(name, module) for name, module in model.named_modules()
                  if type(module) is nn.Linear and (include is None or include(name))]
    for name, linear in candidates:
        weight = linear.weight
        sparsity = float((weight == 0).float().mean())
        if sparsity < min_sparsity:
            continue
        x = torch.randn(tokens, linear.in_features, dtype=weight.dtype, device=weight.device)
        times = {"dense": time_call(lambda: linear(x), reps) * 1e3}
        modules = {}
        for layout in layouts:
            if layout == "bsr" and empty_block_fraction(weight, blocksize) < 0.5:
                continue
            try:
                sparse = SparseLinear.from_linear(linear, layout, blocksize, contiguous_output)
                times[layout] = time_call(lambda: sparse(x), reps) * 1e3
            except (RuntimeError, NotImplementedError) as err:  # e.g. no sparse kernel for this dtype/device
                log.warning("%s: %s layout skipped (%s)", name, layout, str(err).splitlines()[0])
                continue
            modules[layout] = sparse
        best = min(modules, key=times.get, default=None)  # the fastest sparse layout
        choice = best if best is not None and times["dense"] / times[best] >= min_speedup else "dense"
        report.layers.append(LayerChoice(name, tuple(weight.shape), sparsity, times, choice))
        if choice != "dense":
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, modules[choice])
    log.info("sparse inference: %d of %d pruned linear layers swapped (%d tokens per call)",
             len(report.swapped), len(report.layers), tokens)
    return report
