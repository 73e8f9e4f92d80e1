"""Sparse CPU inference: pruned linear layers run as sparse matmuls where that measures faster.

Whether a sparse layout beats the dense GEMM depends on the layer's shape, its sparsity, the number of
tokens per call and the CPU, so :func:`sparsify_for_inference` times each candidate on the machine at
hand (dense, torch's CSR and, when the zeros fall in whole blocks, BSR) and keeps the fastest. Layers
below their break-even sparsity stay dense. BERT-style encoders run feature-major
(:mod:`mgpp.feature_major`: no transposes between sparse layers); other models get :class:`SparseLinear`
in place of each pruned ``nn.Linear``. Inference only: the sparse weights get no gradients.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mgpp.feature_major import FeatureMajorEncoder, FeatureMajorLinear, compressed, is_plain_bert_encoder

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
        self.register_buffer("weight", compressed(weight, layout, blocksize))
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
    #: encoders run feature-major, each with (its time, the original's) for ``tokens`` tokens, ms
    encoders: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: encoders left as they were, each with why (none of its layers went sparse, or not faster as a whole)
    encoders_kept: dict[str, str] = field(default_factory=dict)
    compiled: bool = False

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
        for name, (new, old) in self.encoders.items():
            lines.append(f"{name}: feature-major{' (compiled)' if self.compiled else ''}, {new:.2f} ms "
                         f"against {old:.2f} ms as it was ({old / new:.2f}x; times in eager mode)")
        lines += [f"{name}: left as it was ({why})" for name, why in self.encoders_kept.items()]
        return "\n".join(lines)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _fastest(name: str, weight: Tensor, tokens: int, layouts, blocksize: int, reps: int, make,
             time_form) -> tuple[dict, dict]:
    """Times of the dense product and each sparse layout (built by ``make(layout)``, called on an input
    laid out by ``time_form``), and the sparse modules that ran."""
    x = time_form(torch.randn(tokens, weight.shape[1], dtype=weight.dtype, device=weight.device))
    times, modules = {}, {}
    for layout in ("dense", *layouts):
        if layout == "bsr" and empty_block_fraction(weight, blocksize) < 0.5:
            continue
        try:
            module = make(layout)
            times[layout] = time_call(lambda: module(x), reps) * 1e3
        except (RuntimeError, NotImplementedError) as err:  # e.g. no sparse kernel for this dtype/device
            if layout == "dense":
                raise
            log.warning("%s: %s layout skipped (%s)", name, layout, str(err).splitlines()[0])
            continue
        modules[layout] = module
    return times, modules


def _interleaved_ms(first, second, reps: int) -> tuple[float, float]:
    """Median ms of two calls timed in alternation (first, second, first, ...), so that a machine whose
    speed drifts over seconds (a shared or throttled CPU) slows both alike."""
    with torch.inference_mode():
        first(), second()  # warm-up
        times = ([], [])
        for _ in range(reps):
            for fn, out in zip((first, second), times):
                start = time.perf_counter()
                fn()
                out.append(time.perf_counter() - start)
    return statistics.median(times[0]) * 1e3, statistics.median(times[1]) * 1e3


def _choose(times: dict, min_speedup: float) -> str:
    best = min((layout for layout in times if layout != "dense"), key=times.get, default=None)
    return best if best is not None and times["dense"] / times[best] >= min_speedup else "dense"


@torch.no_grad()
def sparsify_for_inference(model: nn.Module, tokens: int = 128, layouts=LAYOUTS, min_sparsity: float = 0.3,
                           min_speedup: float = 1.05, blocksize: int = 4, reps: int = 10, include=None,
                           contiguous_output: bool = True, feature_major: bool = True, seq_len: int = 128,
                           compile: bool = False) -> SparsifyReport:
    """Make ``model``'s pruned linear layers sparse, in place, where a sparse layout is at least
    ``min_speedup`` times faster than the dense one for ``tokens`` rows per call, timed here.

    BERT-style encoders (:func:`~mgpp.feature_major.is_plain_bert_encoder`: BERT, MiniLM, RoBERTa, ...)
    are replaced by a :class:`~mgpp.feature_major.FeatureMajorEncoder` whose layers are timed and chosen
    in the feature-major form (no transposes), where the whole encoder then measures ``min_speedup`` times
    faster than it was, for ``tokens // seq_len`` sequences of ``seq_len`` tokens (``feature_major=False``:
    never); an encoder left as it was has its layers chosen one at a time like any other.
    Every other ``nn.Linear`` becomes a :class:`SparseLinear` where that is faster.

    ``min_sparsity``: layers with fewer zeros are not timed (no sparse kernel wins there). ``include``:
    an optional predicate on the linear layer's name (left dense where it says False). BSR (``blocksize``
    square blocks) is timed only when at least half of a layer's blocks are empty (block-sparse masks, as
    ``pruning=block`` with ``pruning.score.rows`` = ``cols`` = ``blocksize`` leaves; an unstructured mask
    leaves almost none empty). ``contiguous_output``: see :class:`SparseLinear`. ``compile``: the
    feature-major layers' attention core and residual + LayerNorm steps through ``torch.compile`` (fused
    elementwise work; the first call compiles, seconds; needs a C++ compiler). A layout whose kernel fails for a
    layer (a dtype or device torch's sparse kernels lack) is skipped for it. Returns what was measured and
    chosen; the model is put in eval mode.
    """
    unknown = set(layouts) - set(LAYOUTS)
    if unknown:
        raise ValueError(f"unknown layouts {sorted(unknown)}; choose from {LAYOUTS}")
    if tokens < 1 or seq_len < 1:
        raise ValueError(f"tokens and seq_len must be positive, got tokens={tokens}, seq_len={seq_len}")
    model.eval()
    report = SparsifyReport(tokens)
    wanted = (lambda name: True) if include is None else include

    def sparsity_of(weight: Tensor) -> float:
        return float((weight == 0).float().mean())

    encoders = [(name, module) for name, module in model.named_modules()  # a submodule: replaced in its parent
                if feature_major and name and is_plain_bert_encoder(module)]
    for name, encoder in encoders:
        choices = []

        def make_linear(layer_name: str, weight: Tensor, bias: Tensor | None) -> FeatureMajorLinear:
            sparsity = sparsity_of(weight)  # (the encoder names the layer from the model down)
            if sparsity < min_sparsity or not all(wanted(part) for part in _parts(layer_name)):
                return FeatureMajorLinear(weight, bias)
            times, modules = _fastest(layer_name, weight, tokens, layouts, blocksize, reps,
                                      lambda layout: FeatureMajorLinear(weight, bias, layout, blocksize),
                                      lambda x: x.t().contiguous())
            choice = _choose(times, min_speedup)
            choices.append(LayerChoice(layer_name, tuple(weight.shape), sparsity, times, choice))
            return modules[choice]

        replacement = FeatureMajorEncoder(encoder, make_linear, f"{name}.")
        if not any(c.choice != "dense" for c in choices):
            report.encoders_kept[name] = "no layer faster sparse" if choices else "no layer sparse enough to time"
            continue
        hidden = encoder.layer[0].attention.self.query.in_features
        weight = encoder.layer[0].attention.self.query.weight
        states = torch.randn(max(1, tokens // seq_len), min(seq_len, tokens), hidden, dtype=weight.dtype,
                             device=weight.device)
        new_ms, old_ms = _interleaved_ms(lambda: replacement(states), lambda: encoder(states), max(3, reps // 2))
        if old_ms / new_ms < min_speedup:
            report.encoders_kept[name] = f"feature-major not faster: {new_ms:.2f} ms against {old_ms:.2f} ms"
            continue
        if compile:
            for layer in replacement.layer:
                layer.use_compiled()
            report.compiled = True
        _set_submodule(model, name, replacement)
        report.encoders[name] = (new_ms, old_ms)
        report.layers += choices
    # the rest (outside the feature-major encoders, or in those kept as they were): one layer at a time
    candidates = [(name, module) for name, module in model.named_modules() if type(module) is nn.Linear and wanted(name)]
    for name, linear in candidates:
        weight = linear.weight
        sparsity = sparsity_of(weight)
        if sparsity < min_sparsity:
            continue
        times, modules = _fastest(name, weight, tokens, layouts, blocksize, reps,
                                  lambda layout: linear if layout == "dense" else
                                  SparseLinear.from_linear(linear, layout, blocksize, contiguous_output),
                                  lambda x: x)
        choice = _choose(times, min_speedup)
        report.layers.append(LayerChoice(name, tuple(weight.shape), sparsity, times, choice))
        if choice != "dense":
            _set_submodule(model, name, modules[choice])
    log.info("sparse inference: %d of %d pruned linear layers sparse (%d tokens per call), %d encoder(s) "
             "feature-major", len(report.swapped), len(report.layers), tokens, len(report.encoders))
    return report


def _parts(name: str) -> list[str]:
    """The names ``include`` is asked about for a feature-major projection: the stacked query+key+value
    matrix answers for each of its three layers."""
    head, _, last = name.rpartition(".")
    if "+" not in last:
        return [name]
    return [f"{head}.{part}" for part in last.split("+")]
