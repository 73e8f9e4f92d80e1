"""BERT-style encoders run feature-major, so every sparse product runs in the form CPU kernels are fast at.

torch's sparse CPU kernels compute ``W @ X`` fast when ``X`` holds one *column* per token (feature-major,
``hidden x tokens``). An ``nn.Linear`` stand-in receives row-major activations (``tokens x hidden``) and has
to transpose them in and out of every layer; at batch 1 the two copies cost more than the sparse product
saves (measured: benchmarks/bench_inference.py). :class:`FeatureMajorEncoder` instead keeps the hidden
states feature-major through the whole encoder, with one layout change on entry and one on exit: the
projections are ``W @ X + b`` (dense, CSR or BSR, whichever :func:`fastest_linear` measured faster), the
attention reads each head from the projections through strided views, and LayerNorm normalises down the
feature dimension. The arithmetic is the HF module's (the logits agree to float rounding); inference only.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions

__all__ = ["compressed", "sparse_addmm", "add_norm", "attention_context", "FeatureMajorLinear", "FeatureMajorLayerNorm", "FeatureMajorLayer", "FeatureMajorEncoder",
           "is_plain_bert_encoder"]


def _sparse_addmm(bias: Tensor, crow: Tensor, col: Tensor, values: Tensor, x: Tensor, rows: int) -> Tensor:
    size = (rows, x.shape[0])
    make = torch.sparse_bsr_tensor if values.dim() == 3 else torch.sparse_csr_tensor
    return torch.addmm(bias, make(crow, col, values, size, check_invariants=False), x)


@torch.library.custom_op("mgpp::sparse_addmm", mutates_args=())
def sparse_addmm(bias: Tensor, crow: Tensor, col: Tensor, values: Tensor, x: Tensor, rows: int) -> Tensor:
    """``bias + W @ x`` with ``W`` given by its compressed parts (CSR: 1-D values; BSR: ``(nnz, r, c)``
    values): torch's sparse kernel as one opaque operator, so ``torch.compile`` fuses what lies around it."""
    return _sparse_addmm(bias, crow, col, values, x, rows)


@sparse_addmm.register_fake
def _(bias, crow, col, values, x, rows):
    return x.new_empty(rows, x.shape[1])


