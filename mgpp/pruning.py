"""Which weights are pruned, how they are scored, and the global pruner.

* :class:`TargetSelector` picks the prunable weights by name patterns.
* A score (:class:`MagnitudeScore`, or any callable ``Tensor -> Tensor``) ranks them.
* :func:`kth_smallest` finds the exact k-th smallest score over all targets with a
  two-pass radix select (65,536-bin histograms of the float32 bit patterns), a chunk
  at a time: no concatenated copy, no sort, memory bounded by ``chunk_numel``, and
  the same value ``torch.kthvalue`` returns on the concatenation. Histograms add up,
  so the same code could select globally across shards by summing them.
* :class:`GlobalPruner` zeroes exactly ``floor(v * d)`` of the ``d`` target weights. When it prunes
  to the same count again (every step after ``t_f``), it first looks for the threshold in a band
  around the previous one (:func:`_select_in_band`: one counting pass, the few scores in the band
  sorted out exactly) and runs the radix select only when the threshold left the band.
* :class:`LayerwisePruner` prunes every target tensor to the same sparsity, each by its own threshold;
  :class:`BlockScore` scores whole ``rows x cols`` blocks, so that a pruner drops blocks (CPU kernels).
* :class:`FixedMask` keeps pruned weights at zero after a schedule freezes the mask.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_INCLUDE",
    "DEFAULT_EXCLUDE",
    "TargetSelector",
    "Targets",
    "MagnitudeScore",
    "kth_smallest",
    "GlobalPruner",
    "NMPruner",
    "SemiStructuredScore",
    "LayerwisePruner",
    "BlockScore",
    "PruneResult",
    "FixedMask",
    "save_mask",
    "load_mask",
]

#: Every parameter inside a numbered transformer block: ``encoder.layer.3.`` (BERT,
#: DeBERTa-v2/v3), ``encoder.layers.3.`` / ``decoder.layers.3.`` (BART), ``model.layers.3.``
#: (Llama-style decoders) or ``transformer.h.3.`` (GPT-2).
DEFAULT_INCLUDE: tuple[str, ...] = (r"(^|\.)(layers?|h)\.\d+\.",)
#: ... minus normalisation, biases and embeddings (relative-position tables included).
DEFAULT_EXCLUDE: tuple[str, ...] = (r"norm", r"\.bias$", r"embed")

#: Elements scored at a time, per device type. The selection's transient memory is a few
#: 4-byte buffers of this size (about 2 MiB on CPU) whatever the model size; on a GPU
#: larger chunks keep kernel launches fewer (about 20 MiB transient, against 340 MiB for
#: a concatenated float32 copy of BERT-base's targets).
CHUNK_NUMEL = {"cpu": 1 << 17}
CHUNK_NUMEL_ACCELERATOR = 1 << 20


def default_chunk_numel(device: torch.device) -> int:
    return CHUNK_NUMEL.get(device.type, CHUNK_NUMEL_ACCELERATOR)


def _compile(pattern: str) -> Callable[[str], bool]:
    """``glob:`` prefix: shell-style match of the whole name; otherwise a regex searched in the name."""
    if pattern.startswith("glob:"):
        glob = pattern[len("glob:") :]
        return lambda name: fnmatch.fnmatchcase(name, glob)
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise ValueError(f"target pattern {pattern!r} is not a valid regular expression: {err}") from None
    return lambda name: regex.search(name) is not None


@dataclass
class Targets:
    """The selected weights, in model order (the order that breaks pruning ties)."""

    names: list[str]
    params: list[Tensor]
    #: per target, the dimension its layer reads its input along: -1 (``nn.Linear``, stored (out, in)),
    #: 0 for GPT-2's ``Conv1D`` (stored (in, out)); patterns such as N:M group along it
    input_dims: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.input_dims:
            self.input_dims = [-1] * len(self.params)

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)

    def __len__(self) -> int:
        return len(self.params)

    def summary(self, max_names: int = 8) -> str:
        shown = ", ".join(self.names[:max_names])
        more = f", ... (+{len(self.names) - max_names} more)" if len(self.names) > max_names else ""
        return f"{len(self)} target tensors, {self.numel:,} weights: {shown}{more}"

    @torch.no_grad()
    def zeros_per_tensor(self) -> list[int]:
        # count_nonzero is int64 whatever the weight dtype (a bf16 count would round); one sync.
        nonzero = torch.stack([p.detach().count_nonzero() for p in self.params]).tolist()
        return [p.numel() - n for p, n in zip(self.params, nonzero)]

    def sparsity(self) -> float:
        """Fraction of target weights that are exactly zero."""
        return sum(self.zeros_per_tensor()) / max(self.numel, 1)

    @torch.no_grad()
    def min_nonzero_magnitude(self) -> float:
        """Smallest |w| among the nonzero target weights (0.0 when all are zero)."""
        inf = float("inf")
        smallest = min(float(torch.where(p != 0, p.detach().abs(), inf).min()) for p in self.params)
        return 0.0 if smallest == inf else smallest

    def layer_sparsity(self) -> dict[str, float]:
        """Per target tensor: fraction of exactly-zero weights."""
        return {n: z / p.numel() for n, p, z in zip(self.names, self.params, self.zeros_per_tensor())}


@dataclass
class TargetSelector:
    """Selects prunable weights by name.

    A parameter is a target when its name matches any ``include`` pattern, no
    ``exclude`` pattern, and it has at least ``min_ndim`` dimensions. Patterns are
    regular expressions searched in the dotted name, or shell globs matched against
    the whole name when prefixed with ``glob:`` (``glob:*.attention.*.weight``).
    The default picks every weight matrix of the transformer layers of BERT, DeBERTa-v2/v3,
    BART, GPT-2 and Llama-style decoders (attention and MLP projections), and never embeddings,
    norms, biases, pooler or heads (a tied LM head is the embedding: never picked either).
    """

    include: Sequence[str] = DEFAULT_INCLUDE
    exclude: Sequence[str] = DEFAULT_EXCLUDE
    min_ndim: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.include, str) or isinstance(self.exclude, str):
            raise TypeError("include/exclude take a list of patterns, not a single string")
        self._include = [_compile(p) for p in self.include]
        self._exclude = [_compile(p) for p in self.exclude]

    def matches(self, name: str, param: Tensor) -> bool:
        return (
            param.dim() >= self.min_ndim
            and any(f(name) for f in self._include)
            and not any(f(name) for f in self._exclude)
        )

    def select(self, model: nn.Module) -> Targets:
        transposed = _transposed_weights(model)
        names, params, input_dims = [], [], []
        for name, param in model.named_parameters():
            if self.matches(name, param):
                names.append(name)
                params.append(param)
                input_dims.append(0 if id(param) in transposed else -1)
        if not params:
            sample = [n for n, _ in model.named_parameters()][:6]
            raise ValueError(
                f"target patterns include={list(self.include)} exclude={list(self.exclude)} "
                f"(min_ndim={self.min_ndim}) matched no parameter of {type(model).__name__}; "
                f"its parameters are named like {sample}"
            )
        return Targets(names, params, input_dims)


def _transposed_weights(model: nn.Module) -> set[int]:
    """ids of the weights stored (in, out): those of transformers' ``Conv1D`` (GPT-2)."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return set()
    return {id(m.weight) for m in model.modules() if isinstance(m, Conv1D)}


