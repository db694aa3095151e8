"""Attention: `F.scaled_dot_product_attention`, `nn.MultiheadAttention`,
`nn.TransformerEncoderLayer` and `nn.TransformerEncoder`, eager vs compiled vs PyTorch (values,
input and parameter gradients) with PyTorch's weights loaded, and their argument errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from op_helpers import message_id
from test_compile_parity import LOOSE, LOOSE_GRAD, check_compiled

import neurenix as nx
import neurenix.nn as nn
import neurenix.nn.functional as F

TOL = dict(tol=LOOSE, grad_tol=LOOSE_GRAD)


def _floats(shape, seed=0, low=-1.0, high=1.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, size=shape).astype(np.float32)


def _pair(make, *args, **kwargs):
    torch.manual_seed(0)
    th = make(torch.nn)(*args, **kwargs)
    mine = make(nn)(*args, **kwargs)
    result = mine.load_state_dict(th.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert list(mine.state_dict()) == list(th.state_dict())
    return mine, th


# ---- scaled_dot_product_attention ------------------------------------------------------------

CAUSAL_BOOL = np.tril(np.ones((3, 4), bool))
PADDED = np.array([[True, True, True, False]] * 3)

SDPA = [
    pytest.param({}, [(2, 3, 5), (2, 4, 5), (2, 4, 6)], None, id="plain"),
    pytest.param(dict(scale=0.3), [(2, 2, 3, 4), (2, 2, 5, 4), (2, 2, 5, 3)], None,
                 id="scale-4d"),
    pytest.param(dict(is_causal=True), [(2, 2, 3, 4), (2, 2, 4, 4), (2, 2, 4, 4)], None,
                 id="causal-rectangular"),
    pytest.param({}, [(2, 2, 3, 4), (2, 2, 4, 4), (2, 2, 4, 2)], CAUSAL_BOOL & PADDED,
                 id="bool-mask"),
    pytest.param({}, [(2, 2, 3, 4), (2, 2, 4, 4), (2, 2, 4, 2)],
                 _floats((2, 1, 3, 4), 7, -2.0, 0.0), id="float-mask-broadcast"),
    pytest.param(dict(enable_gqa=True), [(1, 4, 3, 2), (1, 2, 4, 2), (1, 2, 4, 3)], None,
                 id="gqa"),
]


@pytest.mark.parametrize("kwargs, shapes, mask", SDPA)
def test_scaled_dot_product_attention(kwargs, shapes, mask):
    data = [_floats(s, i) for i, s in enumerate(shapes)]
    if mask is not None:
        data.append(mask)

    def make(lib):
        f = lib.nn.functional.scaled_dot_product_attention
        if mask is None:
            return lambda q, k, v: f(q, k, v, **kwargs)
        return lambda q, k, v, m: f(q, k, v, attn_mask=m, **kwargs)

    check_compiled(make(nx), data, torch_fn=make(torch), **TOL)


def test_sdpa_dropout_drops_attention_weights():
    q, k, v = (nx.tensor(_floats((2, 3, 4), i)) for i in range(3))
    nx.manual_seed(0)
    kept = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0).numpy()
    assert np.all(F.scaled_dot_product_attention(q, k, v, dropout_p=1.0).numpy() == 0)
    dropped = F.scaled_dot_product_attention(q, k, v, dropout_p=0.5).numpy()
    assert not np.allclose(kept, dropped)


# ---- MultiheadAttention ----------------------------------------------------------------------

E, H, L, S, N = 6, 2, 3, 4, 2
KEY_PADDING = np.array([[False, False, True, False], [False, False, False, True]])
ATTN_FLOAT = _floats((L, S), 5, -1.0, 0.0)
ATTN_BOOL_3D = np.zeros((N * H, L, S), bool)
ATTN_BOOL_3D[:, 0, 1] = True
ATTN_BOOL_3D[1, 2, :2] = True


def _mha_case(name, kwargs, call, masks=(), unbatched=False, kv=(E, E)):
    return pytest.param(kwargs, call, masks, unbatched, kv, id=name)


MHA = [
    _mha_case("self-attention", {}, {}),
    _mha_case("batch-first-padding", dict(batch_first=True), {}, ("key_padding_mask",)),
    _mha_case("kdim-vdim-no-bias", dict(kdim=4, vdim=5, bias=False), {}, kv=(4, 5)),
    _mha_case("bias-kv-zero-attn", dict(add_bias_kv=True, add_zero_attn=True), {},
              ("key_padding_mask", "attn_mask")),
    _mha_case("per-head-weights", {}, dict(average_attn_weights=False),
              ("attn_mask_bool",)),
    _mha_case("no-weights-both-masks", dict(dropout=0.3), dict(need_weights=False),
              ("key_padding_mask", "attn_mask")),
    _mha_case("unbatched", dict(batch_first=True), {}, unbatched=True),
]


@pytest.mark.parametrize("kwargs, call, masks, unbatched, kv", MHA)
def test_multihead_attention(kwargs, call, masks, unbatched, kv):
    mine, th = _pair(lambda m: m.MultiheadAttention, E, H, **kwargs)
    if kwargs.get("dropout"):
        mine.eval()
        th.eval()
    batch_first = kwargs.get("batch_first", False)

    def shape(length, dim):
        if unbatched:
            return (length, dim)
        return (N, length, dim) if batch_first else (length, N, dim)

    data = [_floats(shape(L, E), 0), _floats(shape(S, kv[0]), 1), _floats(shape(S, kv[1]), 2)]
    extra = {"key_padding_mask": KEY_PADDING, "attn_mask": ATTN_FLOAT,
             "attn_mask_bool": ATTN_BOOL_3D}
    data += [extra[m] for m in masks]
    names = ["attn_mask" if m == "attn_mask_bool" else m for m in masks]

    def make(layer):
        def run(q, k, v, *mask_values):
            out, weights = layer(q, k, v, **dict(zip(names, mask_values)), **call)
            return out if weights is None else (out, weights)
        return run

    check_compiled(make(mine), data, module=mine, torch_fn=make(th), torch_module=th, **TOL)


def test_multihead_attention_parameters_and_init_follow_torch():
    packed = nn.MultiheadAttention(8, 2)
    assert [n for n, _ in packed.named_parameters()] == \
        [n for n, _ in torch.nn.MultiheadAttention(8, 2).named_parameters()]
    assert not np.any(packed.in_proj_bias.detach().numpy())
    assert not np.any(packed.out_proj.bias.detach().numpy())
    bound = np.sqrt(6 / (8 + 24))  # xavier_uniform_ over the (3E, E) packed weight
    assert np.abs(packed.in_proj_weight.detach().numpy()).max() <= bound
    separate = nn.MultiheadAttention(8, 2, kdim=3, vdim=5, add_bias_kv=True)
    theirs = torch.nn.MultiheadAttention(8, 2, kdim=3, vdim=5, add_bias_kv=True)
    assert list(separate.state_dict()) == list(theirs.state_dict())
    assert separate.in_proj_weight is None and separate.bias_k.shape == (1, 1, 8)


# ---- Transformer encoder ---------------------------------------------------------------------

D, FF = 4, 6


@pytest.mark.parametrize("kwargs, masks", [
    (dict(), ()),
    (dict(activation="gelu", norm_first=True, batch_first=True), ("mask", "padding")),
    (dict(bias=False, layer_norm_eps=1e-3), ("padding",)),
], ids=["post-norm-relu", "pre-norm-gelu-batch-first", "no-bias"])
def test_transformer_encoder_layer(kwargs, masks):
    mine, th = _pair(lambda m: m.TransformerEncoderLayer, D, 2, dim_feedforward=FF,
                     dropout=0.0, **kwargs)
    shape = (N, S, D) if kwargs.get("batch_first") else (S, N, D)
    data = [_floats(shape)] + [{"mask": ATTN_FLOAT[:1].repeat(S, 0), "padding": KEY_PADDING}[m]
                               for m in masks]
    keys = {"mask": "src_mask", "padding": "src_key_padding_mask"}

    def make(layer):
        return lambda x, *m: layer(x, **{keys[k]: v for k, v in zip(masks, m)})

    check_compiled(make(mine), data, module=mine, torch_fn=make(th), torch_module=th, **TOL)


def test_transformer_encoder_in_eval_with_dropout_and_causal_mask():
    def make(lib):
        torch.manual_seed(0)
        layer = lib.nn.TransformerEncoderLayer(D, 2, dim_feedforward=FF, dropout=0.2)
        return lib.nn.TransformerEncoder(layer, 2, norm=lib.nn.LayerNorm(D),
                                         enable_nested_tensor=False)

    th = make(torch)
    mine = make(nx)
    mine.load_state_dict(th.state_dict())
    assert list(mine.state_dict()) == list(th.state_dict())
    mine.eval()
    th.eval()
    mask = torch.nn.Transformer.generate_square_subsequent_mask(S).numpy()
    np.testing.assert_array_equal(nn.transformer.generate_square_subsequent_mask(S).numpy(),
                                  mask)
    check_compiled(lambda x, m, p: mine(x, mask=m, src_key_padding_mask=p),
                   [_floats((S, N, D)), mask, KEY_PADDING], module=mine,
                   torch_fn=lambda x, m, p: th(x, mask=m, src_key_padding_mask=p),
                   torch_module=th, **TOL)


def test_transformer_encoder_layers_are_independent_copies():
    layer = nn.TransformerEncoderLayer(D, 2, dim_feedforward=FF)
    encoder = nn.TransformerEncoder(layer, 2)
    first, second = encoder.layers[0], encoder.layers[1]
    assert first is not layer and first.linear1.weight is not second.linear1.weight
    np.testing.assert_array_equal(first.linear1.weight.detach().numpy(),
                                  second.linear1.weight.detach().numpy())


# ---- errors ----------------------------------------------------------------------------------

ERRORS = [
    (lambda: nn.MultiheadAttention(6, 4), ValueError, r"embed_dim \(6\) must be divisible by "
     r"num_heads \(4\)"),
    (lambda: nn.MultiheadAttention(0, 1), ValueError, "embed_dim must be a positive int, got 0"),
    (lambda: nn.MultiheadAttention(4, 2, dropout=2.0), ValueError, "between 0 and 1, got 2.0"),
    (lambda: nn.TransformerEncoderLayer(4, 2, activation="tanh"), ValueError,
     "relu or gelu .* not 'tanh'"),
    (lambda: nn.TransformerEncoderLayer(4, 2, activation=3), TypeError, "got int"),
    (lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(4, 2), 0), ValueError,
     "num_layers must be a positive int, got 0"),
    (lambda: nn.MultiheadAttention(4, 2)(nx.ones(3, 2, 4), nx.ones(3, 2, 4), nx.ones(3, 2, 4),
                                         is_causal=True), RuntimeError, "need attn_mask"),
    (lambda: nn.MultiheadAttention(4, 2)(nx.ones(3, 2, 4), nx.ones(5, 2, 4), nx.ones(5, 2, 4),
                                         attn_mask=nx.ones(3, 4)), ValueError,
     r"2D attn_mask is \(3, 4\), but should be \(3, 5\)"),
    (lambda: nn.MultiheadAttention(4, 2)(nx.ones(3, 2, 5), nx.ones(3, 2, 4), nx.ones(3, 2, 4)),
     ValueError, "embedding size 4"),
    (lambda: nn.MultiheadAttention(4, 2)(nx.ones(3, 2, 4), nx.ones(3, 2, 4), nx.ones(3, 2, 4),
                                         key_padding_mask=nx.zeros(2, 3, dtype=nx.int64)),
     TypeError, "only bool and floating"),
    (lambda: F.scaled_dot_product_attention(nx.ones(2, 3), nx.ones(4, 3), nx.ones(4, 2),
                                            attn_mask=nx.ones(2, 4), is_causal=True),
     ValueError, "either attn_mask or is_causal"),
    (lambda: F.scaled_dot_product_attention(nx.ones(2, 3), nx.ones(4, 2), nx.ones(4, 2)),
     ValueError, "same embedding size"),
    (lambda: F.scaled_dot_product_attention(nx.ones(2, 3), nx.ones(4, 3), nx.ones(4, 2),
                                            attn_mask=nx.ones(3, 4)), ValueError,
     "does not broadcast"),
]


@pytest.mark.parametrize("call, error, match", ERRORS, ids=message_id)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