def compressed(weight: Tensor, layout: str, blocksize: int) -> Tensor:
    """``weight`` as a torch sparse CSR tensor, or BSR with ``blocksize`` square blocks (``layout``), without
    the beta warning torch prints once per process for these layouts."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tensor support is in beta.*")
        return weight.to_sparse_csr() if layout == "csr" else weight.to_sparse_bsr((blocksize, blocksize))


class FeatureMajorLinear(nn.Module):
    """``Y = W @ X + b`` on feature-major ``X`` (``in_features x tokens``), with ``W`` held dense, or as the
    parts of a CSR or BSR (square blocks) matrix with 32-bit indices (measured 5-15% faster in torch's
    kernel than 64-bit ones, which it converts on every call). One ``addmm`` whichever the layout."""

    LAYOUTS = ("dense", "csr", "bsr")

    def __init__(self, weight: Tensor, bias: Tensor | None, layout: str = "dense", blocksize: int = 4):
        super().__init__()
        if layout not in self.LAYOUTS:
            raise ValueError(f"layout must be one of {self.LAYOUTS}, got layout={layout!r}")
        weight = weight.detach()
        self.out_features, self.in_features = weight.shape
        self.layout = layout
        self.blocksize = blocksize if layout == "bsr" else None
        if layout == "dense":
            self.register_buffer("weight", weight.contiguous().clone())
        else:
            sparse = compressed(weight, layout, blocksize)
            index = torch.int32 if sparse.values().shape[0] < 2**31 else torch.int64
            self.register_buffer("crow_indices", sparse.crow_indices().to(index))
            self.register_buffer("col_indices", sparse.col_indices().to(index))
            self.register_buffer("values", sparse.values().clone())
        if bias is None:
            bias = torch.zeros(self.out_features, dtype=weight.dtype, device=weight.device)
        self.register_buffer("bias_column", bias.detach().reshape(-1, 1).clone())

    def forward(self, x: Tensor) -> Tensor:
        if self.layout == "dense":
            return torch.addmm(self.bias_column, self.weight, x)
        # eager: the plain call (the custom operator's dispatch costs ~10 us a call); compiled: the operator
        product = sparse_addmm if torch.compiler.is_compiling() else _sparse_addmm
        return product(self.bias_column, self.crow_indices, self.col_indices, self.values, x, self.out_features)

    @property
    def density(self) -> float:
        nonzero = self.weight.count_nonzero() if self.layout == "dense" else self.values.count_nonzero()
        return int(nonzero) / (self.in_features * self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, layout={self.layout}"
                + (f", blocksize={self.blocksize}" if self.blocksize else "") + f", density={self.density:.3f}")


def add_norm(x: Tensor, residual: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """LayerNorm of ``x + residual`` over dimension 0 (features) of feature-major tensors; ``weight`` and
    ``bias`` are columns."""
    x = x + residual
    centered = x - x.mean(0, keepdim=True)
    scale = torch.rsqrt(centered.square().mean(0, keepdim=True) + eps)
    return torch.addcmul(bias, centered * scale, weight)


def attention_context(qkv: Tensor, heads: int, head_size: int, batch: int, seq: int, scaling: float,
                      mask: Tensor | None) -> Tensor:
    """Self-attention's context, feature-major (``hidden x tokens``), from the stacked query/key/value
    projections ``qkv`` (``3 * hidden x tokens``): each head read through strided views, no copy in."""
    # (3, heads, head_size, batch, seq) -> q, k, v each (batch, heads, head_size, seq)
    q, k, v = qkv.view(3, heads, head_size, batch, seq).permute(0, 3, 1, 2, 4).unbind(0)
    scores = torch.matmul(q.transpose(-1, -2), k) * scaling  # (batch, heads, query, key)
    if mask is not None:
        scores = scores + mask
    probs = scores.softmax(-1)
    context = torch.matmul(v, probs.transpose(-1, -2))  # (batch, heads, head_size, query)
    return context.permute(1, 2, 0, 3).reshape(heads * head_size, batch * seq)


_compiled: dict[str, object] = {}


def compiled(name: str):
    """The ``torch.compile`` of :func:`add_norm` or :func:`attention_context`, made once per process and
    shared by every layer (same shapes in every layer, so one compile serves them all; compiling each layer's
    ``forward`` instead would recompile for each layer's number of nonzeros)."""
    if name not in _compiled:
        _compiled[name] = torch.compile({"add_norm": add_norm, "attention_context": attention_context}[name])
    return _compiled[name]


class FeatureMajorLayerNorm(nn.Module):
    """``nn.LayerNorm`` over dimension 0 of a feature-major ``hidden x tokens`` tensor, applied to the sum
    of a sublayer's output and its residual."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        if len(norm.normalized_shape) != 1:
            raise ValueError(f"only a LayerNorm over one dimension runs feature-major, got {norm.normalized_shape}")
        self.eps = norm.eps
        hidden = norm.normalized_shape[0]
        like = next(norm.parameters(), None)
        options = {"dtype": like.dtype, "device": like.device} if like is not None else {}
        weight = norm.weight if norm.weight is not None else torch.ones(hidden, **options)
        bias = norm.bias if norm.bias is not None else torch.zeros(hidden, **options)
        self.register_buffer("weight_column", weight.detach().reshape(-1, 1).clone())
        self.register_buffer("bias_column", bias.detach().reshape(-1, 1).clone())
        self.kernel = add_norm

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.kernel(x, residual, self.weight_column, self.bias_column, self.eps)


class FeatureMajorLayer(nn.Module):
    """One BERT layer (self-attention, then the feed-forward block, each with residual and post-LayerNorm)
    on feature-major hidden states. ``make_linear(name, weight, bias)`` builds each projection; the query,
    key and value projections are one stacked matrix (one product instead of three)."""

    def __init__(self, layer: nn.Module, make_linear, prefix: str = ""):
        super().__init__()
        attention = layer.attention.self
        self.heads = attention.num_attention_heads
        self.head_size = attention.attention_head_size
        self.scaling = float(getattr(attention, "scaling", self.head_size ** -0.5))
        projections = (attention.query, attention.key, attention.value)
        biases = [p.bias if p.bias is not None else p.weight.new_zeros(p.out_features) for p in projections]
        self.qkv = make_linear(f"{prefix}attention.self.query+key+value",
                               torch.cat([p.weight for p in projections]), torch.cat(biases))
        self.attention_output = make_linear(f"{prefix}attention.output.dense", layer.attention.output.dense.weight,
                                            layer.attention.output.dense.bias)
        self.attention_norm = FeatureMajorLayerNorm(layer.attention.output.LayerNorm)
        self.intermediate = make_linear(f"{prefix}intermediate.dense", layer.intermediate.dense.weight,
                                        layer.intermediate.dense.bias)
        self.activation = layer.intermediate.intermediate_act_fn
        self.output = make_linear(f"{prefix}output.dense", layer.output.dense.weight, layer.output.dense.bias)
        self.output_norm = FeatureMajorLayerNorm(layer.output.LayerNorm)
        self.context = attention_context

    def use_compiled(self) -> None:
        """Run the attention core and the residual + LayerNorm steps through ``torch.compile`` (fused
        elementwise work); the sparse products stay torch's kernels, called as they are."""
        self.context = compiled("attention_context")
        self.attention_norm.kernel = self.output_norm.kernel = compiled("add_norm")

    def forward(self, x: Tensor, batch: int, seq: int, mask: Tensor | None) -> Tensor:
        context = self.context(self.qkv(x), self.heads, self.head_size, batch, seq, self.scaling, mask)
        x = self.attention_norm(self.attention_output(context), x)
        return self.output_norm(self.output(self.activation(self.intermediate(x))), x)


def _additive_mask(attention_mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """The encoder's mask as a float added to the attention scores: HF hands over a boolean mask (sdpa;
    True = attend), an additive float one (eager) or None (nothing masked)."""
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, Tensor):  # e.g. flex attention's BlockMask
        raise NotImplementedError(f"FeatureMajorEncoder takes a tensor attention mask (eager or sdpa attention), "
                                  f"got {type(attention_mask).__name__}")
    if attention_mask.dtype == torch.bool:
        return (torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device)
                .masked_fill_(~attention_mask, torch.finfo(dtype).min))
    return attention_mask.to(dtype)