class MagnitudeScore:
    """|theta|: the score of magnitude pruning. A score maps a weight chunk to same-shape float32 scores."""

    #: Scores are >= 0 and never -0.0, so selection can use their bits as they are
    #: (a score without this attribute may be negative).
    nonnegative = True

    def __call__(self, weights: Tensor, out: Tensor | None = None) -> Tensor:
        """``out``: a float32 buffer of the same size to write the scores into, instead of a new tensor."""
        if out is None:
            return weights.detach().float().abs()
        weights = weights.detach()
        return torch.abs(weights, out=out) if weights.dtype == torch.float32 else out.copy_(weights).abs_()

    def __repr__(self) -> str:
        return "MagnitudeScore()"


Score = Callable[[Tensor], Tensor]


def _is_magnitude(score: Score) -> bool:
    """Whether ``score`` is exactly |w| (as float32): then a score is finite exactly where its weight is,
    and ``score <= t`` is ``-t <= w <= t``."""
    return type(score) is MagnitudeScore


def _chunks(params: Sequence[Tensor], chunk_numel: int) -> Iterator[Tensor]:
    """Flat views (not copies) of at most ``chunk_numel`` elements, in model order."""
    for p in params:
        flat = p.detach().view(-1)
        for start in range(0, flat.numel(), chunk_numel):
            yield flat[start : start + chunk_numel]


