"""`TransformerEncoderLayer` and `TransformerEncoder` with PyTorch's arguments, sub-module
names (`self_attn`, `linear1`, `linear2`, `norm1`, `norm2`, `layers.i`) and computation."""
from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from .. import elementwise as ew
from ..compiler.types import DType
from ..dispatch import apply
from ..tensor import Tensor
from .attention import MultiheadAttention
from .container import ModuleList
from .dropout import Dropout
from .functional.activation import gelu, relu
from .functional.attention import canonical_mask
from .linear import Linear
from .module import Module
from .normalization import LayerNorm

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"relu": relu, "gelu": gelu}


def generate_square_subsequent_mask(size: int, dtype: DType | None = None) -> Tensor:
    """(size, size) float mask: 0 on and below the diagonal, -inf above (PyTorch's
    `Transformer.generate_square_subsequent_mask`)."""
    rows = apply("iota", shape=(size, 1), axis=0, dtype="int64")
    cols = apply("iota", shape=(1, size), axis=1, dtype="int64")
    mask = ew.where(ew.gt(cols, rows), float("-inf"), 0.0)
    return ew.cast(mask, dtype) if dtype is not None else mask


class TransformerEncoderLayer(Module):
    """Self-attention and a feed-forward block, each with a residual connection and layer
    norm: after each block (post-norm, the default) or before it (norm_first)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048,
                 dropout: float = 0.1,
                 activation: str | Callable[[Tensor], Tensor] = "relu",
                 layer_norm_eps: float = 1e-5, batch_first: bool = False,
                 norm_first: bool = False, bias: bool = True, device: Any = None,
                 dtype: DType | None = None) -> None:
        super().__init__()
        if isinstance(activation, str):
            if activation not in ACTIVATIONS:
                raise ValueError(f"TransformerEncoderLayer: activation should be relu or gelu "
                                 f"(or a callable), not {activation!r}")
            activation = ACTIVATIONS[activation]
        elif not callable(activation):
            raise TypeError(f"TransformerEncoderLayer: activation must be 'relu', 'gelu' or a "
                            f"callable, got {type(activation).__name__}")
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias,
                                            batch_first=batch_first, device=device,
                                            dtype=dtype)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, dtype=dtype, device=device)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, dtype=dtype, device=device)
        self.norm_first = norm_first
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=dtype,
                               device=device)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=dtype,
                               device=device)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.activation = activation

    def forward(self, src: Tensor, src_mask: Tensor | None = None,
                src_key_padding_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        """src (S, N, E), (N, S, E) with batch_first, or (S, E); masks as MultiheadAttention's
        attn_mask and key_padding_mask."""
        name = type(self).__name__
        dtype = src.dtype if isinstance(src, Tensor) else None
        src_key_padding_mask = canonical_mask(src_key_padding_mask, "src_key_padding_mask",
                                              dtype, name)
        src_mask = canonical_mask(src_mask, "src_mask", dtype, name)
        x = src
        if self.norm_first:
            x = ew.add(x, self._sa_block(self.norm1(x), src_mask, src_key_padding_mask,
                                         is_causal))
            x = ew.add(x, self._ff_block(self.norm2(x)))
        else:
            x = self.norm1(ew.add(x, self._sa_block(x, src_mask, src_key_padding_mask,
                                                    is_causal)))
            x = self.norm2(ew.add(x, self._ff_block(x)))
        return x

    def _sa_block(self, x: Tensor, attn_mask: Tensor | None, key_padding_mask: Tensor | None,
                  is_causal: bool) -> Tensor:
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                           need_weights=False, is_causal=is_causal)[0]
        return self.dropout1(x)

    def _ff_block(self, x: Tensor) -> Tensor:
        x = self.linear2(self.dropout(self.activation(self.linear1(x))))
        return self.dropout2(x)


class TransformerEncoder(Module):
    """num_layers copies of encoder_layer applied in turn, then an optional final norm.

    enable_nested_tensor and mask_check are accepted for PyTorch compatibility; Neurenix
    always computes the padded positions (PyTorch's nested-tensor fast path, used only in
    inference, returns zeros there instead).
    """

    def __init__(self, encoder_layer: TransformerEncoderLayer, num_layers: int,
                 norm: Module | None = None, enable_nested_tensor: bool = True,
                 mask_check: bool = True) -> None:
        super().__init__()
        if not isinstance(encoder_layer, Module):
            raise TypeError(f"TransformerEncoder: encoder_layer must be a Module, got "
                            f"{type(encoder_layer).__name__}")
        if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
            raise ValueError(f"TransformerEncoder: num_layers must be a positive int, got "
                             f"{num_layers!r}")
        self.layers = ModuleList([copy.deepcopy(encoder_layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        self.norm = norm
        self.enable_nested_tensor = enable_nested_tensor
        self.mask_check = mask_check

    def forward(self, src: Tensor, mask: Tensor | None = None,
                src_key_padding_mask: Tensor | None = None,
                is_causal: bool | None = None) -> Tensor:
        name = type(self).__name__
        dtype = src.dtype if isinstance(src, Tensor) else None
        src_key_padding_mask = canonical_mask(src_key_padding_mask, "src_key_padding_mask",
                                              dtype, name)
        mask = canonical_mask(mask, "mask", dtype, name)
        output = src
        for layer in self.layers:
            output = layer(output, src_mask=mask, src_key_padding_mask=src_key_padding_mask,
                           is_causal=bool(is_causal))
        if self.norm is not None:
            output = self.norm(output)
        return output
