"""Attention as tensor compositions: `scaled_dot_product_attention` and
`multi_head_attention_forward` (the computation behind `nn.MultiheadAttention`).

Scores are matmul -> scale -> mask -> softmax -> (dropout) -> matmul. Masks follow PyTorch:
`scaled_dot_product_attention` takes a boolean mask where True means "may attend", while
`MultiheadAttention` takes boolean masks where True means "masked out"; float masks are added
to the scores in both. A row whose every score is masked is NaN, as PyTorch's math path gives.
"""
from __future__ import annotations

import math

from ... import elementwise as ew
from ... import reductions, shapes
from ...dispatch import apply
from ...linalg import matmul
from ...tensor import Tensor
from .dropout import check_probability, dropout
from .linear import linear


def _check_tensor(value: object, what: str, name: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected {what} to be a Tensor, got {type(value).__name__}")
    return value


def _causal(target: int, source: int) -> Tensor:
    """(L, S) bool: position i may attend to j <= i (the lower triangle, top-left aligned)."""
    rows = apply("iota", shape=(target, 1), axis=0, dtype="int64")
    cols = apply("iota", shape=(1, source), axis=1, dtype="int64")
    return ew.ge(rows, cols)


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, dropout_p: float,
           scale: float) -> tuple[Tensor, Tensor]:
    """softmax(q k^T * scale + bias) (dropped out) @ v, and the attention weights."""
    scores = ew.mul(matmul(q, shapes.transpose(k, -2, -1)), float(scale))
    if bias is not None:
        scores = ew.add(scores, bias)
    weights = reductions.softmax(scores, -1)
    if dropout_p > 0.0:
        weights = dropout(weights, dropout_p, True)
    return matmul(weights, v), weights


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor,
                                 attn_mask: Tensor | None = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: float | None = None,
                                 enable_gqa: bool = False) -> Tensor:
    """softmax(query key^T * scale + mask) @ value over (..., L, E), (..., S, E), (..., S, Ev).

    attn_mask broadcasts to (..., L, S): boolean (True takes part) or float (added);
    is_causal masks the upper triangle (and excludes attn_mask); scale defaults to
    1 / sqrt(E); dropout_p drops attention weights (always, as PyTorch's function does);
    enable_gqa lets key and value have fewer heads (dim -3) that query's heads share.
    """
    name = "scaled_dot_product_attention"
    for value_, what in ((query, "query"), (key, "key"), (value, "value")):
        _check_tensor(value_, what, name)
        if value_.ndim < 2:
            raise ValueError(f"{name}: expected {what} of at least 2 dimensions (..., L, E), "
                             f"got shape {tuple(value_.shape)}")
        if not value_.dtype.is_floating:
            raise TypeError(f"{name}: expected a floating-point {what}, got "
                            f"{value_.dtype.name}")
    dropout_p = check_probability(dropout_p, name)
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(f"{name}: query and key must have the same embedding size, got "
                         f"shapes {tuple(query.shape)} and {tuple(key.shape)}")
    if key.shape[-2] != value.shape[-2]:
        raise ValueError(f"{name}: key and value must have the same sequence length, got "
                         f"shapes {tuple(key.shape)} and {tuple(value.shape)}")
    if enable_gqa and query.ndim >= 3 and key.ndim >= 3 and query.shape[-3] != key.shape[-3]:
        heads, kv_heads = query.shape[-3], key.shape[-3]
        if heads % kv_heads or value.shape[-3] != kv_heads:
            raise ValueError(f"{name}: with enable_gqa, query's {heads} heads must be a "
                             f"multiple of key's and value's, got shapes {tuple(key.shape)} "
                             f"and {tuple(value.shape)}")
        key = _repeat_heads(key, heads // kv_heads)
        value = _repeat_heads(value, heads // kv_heads)
    target, source = query.shape[-2], key.shape[-2]
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
    bias = None
    if is_causal:
        if attn_mask is not None:
            raise ValueError(f"{name}: pass either attn_mask or is_causal=True, not both")
        bias = ew.where(_causal(target, source), 0.0, float("-inf"))
        bias = ew.cast(bias, query.dtype)
    elif attn_mask is not None:
        _check_tensor(attn_mask, "attn_mask", name)
        try:
            ew.broadcast_shapes(tuple(attn_mask.shape), tuple(query.shape[:-1]) + (source,))
        except ValueError:
            raise ValueError(f"{name}: attn_mask of shape {tuple(attn_mask.shape)} does not "
                             f"broadcast to the scores' shape "
                             f"{tuple(query.shape[:-1]) + (source,)}") from None
        if attn_mask.dtype.is_floating:
            bias = attn_mask
        elif attn_mask.dtype.name == "bool":
            bias = ew.cast(ew.where(attn_mask, 0.0, float("-inf")), query.dtype)
        else:
            raise TypeError(f"{name}: attn_mask must be bool or floating, got "
                            f"{attn_mask.dtype.name}")
    return attend(query, key, value, bias, dropout_p, scale)[0]


def _repeat_heads(x: Tensor, times: int) -> Tensor:
    """repeat_interleave along dim -3: each head `times` times in a row."""
    lead = tuple(x.shape[:-3])
    heads, length, dim = x.shape[-3:]
    grown = shapes.expand(shapes.unsqueeze(x, -3), *(lead + (heads, times, length, dim)))
    return shapes.reshape(grown, lead + (heads * times, length, dim))


def canonical_mask(mask: Tensor | None, what: str, dtype, name: str) -> Tensor | None:
    """A boolean mask (True: masked out) as the float mask PyTorch makes of it: -inf where
    True, 0 elsewhere; a float mask unchanged."""
    if mask is None:
        return None
    _check_tensor(mask, what, name)
    if mask.dtype.name == "bool":
        return ew.cast(ew.where(mask, float("-inf"), 0.0), dtype)
    if not mask.dtype.is_floating:
        raise TypeError(f"{name}: only bool and floating types of {what} are supported, got "
                        f"{mask.dtype.name}")
    return mask


def _project(x: Tensor, weight: Tensor, bias: Tensor | None, index: int, size: int) -> Tensor:
    """The index-th of the packed q/k/v projections (rows index*size of in_proj)."""
    return linear(x, shapes.narrow(weight, 0, index * size, size),
                  _bias_part(bias, index, size))


def multi_head_attention_forward(
        query: Tensor, key: Tensor, value: Tensor, embed_dim_to_check: int, num_heads: int,
        in_proj_weight: Tensor | None, in_proj_bias: Tensor | None, bias_k: Tensor | None,
        bias_v: Tensor | None, add_zero_attn: bool, dropout_p: float, out_proj_weight: Tensor,
        out_proj_bias: Tensor | None, training: bool = True,
        key_padding_mask: Tensor | None = None, need_weights: bool = True,
        attn_mask: Tensor | None = None, use_separate_proj_weight: bool = False,
        q_proj_weight: Tensor | None = None, k_proj_weight: Tensor | None = None,
        v_proj_weight: Tensor | None = None, static_k: Tensor | None = None,
        static_v: Tensor | None = None, average_attn_weights: bool = True,
        is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
    """PyTorch's multi-head attention on sequence-first inputs: query (L, N, E) or unbatched
    (L, E), key and value (S, N, kdim / vdim); returns the output (L, N, E) and, with
    need_weights, the attention weights (N, L, S) averaged over heads (or (N, H, L, S))."""
    name = "MultiheadAttention"
    for t, what in ((query, "query"), (key, "key"), (value, "value")):
        _check_tensor(t, what, name)
    if static_k is not None or static_v is not None:
        raise NotImplementedError(f"{name}: static_k and static_v are not supported")
    batched = query.ndim == 3
    if query.ndim not in (2, 3) or key.ndim != query.ndim or value.ndim != query.ndim:
        raise ValueError(f"{name}: expected query, key and value all 3-D (L, N, E) or all 2-D "
                         f"unbatched (L, E), got shapes {tuple(query.shape)}, "
                         f"{tuple(key.shape)} and {tuple(value.shape)}")
    if not batched:
        query, key, value = (shapes.unsqueeze(t, 1) for t in (query, key, value))
        if key_padding_mask is not None:
            key_padding_mask = shapes.unsqueeze(key_padding_mask, 0)
    target, batch, embed_dim = query.shape
    source = key.shape[0]
    if embed_dim != embed_dim_to_check:
        raise ValueError(f"{name}: expected query with embedding size {embed_dim_to_check} "
                         f"(embed_dim), got shape {tuple(query.shape)}")
    if key.shape[:2] != value.shape[:2] or key.shape[1] != batch:
        raise ValueError(f"{name}: key {tuple(key.shape)} and value {tuple(value.shape)} must "
                         f"share the sequence length and query's batch size {batch}")
    head_dim = embed_dim // num_heads
    key_padding_mask = canonical_mask(key_padding_mask, "key_padding_mask", query.dtype, name)
    if is_causal and attn_mask is None:
        raise RuntimeError(f"{name}: need attn_mask if specifying the is_causal hint")
    attn_mask = canonical_mask(attn_mask, "attn_mask", query.dtype, name)
    if use_separate_proj_weight:
        q = linear(query, q_proj_weight, _bias_part(in_proj_bias, 0, embed_dim))
        k = linear(key, k_proj_weight, _bias_part(in_proj_bias, 1, embed_dim))
        v = linear(value, v_proj_weight, _bias_part(in_proj_bias, 2, embed_dim))
    else:
        q = _project(query, in_proj_weight, in_proj_bias, 0, embed_dim)
        k = _project(key, in_proj_weight, in_proj_bias, 1, embed_dim)
        v = _project(value, in_proj_weight, in_proj_bias, 2, embed_dim)
    if attn_mask is not None:
        attn_mask = _check_attn_mask(attn_mask, target, source, batch * num_heads, name)
    if bias_k is not None and bias_v is not None:
        k = shapes.cat([k, shapes.expand(bias_k, 1, batch, embed_dim)], 0)
        v = shapes.cat([v, shapes.expand(bias_v, 1, batch, embed_dim)], 0)
        attn_mask = _pad_last(attn_mask)
        key_padding_mask = _pad_last(key_padding_mask)
    # (L, N, E) -> (N * H, L, head_dim)
    q = shapes.transpose(shapes.reshape(q, (target, batch * num_heads, head_dim)), 0, 1)
    k = shapes.transpose(shapes.reshape(k, (k.shape[0], batch * num_heads, head_dim)), 0, 1)
    v = shapes.transpose(shapes.reshape(v, (v.shape[0], batch * num_heads, head_dim)), 0, 1)
    if add_zero_attn:
        k = shapes.cat([k, _zeros((batch * num_heads, 1, head_dim), k)], 1)
        v = shapes.cat([v, _zeros((batch * num_heads, 1, head_dim), v)], 1)
        attn_mask = _pad_last(attn_mask)
        key_padding_mask = _pad_last(key_padding_mask)
    source = k.shape[1]
    if key_padding_mask is not None:
        if tuple(key_padding_mask.shape) != (batch, source):
            raise ValueError(f"{name}: expected key_padding_mask of shape {(batch, source)} "
                             f"(N, S), got {tuple(key_padding_mask.shape)}")
        padding = shapes.reshape(key_padding_mask, (batch, 1, 1, source))
        padding = shapes.reshape(shapes.expand(padding, batch, num_heads, 1, source),
                                 (batch * num_heads, 1, source))
        attn_mask = padding if attn_mask is None else ew.add(attn_mask, padding)
    dropout_p = dropout_p if training else 0.0
    out, weights = attend(q, k, v, attn_mask, dropout_p, 1.0 / math.sqrt(head_dim))
    out = shapes.reshape(shapes.transpose(out, 0, 1), (target * batch, embed_dim))
    out = shapes.reshape(linear(out, out_proj_weight, out_proj_bias), (target, batch, -1))
    if not batched:
        out = shapes.squeeze(out, 1)
    if not need_weights:
        return out, None
    weights = shapes.reshape(weights, (batch, num_heads, target, source))
    if average_attn_weights:
        weights = reductions.mean(weights, 1)
    if not batched:
        weights = shapes.squeeze(weights, 0)
    return out, weights


def _zeros(shape: tuple[int, ...], like: Tensor) -> Tensor:
    return apply("full", shape=shape, value=0.0, dtype=like.dtype.name)


def _bias_part(bias: Tensor | None, index: int, size: int) -> Tensor | None:
    return None if bias is None else shapes.narrow(bias, 0, index * size, size)


def _pad_last(mask: Tensor | None) -> Tensor | None:
    """One more key column that takes part (0 added), as PyTorch pads the masks."""
    if mask is None:
        return None
    return apply("pad", mask, lo=(0,) * mask.ndim, hi=(0,) * (mask.ndim - 1) + (1,),
                 interior=(0,) * mask.ndim, value=0.0)


def _check_attn_mask(mask: Tensor, target: int, source: int, heads: int, name: str) -> Tensor:
    if mask.ndim == 2:
        if tuple(mask.shape) != (target, source):
            raise ValueError(f"{name}: the shape of the 2D attn_mask is {tuple(mask.shape)}, "
                             f"but should be {(target, source)}")
        return shapes.unsqueeze(mask, 0)
    if mask.ndim == 3:
        if tuple(mask.shape) != (heads, target, source):
            raise ValueError(f"{name}: the shape of the 3D attn_mask is {tuple(mask.shape)}, "
                             f"but should be {(heads, target, source)}")
        return mask
    raise ValueError(f"{name}: attn_mask's dimension {mask.ndim} is not supported (2-D or "
                     f"3-D expected)")