def _scored_chunks(params: Sequence[Tensor], chunk_numel: int, score: Score) -> Iterator[tuple[Tensor, Tensor]]:
    """``(chunk, score(chunk))`` for the chunks of :func:`_chunks`. |w| goes into one buffer reused chunk
    after chunk (a fresh tensor per chunk made the pass over the weights about 1.5x slower on CPU), so
    each chunk's scores last only until the next one is yielded: keep what is computed from them.

    A score with a ``matrix_rows`` attribute (:class:`BlockScore`) reads each weight as a matrix
    ``(rows, last dim)``: its chunks are still flat views in flat order, but hold whole multiples of
    ``matrix_rows`` rows (at least one such band, whatever ``chunk_numel``), and the score is called on
    the chunk viewed as ``(-1, last dim)``; its flattened scores are yielded."""
    rows = getattr(score, "matrix_rows", None)
    if rows:
        for p in params:
            w = p.detach()
            width = w.shape[-1] if w.dim() else 1
            unit = max(1, rows * width)
            step = max(unit, chunk_numel // unit * unit)
            flat = w.view(-1)
            for start in range(0, flat.numel(), step):
                chunk = flat[start : start + step]
                yield chunk, score(chunk.view(-1, width)).reshape(-1)
        return
    buffer = None
    for chunk in _chunks(params, chunk_numel):
        if not _is_magnitude(score):
            yield chunk, score(chunk)
            continue
        if buffer is None:
            buffer = torch.empty(chunk_numel, dtype=torch.float32, device=chunk.device)
        yield chunk, score(chunk, out=buffer[: chunk.numel()])


def _order_keys(scores: Tensor, nonnegative: bool) -> Tensor:
    """int32 keys that sort like the float32 scores."""
    if nonnegative:  # the bits of non-negative floats already sort like the floats
        return scores.view(torch.int32)
    # Sign-magnitude -> two's-complement order. The one copy maps -0.0 to +0.0 (equal floats
    # get equal keys) and gives a buffer of our own (a score may return a view of the weights)
    # that the bit twiddling below can overwrite.
    keys = (scores + 0.0).view(torch.int32)
    sign = keys >> 31  # 0 or -1
    sign &= 0x7FFFFFFF
    keys ^= sign  # negative floats: flip the magnitude bits so that larger means larger
    return keys


def _key_to_float(key: int) -> float:
    bits = key ^ (0x7FFFFFFF if key < 0 else 0)
    return float(torch.tensor([bits], dtype=torch.int32).view(torch.float32).item())


def _add_counts(hist: Tensor, values: Tensor) -> None:
    """``hist[v] += 1`` for every ``v`` in ``values`` (non-negative ints). The bincount is only as long as
    the largest value present: one of ``minlength=len(hist)`` would allocate, zero and add all 65,536
    bins for every chunk, which cost as much as the counting itself."""
    if values.numel():
        counts = torch.bincount(values)
        hist[: counts.numel()] += counts


def _masked_gather(values: Tensor, mask: Tensor) -> Tensor:
    """``values[mask != 0]`` (1-D, in order) for a fresh ``mask``, bool or 0/1 float32, that is mostly zero.

    Boolean indexing scans the mask an element at a time, on CPU several times the cost of an
    elementwise pass. Here a vectorized pass finds the blocks of the mask that hold any nonzero (8 bools
    read as one int64, or 64 floats summed), and only those blocks are looked at again."""
    boolean = mask.dtype == torch.bool
    block = 8 if boolean else 64
    if mask.numel() % block or (boolean and mask.storage_offset() % block):
        return values[mask != 0]
    any_set = mask.view(torch.int64) if boolean else mask.view(-1, block).sum(1)
    hit = any_set.nonzero().view(-1)
    return values.view(-1, block)[hit][mask.view(-1, block)[hit] != 0]


def _locate(hist: Tensor, k: int) -> tuple[int, int]:
    """Bin holding the k-th (1-based) element, and how many elements lie in lower bins."""
    cum = hist.cumsum(0)
    b = int(torch.searchsorted(cum, torch.tensor([k], device=cum.device, dtype=cum.dtype)).item())
    below = int(cum[b - 1].item()) if b > 0 else 0
    return b, below


@torch.no_grad()
def kth_smallest(
    params: Sequence[Tensor], k: int, score: Score | None = None, chunk_numel: int | None = None
) -> tuple[float, int]:
    """Exact k-th smallest (1-based) score over all ``params``, and how many scores are strictly smaller.

    Two histogram passes over the scores' int32 order keys: the high 16 bits, then the
    low 16 bits inside the winning high bin. Scores must be finite.
    """
    value, below, _ = _select(params, k, score or MagnitudeScore(), chunk_numel)
    return value, below


def reduce_over_ranks(t: Tensor, group, op: str = "sum") -> Tensor:
    """``t`` reduced in place (``sum``, ``min`` or ``max``) over the ranks of ``group``; nothing to do without one.
    Under NCCL a CPU tensor (CPU-offloaded shards) makes the trip through the current GPU."""
    if group is not None:
        import torch.distributed as dist

        reduce_op = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op]
        if dist.get_backend(group) == "nccl" and t.device.type != "cuda":
            on_gpu = t.to(f"cuda:{torch.cuda.current_device()}")
            dist.all_reduce(on_gpu, op=reduce_op, group=group)
            t.copy_(on_gpu)
        else:
            dist.all_reduce(t, op=reduce_op, group=group)
    return t


def _global_numel(params: Sequence[Tensor], group) -> int:
    local = sum(p.numel() for p in params)
    if group is None:
        return local
    return int(reduce_over_ranks(torch.tensor([local], dtype=torch.int64, device=_device(params)), group).item())


def _device(params: Sequence[Tensor]) -> torch.device:
    return params[0].device if params else torch.device("cpu")


#: The high 16 bits of a non-negative float32 from which on it is inf or NaN (exponent all ones).
_NONFINITE_HIGH = 0x7F80
NONFINITE_WEIGHTS = "cannot prune: non-finite weights (NaN or inf); the run diverged"


def _select(params: Sequence[Tensor], k: int, score: Score, chunk_numel: int | None,
            group=None, total: int | None = None, refuse_nonfinite: bool = False) -> tuple[float, int, int]:
    """:func:`kth_smallest`, plus how many scores equal the k-th. With a process ``group``, ``params``
    are this rank's shards and the selection is over all ranks' shards: the histograms are summed
    across ranks (two all-reduces of 65,536 counts), never the weights gathered.

    ``refuse_nonfinite`` (non-negative scores that are non-finite exactly where the weights are): raise
    :data:`NONFINITE_WEIGHTS` when the first histogram has counts in the inf/NaN bins, instead of a
    separate pass over the weights.
    """
    total = total if total is not None else _global_numel(params, group)
    if not 1 <= k <= total:
        raise ValueError(f"k must lie in [1, {total}] (number of target weights), got k={k}")
    device = _device(params)
    chunk_numel = chunk_numel or default_chunk_numel(device)
    nonneg = getattr(score, "nonnegative", False)
    offset = 0 if nonneg else 1 << 15  # maps the high 16 bits of the keys onto [0, 65536)
    hist = torch.zeros(1 << 16, dtype=torch.int64, device=device)
    for _, scores in _scored_chunks(params, chunk_numel, score):
        high = _order_keys(scores, nonneg) >> 16
        if offset:
            high += offset
        _add_counts(hist, high)
    reduce_over_ranks(hist, group)
    if refuse_nonfinite and nonneg and bool(hist[_NONFINITE_HIGH:].any()):
        raise ValueError(NONFINITE_WEIGHTS)
    high_bin, below_high = _locate(hist, k)

    hist.zero_()
    high_key = high_bin - offset
    for _, scores in _scored_chunks(params, chunk_numel, score):
        keys = _order_keys(scores, nonneg)
        low = _masked_gather(keys, (keys >> 16) == high_key)
        low &= 0xFFFF
        _add_counts(hist, low)
    low_bin, below_low = _locate(reduce_over_ranks(hist, group), k - below_high)
    value = _key_to_float((high_key << 16) | low_bin)
    return value, below_high + below_low, int(hist[low_bin].item())


