"""`Embedding`: a learnable lookup table from integer ids to vectors."""
from __future__ import annotations

from typing import Any

from ..compiler.types import DType
from ..creation import empty
from ..state import no_grad
from ..tensor import Tensor
from . import init
from .functional.sparse import embedding, normalize_padding_idx
from .module import Module
from .parameter import Parameter


class Embedding(Module):
    """Maps indices of any shape S to vectors: output shape S + (embedding_dim,).

    The table is initialised from N(0, 1); the padding_idx row (if any) starts at zero and is
    never updated by gradients, so it can stand for "no token".
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 dtype: DType | None = None, device: Any = None) -> None:
        super().__init__()
        for name, n in (("num_embeddings", num_embeddings), ("embedding_dim", embedding_dim)):
            if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
                raise ValueError(f"Embedding: {name} must be a positive int, got {n!r}")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = None if padding_idx is None \
            else normalize_padding_idx(padding_idx, num_embeddings)
        self.weight = Parameter(empty(num_embeddings, embedding_dim, dtype=dtype,
                                      device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 1) entries, with the padding row zeroed."""
        init.normal_(self.weight)
        if self.padding_idx is not None:
            with no_grad():
                self.weight[self.padding_idx] = 0.0

    @classmethod
    def from_pretrained(cls, embeddings: Tensor, freeze: bool = True,
                        padding_idx: int | None = None) -> Embedding:
        """An Embedding holding a copy of a 2-D table; frozen (no gradient) by default."""
        if not isinstance(embeddings, Tensor) or embeddings.ndim != 2:
            raise ValueError(f"Embedding.from_pretrained: expected a 2-D tensor, got "
                             f"{getattr(embeddings, 'shape', type(embeddings).__name__)}")
        rows, dim = embeddings.shape
        module = cls(rows, dim, padding_idx=padding_idx, dtype=embeddings.dtype)
        with no_grad():
            module.weight.copy_(embeddings)
        module.weight.requires_grad_(not freeze)
        return module

    def forward(self, idx: Tensor) -> Tensor:
        return embedding(idx, self.weight, self.padding_idx)

    def extra_repr(self) -> str:
        text = f"{self.num_embeddings}, {self.embedding_dim}"
        if self.padding_idx is not None:
            text += f", padding_idx={self.padding_idx}"
        return text