class FeatureMajorEncoder(nn.Module):
    """A drop-in for a BERT-style encoder (``encoder.layer[i]`` with ``attention.self.{query,key,value}``,
    ``attention.output``, ``intermediate``, ``output``): same call, same output, hidden states feature-major
    inside. See :func:`is_plain_bert_encoder` for which encoders qualify."""

    def __init__(self, encoder: nn.Module, make_linear, prefix: str = ""):
        super().__init__()
        self.layer = nn.ModuleList(FeatureMajorLayer(layer, make_linear, f"{prefix}layer.{i}.")
                                   for i, layer in enumerate(encoder.layer))

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None,
                encoder_hidden_states: Tensor | None = None, **kwargs) -> BaseModelOutputWithPastAndCrossAttentions:
        if encoder_hidden_states is not None:
            raise NotImplementedError("FeatureMajorEncoder runs encoders only (no cross-attention)")
        asked = [key for key in ("output_attentions", "output_hidden_states", "head_mask") if kwargs.get(key)]
        if asked:  # never an empty answer: these come from per-layer hooks the feature-major layers do not have
            raise NotImplementedError(f"FeatureMajorEncoder does not return {' or '.join(asked)}; run the model as "
                                      "it was, or sparsify_for_inference(..., feature_major=False)")
        batch, seq, hidden = hidden_states.shape
        x = hidden_states.permute(2, 0, 1).reshape(hidden, batch * seq)  # the one layout change in
        mask = _additive_mask(attention_mask, hidden_states.dtype)
        for layer in self.layer:
            x = layer(x, batch, seq, mask)
        out = x.view(hidden, batch, seq).permute(1, 2, 0).contiguous()  # and the one out
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=out)


def is_plain_bert_encoder(module: nn.Module) -> bool:
    """True for a BERT-style encoder :class:`FeatureMajorEncoder` reproduces exactly: post-LayerNorm
    layers with absolute positions, no cross-attention, not a decoder (BERT, RoBERTa, ELECTRA, MiniLM)."""
    layers = getattr(module, "layer", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        return False
    for layer in layers:
        try:
            attention = layer.attention.self
            linears = (attention.query, attention.key, attention.value, layer.attention.output.dense,
                       layer.intermediate.dense, layer.output.dense)
            norms = (layer.attention.output.LayerNorm, layer.output.LayerNorm)
            layer.intermediate.intermediate_act_fn  # noqa: B018 (present, or not this kind of layer)
            attention.num_attention_heads, attention.attention_head_size  # noqa: B018
        except AttributeError:
            return False
        if (getattr(layer, "is_decoder", False) or hasattr(layer, "crossattention")
                or getattr(attention, "position_embedding_type", "absolute") != "absolute"
                or any(type(m) is not nn.Linear for m in linears) or any(type(n) is not nn.LayerNorm for n in norms)):
            return False
    return True