def _select_in_band(params: Sequence[Tensor], k: int, score: Score, chunk_numel: int, lo: float, hi: float,
                    max_band: int, refuse_nonfinite: bool = False) -> tuple[tuple[float, int, int] | None, str]:
    """:func:`_select`'s answer when the k-th score lies in ``[lo, hi]``, from one pass over the scores.

    The pass counts the scores below ``lo`` and gathers those in the band (a few hundred when the band
    is a narrow one around the previous threshold); the k-th score is then the right one of the band's
    ``torch.kthvalue``, and the counts below and equal to it are exact, ties included. The comparisons
    write 0/1 float32s (on CPU several times faster than bool results), whose float32 sums count
    exactly up to 2**24 (float64 sums past that). The pass also takes each chunk's largest score: NaN
    propagates through ``amax`` and an inf is the largest, so a score that is not finite shows there
    without a pass of its own (NaN fails every comparison, so it would only vanish from the counts;
    an inf counts as above the band).

    Returns ``(selection, "band")``, or ``(None, why)`` when the band cannot tell: ``"band_miss"``, the
    k-th score is outside it; ``"band_full"``, more than ``max_band`` scores are in it (the pass stops
    there); ``"band_nan"``, a score is NaN. The caller then runs :func:`_select`, whose answer is the
    same whatever the band. ``refuse_nonfinite``: a NaN or inf score gives ``"band_nonfinite"``, for the
    caller to raise :data:`NONFINITE_WEIGHTS` as :func:`_select` would.
    """
    below, pieces, tops, n_band = 0, [], [], 0
    flags = None  # 0/1 float32 rows: score < lo, score <= hi
    for _, s in _scored_chunks(params, chunk_numel, score):
        n = s.numel()
        if flags is None or flags.shape[1] < n:  # a matrix score's chunks may exceed chunk_numel
            flags = torch.empty(2, max(chunk_numel, n), dtype=torch.float32, device=s.device)
        under, upto = flags[0, :n], flags[1, :n]
        torch.lt(s, lo, out=under)
        torch.le(s, hi, out=upto)
        n_under, n_upto = flags[:, :n].sum(1, dtype=torch.float64 if n > 1 << 24 else None).tolist()
        below += int(n_under)
        if n_upto > n_under:
            n_band += int(n_upto - n_under)
            if n_band > max_band:
                return None, "band_full"
            pieces.append(_masked_gather(s, upto.sub_(under)))  # 1.0 in the band
        tops.append(s.amax())
    top = float(torch.stack(tops).amax()) if tops else 0.0
    if refuse_nonfinite and not math.isfinite(top):
        return None, "band_nonfinite"
    if math.isnan(top):  # NaN is in no count: leave it to the radix select, as without a band
        return None, "band_nan"
    rank = k - below  # the k-th score's rank inside the band
    if not 1 <= rank <= n_band:
        return None, "band_miss"
    band = torch.cat(pieces)
    value = band.kthvalue(rank).values
    below_value = below + int((band < value).sum())
    equal = int((band == value).sum())
    return (float(value) + 0.0, below_value, equal), "band"  # + 0.0: -0.0 is 0.0, as in the radix select


@dataclass
class PruneResult:
    sparsity: float  #: requested fraction
    num_pruned: int  #: floor(sparsity * numel) weights set to zero
    numel: int
    threshold: float | None  #: largest pruned score (None when nothing is pruned)


#: how far a sparsity may sit from a pattern's exact one (1 - n/m, e.g. 0.666667 for 2:3) and still mean it
SPARSITY_TOLERANCE = 1e-6


def num_to_prune(sparsity: float, numel: int) -> int:
    """floor(sparsity * numel), immune to the binary rounding of e.g. 0.29 * 100 = 28.999..."""
    return min(numel, int(math.floor(sparsity * numel + 1e-6)))


#: The band around the previous threshold, as a fraction of it (:meth:`GlobalPruner._threshold`): its
#: first width, its bounds, how many times the threshold's last move it is kept at least, and how much
#: it narrows after a hit. Only speed depends on these, never a result.
BAND_INIT, BAND_MIN, BAND_MAX = 1 / 16, 1 / 4096, 1 / 2
BAND_SAFETY, BAND_NARROW = 4.0, 0.75
#: at most this many in-band scores are gathered (4 bytes each); past it, the radix select runs
BAND_MAX_NUMEL = 1 << 18
#: weight dtypes whose float32 magnitude is exact, so that hardshrink(w, t) zeroes exactly |w| <= t
_SHRINK_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _shrinks_exactly(dtype: torch.dtype, threshold: float) -> bool:
    """Whether ``hardshrink(w, threshold)`` on weights of ``dtype`` zeroes exactly those with
    ``float32(|w|) <= threshold``: the magnitude is exact in float32 and the threshold in ``dtype``."""
    if dtype not in _SHRINK_DTYPES:
        return False
    return float(torch.tensor(threshold, dtype=torch.float32).to(dtype)) == threshold


@dataclass
class GlobalPruner:
    """Zeroes the ``floor(v * d)`` lowest-scoring of all ``d`` target weights, globally.

    Ties at the threshold are broken deterministically: the earliest weights in model
    order (target tensor order, then flat index) are pruned first.

    After ``t_f`` every step prunes the same number of weights and the threshold moves little, so
    the pruner remembers its last threshold (plain attributes, never saved: a hint, not state) and
    looks for the next one in a band around it (:func:`_select_in_band`) before any radix select.
    ``selections`` counts how each threshold was found (``"band"``, ``"radix"``, and the band's misses).
    """

    score: Score = field(default_factory=MagnitudeScore)
    chunk_numel: int | None = None  #: None: per device type (see CHUNK_NUMEL)

    #: the largest sparsity this pruner can reach (a pattern such as N:M caps it)
    max_sparsity: float = field(default=1.0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.chunk_numel is not None and self.chunk_numel < 1:
            raise ValueError(f"chunk_numel must be positive, got chunk_numel={self.chunk_numel}")
        self.forget_threshold()
        self.selections: Counter[str] = Counter()

    def forget_threshold(self) -> None:
        """Drop the previous threshold: the next prune runs the radix select (the same result, slower)."""
        self._hint: tuple[int, float] | None = None  # (k, threshold) of the last prune without a group
        self._band = BAND_INIT

    def _num_to_prune(self, sparsity: float, numel: int) -> int:
        return num_to_prune(sparsity, numel)

    def check_targets(self, names: Sequence[str] | None, params: Sequence[Tensor],
                      input_dims: Sequence[int] | None = None) -> None:
        """Refuse targets this pruner cannot prune (a pattern pruner checks their shapes and layout); a score
        with a ``check_targets`` of its own (:class:`BlockScore`) checks them too."""
        check = getattr(self.score, "check_targets", None)
        if check is not None:
            check(names, params, input_dims)

    @property
    def calibration_score(self) -> Score:
        """The score whose quantiles calibrate a schedule (prior annealing): the plain ranking."""
        return self.score

    @torch.no_grad()
    def prune_(self, params: Sequence[Tensor], sparsity: float, names: Sequence[str] | None = None,
               group=None) -> PruneResult:
        """Zero ``floor(sparsity * d)`` of the ``d`` weights of ``params``, in place.

        With a process ``group`` (sharded training), ``params`` are this rank's shards, each target
        split along dim 0 in rank order as FSDP does, and the prune is over all ranks' shards: the same
        threshold and mask as one process pruning the whole tensors, ties included. Communication: the
        selection's histogram all-reduces, and one all-reduce of per-rank, per-tensor tie counts in
        the rare case that only some of the weights tied at the threshold go.
        """
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must lie in [0, 1), got sparsity={sparsity!r}")
        if sparsity > self.max_sparsity + SPARSITY_TOLERANCE:
            raise ValueError(f"sparsity={sparsity!r} is more than {self!r} can reach ({self.max_sparsity!r})")
        self.check_targets(names, params)
        numel = _global_numel(params, group)
        k = self._num_to_prune(sparsity, numel)
        if k == 0:
            return PruneResult(sparsity, 0, numel, None)
        chunk_numel = self.chunk_numel or default_chunk_numel(_device(params))
        # |w| is non-finite exactly where w is: the selection's own passes refuse NaN/inf weights
        folded = group is None and _is_magnitude(self.score)
        if not folded:
            bad = torch.tensor([0 if all(bool(torch.isfinite(p).all()) for p in params) else 1],
                               device=_device(params))
            if int(reduce_over_ranks(bad, group).item()):  # checked before any weight is touched, on every rank
                raise ValueError(NONFINITE_WEIGHTS)
        threshold, below, equal = self._threshold(params, k, numel, chunk_numel, group, folded)
        if not math.isfinite(threshold):
            raise ValueError(f"cannot prune: the pruning threshold is {threshold} (non-finite scores: the weights "
                             "hold NaN or inf)")
        ties_left = k - below  # >= 1: the k-th element itself sits at the threshold
        every_tie = ties_left == equal  # every tied weight goes (the usual case): one comparison decides
        allowance = None  # per local tensor: how many of its tied weights go (sharded, some ties only)
        if not every_tie and group is not None:
            allowance = self._tie_allowance(params, threshold, ties_left, chunk_numel, group)
        # |w| <= t -> +0.0 as masked_fill_ below does, in one vectorized in-place pass and no mask
        shrinks = ({dtype for dtype in {p.dtype for p in params} if _shrinks_exactly(dtype, threshold)}
                   if every_tie and _is_magnitude(self.score) else set())
        for i, p in enumerate(params):
            if p.dtype in shrinks:
                w = p.detach()
                torch.ops.aten.hardshrink.out(w, threshold, out=w)
                continue
            if allowance is not None:
                ties_left = allowance[i]
            for chunk, s in _scored_chunks([p], chunk_numel, self.score):
                if every_tie:
                    chunk.masked_fill_(s <= threshold, 0.0)
                    continue
                chunk.masked_fill_(s < threshold, 0.0)
                if ties_left > 0:
                    tied = (s == threshold).view(-1).nonzero().view(-1)[:ties_left]
                    chunk[tied] = 0.0
                    ties_left -= tied.numel()
        return PruneResult(sparsity, k, numel, threshold)

    def _threshold(self, params, k: int, numel: int, chunk_numel: int, group,
                   refuse_nonfinite: bool) -> tuple[float, int, int]:
        """:func:`_select`'s ``(k-th score, count below, count equal)``: from the band around the previous
        threshold when the last prune removed the same number of weights (and there is no process
        group), else, or when the band misses, from the radix select.

        The band is a fraction of the previous threshold on either side, adapted to the moves seen:
        kept at least :data:`BAND_SAFETY` times the last relative move, narrowed slowly after a hit
        (fewer in-band scores to gather), widened 4x after a miss, narrowed 4x when it held too many.
        """
        hint = self._hint if group is None and self._hint is not None and self._hint[0] == k else None
        selection, outcome = None, None
        if hint is not None:
            prev = hint[1]
            lo, hi = prev - self._band * abs(prev), prev + self._band * abs(prev)
            selection, outcome = _select_in_band(params, k, self.score, chunk_numel, lo, hi, BAND_MAX_NUMEL,
                                                 refuse_nonfinite)
            self.selections[outcome] += 1
            if outcome == "band_nonfinite":
                raise ValueError(NONFINITE_WEIGHTS)
        if selection is None:
            selection = _select(params, k, self.score, chunk_numel, group, numel, refuse_nonfinite)
            self.selections["radix"] += 1
        if hint is not None:
            prev, now = hint[1], selection[0]
            move = abs(now - prev) / abs(prev) if prev else math.inf
            if outcome == "band_full":
                band = self._band / 4
            elif outcome == "band":
                band = max(self._band * BAND_NARROW, BAND_SAFETY * move)
            else:
                band = max(self._band * 4, BAND_SAFETY * move)
            self._band = min(BAND_MAX, max(BAND_MIN, band))
        self._hint = (k, selection[0]) if group is None else None
        return selection

    def _tie_allowance(self, params, threshold: float, ties_left: int, chunk_numel: int, group) -> list[int]:
        """Per local shard, how many of its weights tied at the threshold to prune, so that the ties go
        in model order across ranks: tensor by tensor, and within a tensor rank by rank (dim-0 shards)."""
        import torch.distributed as dist

        device = _device(params)
        counts = torch.tensor([sum(int((s == threshold).sum()) for _, s in _scored_chunks([p], chunk_numel, self.score))
                               for p in params], dtype=torch.int64, device=device)
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        table = torch.zeros(world, len(params), dtype=torch.int64, device=device)
        table[rank] = counts
        order = reduce_over_ranks(table, group).t().reshape(-1)  # every rank's counts; tensor-major: model order
        before = (order.cumsum(0) - order).view(len(params), world)[:, rank]
        return [max(0, min(int(c), ties_left - int(b))) for c, b in zip(counts.tolist(), before.tolist())]


class SemiStructuredScore:
    """Wraps a score so that the ``n`` best-scored of every ``m`` consecutive weights score +inf.

    A global selection over these scores only ever reaches the others: the weights that an N:M
    pattern removes. Chunks must hold whole groups (:class:`NMPruner` aligns them).
    """

    nonnegative = True

    def __init__(self, n: int, m: int, base: Score | None = None):
        self.n, self.m = n, m
        self.base = base or MagnitudeScore()
        if not getattr(self.base, "nonnegative", False):
            raise ValueError(f"N:M pruning needs a non-negative score, got {self.base!r}")

    def __call__(self, weights: Tensor) -> Tensor:
        groups = self.base(weights).reshape(-1, self.m)
        best = groups.topk(self.n, dim=1, sorted=False).indices
        return groups.scatter(1, best, math.inf).view(weights.shape)

    def __repr__(self) -> str:
        return f"SemiStructuredScore(n={self.n}, m={self.m}, base={self.base!r})"


@dataclass
class NMPruner(GlobalPruner):
    """N:M semi-structured pruning: at most ``n`` nonzeros in every ``m`` consecutive weights along the
    input dimension (the last one of an ``nn.Linear`` weight), e.g. 2:4 for sparse tensor cores.

    The schedule's sparsity ``v(t)`` rises to ``1 - n/m``: each prune zeroes the ``floor(v(t) * d)``
    lowest-scored weights among those outside their group's ``n`` best, globally; at ``v = 1 - n/m``
    every weight outside its group's ``n`` best is zero, the exact N:M pattern. So the cubic schedule
    reaches N:M gradually, and the prior acts on every weight as under unstructured pruning.
    """

    n: int = 2
    m: int = 4

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or isinstance(self.m, bool) or not (isinstance(self.n, int)
                                                                         and isinstance(self.m, int)):
            raise TypeError(f"n and m must be integers, got n={self.n!r}, m={self.m!r}")
        if not 0 < self.n < self.m:
            raise ValueError(f"N:M pruning needs 0 < n < m, got n={self.n}, m={self.m}")
        super().__post_init__()
        if not isinstance(self.score, SemiStructuredScore):
            self.score = SemiStructuredScore(self.n, self.m, self.score)
        chunk = self.chunk_numel or CHUNK_NUMEL["cpu"]
        self.chunk_numel = max(self.m, chunk // self.m * self.m)  # chunks hold whole groups
        self.max_sparsity = 1.0 - self.n / self.m

    def _num_to_prune(self, sparsity: float, numel: int) -> int:
        full = numel // self.m * (self.m - self.n)  # every weight outside its group's n best
        if sparsity >= self.max_sparsity - SPARSITY_TOLERANCE:  # 1 - n/m is not exact in binary (1 - 1/3)
            return full
        return min(num_to_prune(sparsity, numel), full)

    @property
    def calibration_score(self) -> Score:
        return self.score.base  # the weights' own ranking, not the pattern's +inf for each group's best

    def check_targets(self, names, params, input_dims=None) -> None:
        for i, dim in enumerate(input_dims or []):
            if dim not in (-1, params[i].dim() - 1):
                name = names[i] if names else f"target tensor {i}"
                raise ValueError(f"{self.n}:{self.m} pruning groups weights along the input dimension, which {name} "
                                 f"stores first (GPT-2's Conv1D, (in, out)); N:M for such layers is not supported: "
                                 "exclude them from the targets or prune unstructured")
        for i, p in enumerate(params):
            if p.dim() < 2 or p.shape[-1] % self.m:
                name = names[i] if names else f"target tensor {i}"
                raise ValueError(f"{self.n}:{self.m} pruning needs the input dimension (the last) divisible by "
                                 f"{self.m}: {name} has shape {tuple(p.shape)}; exclude it from the targets")

    def __repr__(self) -> str:
        return f"NMPruner(n={self.n}, m={self.m})"


@dataclass
class LayerwisePruner(GlobalPruner):
    """Uniform per-layer sparsity: zeroes the ``floor(v * n_i)`` lowest-scoring weights of every target
    tensor ``i`` (``n_i`` weights) by a threshold of its own, instead of one threshold over all targets,
    so that every layer ends at the same sparsity (a CPU kernel's speed-up is decided layer by layer).

    Each tensor is pruned exactly as :class:`GlobalPruner` prunes that tensor alone (the same
    :func:`_select`, the same band around the tensor's previous threshold, ties broken by flat index:
    earliest first). The pruned count is ``sum_i floor(v * n_i)``, at most ``floor(v * d)`` of the
    global pruner (a few weights fewer: each tensor rounds down on its own).
    :attr:`PruneResult.threshold` is the largest of the per-tensor thresholds: every pruned score is
    at or below it (but, unlike the global pruner's, a weight below it may survive in another tensor).

    Sharded training (a process ``group``) is refused: prune with :class:`GlobalPruner` there.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self._pruners: list[GlobalPruner] = []

    def forget_threshold(self) -> None:
        super().forget_threshold()
        for pruner in getattr(self, "_pruners", []):
            pruner.forget_threshold()

    def _tensor_pruners(self, count: int) -> list[GlobalPruner]:
        """One :class:`GlobalPruner` per target tensor, sharing this pruner's score and selection counts;
        each remembers its own tensor's last threshold."""
        if len(self._pruners) != count:
            self._pruners = [GlobalPruner(score=self.score, chunk_numel=self.chunk_numel) for _ in range(count)]
            for pruner in self._pruners:
                pruner.selections = self.selections
        return self._pruners

    @torch.no_grad()
    def prune_(self, params: Sequence[Tensor], sparsity: float, names: Sequence[str] | None = None,
               group=None) -> PruneResult:
        """Zero ``floor(sparsity * n_i)`` of the ``n_i`` weights of each of ``params``, in place."""
        if group is not None:
            raise ValueError("layerwise pruning (uniform per-layer sparsity) does not support sharded training "
                             "(FSDP: a process group): prune with the global pruner "
                             "(pruning=global_magnitude), or train on one process or with DDP")
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must lie in [0, 1), got sparsity={sparsity!r}")
        self.check_targets(names, params)
        numel = sum(p.numel() for p in params)
        counts = [num_to_prune(sparsity, p.numel()) for p in params]
        if sum(counts) == 0:
            return PruneResult(sparsity, 0, numel, None)
        # every tensor checked before any is touched, as the global pruner refuses NaN/inf before zeroing
        if not all(bool(torch.isfinite(p).all()) for p, k in zip(params, counts) if k):
            raise ValueError(NONFINITE_WEIGHTS)
        thresholds = []
        for i, (p, pruner, k) in enumerate(zip(params, self._tensor_pruners(len(params)), counts)):
            if k == 0:
                continue
            result = pruner.prune_([p], sparsity, [names[i]] if names else None)
            assert result.num_pruned == k
            thresholds.append(result.threshold)
        return PruneResult(sparsity, sum(counts), numel, max(thresholds))

    def __repr__(self) -> str:
        return f"LayerwisePruner(score={self.score!r})"


class BlockScore:
    """Every weight scores the root mean square of its ``rows x cols`` block: the block's L2 norm divided
    by ``sqrt(rows * cols)`` (the same ranking as the L2 norm, on the weights' own scale, so that prior
    annealing calibrates on it as on ``|w|``). With any pruner, whole blocks then go together.

    Blocks tile the weight matrix in its ``(out, in)`` layout (``nn.Linear``'s storage; a weight of more
    than two dimensions is read as ``(prod(shape[:-1]), shape[-1])``): ``rows`` along the output
    dimension, ``cols`` along the input one. 1x4 (four consecutive inputs of one output) and 4x1 / 16x1
    (one input of 4 or 16 consecutive outputs) suit CPU block-sparse kernels. Shapes the block does not
    tile, and GPT-2's ``Conv1D`` weights (stored ``(in, out)``) unless the block is square, are refused
    by name in :meth:`check_targets`.

    Exactness is the pruner's: ``floor(v * d)`` weights go, so the block at the threshold may be cut
    partially (its weights tie; the earliest in flat order go first). At sparsities that are multiples
    of one block's share, and without ties between blocks, every block is all zero or all kept.
    """

    nonnegative = True

    def __init__(self, rows: int = 1, cols: int = 4):
        for key, value in (("rows", rows), ("cols", cols)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"block {key} must be a positive integer, got {key}={value!r}")
        if rows * cols == 1:
            raise ValueError("a 1x1 block is one weight: use the magnitude score (pruning=global_magnitude)")
        self.rows, self.cols = rows, cols

    @property
    def matrix_rows(self) -> int:
        """Chunks hold whole bands of this many matrix rows (see :func:`_scored_chunks`)."""
        return self.rows

    def __call__(self, weights: Tensor) -> Tensor:
        """Scores of a ``(R, C)`` matrix (or a weight of any shape, read as one), ``R`` a multiple of
        ``rows`` and ``C`` of ``cols``; float32, the shape of ``weights``."""
        w = weights.detach()
        matrix = w.reshape(-1, w.shape[-1]).float()
        r, c = matrix.shape
        if r % self.rows or c % self.cols:
            raise ValueError(f"{self!r} cannot tile a {tuple(w.shape)} weight")
        blocks = matrix.reshape(r // self.rows, self.rows, c // self.cols, self.cols)
        rms = blocks.square().mean(dim=(1, 3), keepdim=True).sqrt_()
        return rms.expand_as(blocks).reshape(w.shape)

    def check_targets(self, names: Sequence[str] | None, params: Sequence[Tensor],
                      input_dims: Sequence[int] | None = None) -> None:
        for i, p in enumerate(params):
            name = names[i] if names else f"target tensor {i}"
            dim = input_dims[i] if input_dims else -1
            if dim not in (-1, p.dim() - 1) and self.rows != self.cols:
                raise ValueError(f"{self.rows}x{self.cols} blocks tile the (out, in) layout, which {name} stores "
                                 "transposed (GPT-2's Conv1D, (in, out)); not supported: exclude it from the targets, "
                                 "use a square block, or prune unstructured")
            if p.dim() < 2 or (p.numel() // max(p.shape[-1], 1)) % self.rows or p.shape[-1] % self.cols:
                raise ValueError(f"{self.rows}x{self.cols} blocks need the output dimension divisible by {self.rows} "
                                 f"and the input dimension (the last) by {self.cols}: {name} has shape "
                                 f"{tuple(p.shape)}; exclude it from the targets or pick another block")

    def __repr__(self) -> str:
        return f"BlockScore(rows={self.rows}, cols={self.cols})"


class FixedMask:
    """Remembers which target weights are zero and keeps them at zero.

    Costs one byte per target weight; only schedules that fix the mask (prior
    annealing after its one-shot prune, sparse transfer) create one.
    """

    def __init__(self, params: Sequence[Tensor]):
        with torch.no_grad():
            self.pruned = [p.detach() == 0 for p in params]

    @torch.no_grad()
    def apply_(self, params: Sequence[Tensor]) -> None:
        for p, m in zip(params, self.pruned):
            p.detach().masked_fill_(m, 0.0)


# -- a mask on disk -------------------------------------------------------------------------------
def save_mask(names: list[str], params: list[torch.Tensor], path) -> None:
    """Which target weights are zero, one bit each (``numpy.packbits``), with each tensor's shape
    (safetensors; upstream pruning saves it for sparse transfer)."""
    import numpy as np
    from safetensors.torch import save_file

    tensors, shapes = {}, {}
    for name, p in zip(names, params):
        zero = (p.detach() == 0).cpu().numpy().reshape(-1)
        tensors[name] = torch.from_numpy(np.packbits(zero))
        shapes[name] = ",".join(str(d) for d in p.shape)
    save_file(tensors, str(path), metadata=shapes)


def load_mask(path) -> dict[str, torch.Tensor]:
    """``{parameter name: bool tensor, True where the weight was pruned}``."""
    import numpy as np
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="pt") as f:
        shapes = f.metadata()
        for name in f.keys():
            shape = [int(d) for d in shapes[name].split(",")]
            bits = np.unpackbits(f.get_tensor(name).numpy())[: int(np.prod(shape))]
            out[name] = torch.from_numpy(bits.astype(bool)).view(shape)
    return out
