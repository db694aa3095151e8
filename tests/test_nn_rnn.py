"""RNN, LSTM, GRU and their cells against torch.nn: same weights (through state_dict), same
inputs; forward outputs, final states, and gradients of the input, the initial states and
every parameter."""
from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch

import neurenix as nx
from neurenix.nn import rnn

RTOL, ATOL = 1e-5, 1e-5
SEQ, BATCH, IN, HID = 4, 3, 5, 6

# (neurenix class, torch class, extra kwargs)
LAYERS = {
    "rnn_tanh": (nx.nn.RNN, torch.nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (nx.nn.RNN, torch.nn.RNN, {"nonlinearity": "relu"}),
    "lstm": (nx.nn.LSTM, torch.nn.LSTM, {}),
    "gru": (nx.nn.GRU, torch.nn.GRU, {}),
}
CELLS = {
    "rnn_tanh": (rnn.RNNCell, torch.nn.RNNCell, {"nonlinearity": "tanh"}),
    "rnn_relu": (rnn.RNNCell, torch.nn.RNNCell, {"nonlinearity": "relu"}),
    "lstm": (rnn.LSTMCell, torch.nn.LSTMCell, {}),
    "gru": (rnn.GRUCell, torch.nn.GRUCell, {}),
}


def _pair(table: dict, kind: str, *args, **kwargs):
    """A torch module and a neurenix one holding the same weights (keys checked identical)."""
    nx_cls, torch_cls, extra = table[kind]
    torch.manual_seed(0)
    th = torch_cls(*args, **extra, **kwargs)
    mine = nx_cls(*args, **extra, **kwargs)
    assert list(mine.state_dict().keys()) == list(th.state_dict().keys())
    for (name, p), (tname, tp) in zip(mine.named_parameters(), th.named_parameters()):
        assert name == tname and tuple(p.shape) == tuple(tp.shape), (name, tname)
    mine.load_state_dict(th.state_dict())
    return mine, th


def _close(got: nx.Tensor, want: torch.Tensor, what: str) -> None:
    assert got is not None, f"{what}: missing"
    assert tuple(got.shape) == tuple(want.shape), \
        f"{what}: shape {tuple(got.shape)} != torch {tuple(want.shape)}"
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=RTOL,
                               atol=ATOL, err_msg=what)


def _leaves(arrays: list[np.ndarray]) -> tuple[list[nx.Tensor], list[torch.Tensor]]:
    return ([nx.tensor(a, requires_grad=True) for a in arrays],
            [torch.tensor(a, requires_grad=True) for a in arrays])


def _compare(mine, th, x: np.ndarray, states: list[np.ndarray] | None, lstm: bool,
             rng: np.random.Generator) -> None:
    """Forward both, backpropagate the same random upstream gradients, compare everything."""
    (nx_x,), (th_x,) = _leaves([x])
    nx_hx = th_hx = None
    if states is not None:
        nx_s, th_s = _leaves(states)
        nx_hx, th_hx = (tuple(nx_s), tuple(th_s)) if lstm else (nx_s[0], th_s[0])
    nx_out, nx_fin = mine(nx_x, nx_hx)
    th_out, th_fin = th(th_x, th_hx)
    nx_fin = list(nx_fin) if lstm else [nx_fin]
    th_fin = list(th_fin) if lstm else [th_fin]
    _close(nx_out, th_out, "output")
    for i, (a, b) in enumerate(zip(nx_fin, th_fin)):
        _close(a, b, f"final state {i}")
    nx_loss, th_loss = 0.0, 0.0
    for a, b in zip([nx_out] + nx_fin, [th_out] + th_fin):
        g = rng.uniform(-1, 1, tuple(b.shape)).astype(np.float32)
        nx_loss = nx_loss + (a * nx.tensor(g)).sum()
        th_loss = th_loss + (b * torch.tensor(g)).sum()
    nx_loss.backward()
    th_loss.backward()
    _close(nx_x.grad, th_x.grad, "input grad")
    if states is not None:
        for i, (a, b) in enumerate(zip(nx_s, th_s)):
            _close(a.grad, b.grad, f"initial state {i} grad")
    th_params = dict(th.named_parameters())
    for name, p in mine.named_parameters():
        _close(p.grad, th_params[name].grad, f"grad of {name}")


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("num_layers,bias,batch_first,bidirectional,with_state",
                         list(itertools.product((1, 2), (True, False), (False, True),
                                                (False, True), (False, True))))
def test_layer_matches_torch(kind, num_layers, bias, batch_first, bidirectional, with_state):
    mine, th = _pair(LAYERS, kind, IN, HID, num_layers=num_layers, bias=bias,
                     batch_first=batch_first, bidirectional=bidirectional)
    rng = np.random.default_rng(1)
    shape = (BATCH, SEQ, IN) if batch_first else (SEQ, BATCH, IN)
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    count = num_layers * (2 if bidirectional else 1)
    states = None
    if with_state:
        n = 2 if kind == "lstm" else 1
        states = [rng.uniform(-1, 1, (count, BATCH, HID)).astype(np.float32) for _ in range(n)]
    _compare(mine, th, x, states, kind == "lstm", rng)


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("bidirectional,with_state",
                         list(itertools.product((False, True), (False, True))))
def test_unbatched_input_matches_torch(kind, bidirectional, with_state):
    mine, th = _pair(LAYERS, kind, IN, HID, num_layers=2, bidirectional=bidirectional)
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (SEQ, IN)).astype(np.float32)
    count = 2 * (2 if bidirectional else 1)
    states = None
    if with_state:
        n = 2 if kind == "lstm" else 1
        states = [rng.uniform(-1, 1, (count, HID)).astype(np.float32) for _ in range(n)]
    _compare(mine, th, x, states, kind == "lstm", rng)


def test_float64_lstm_matches_torch():
    torch.manual_seed(0)
    th = torch.nn.LSTM(IN, HID, num_layers=2, bidirectional=True).double()
    mine = nx.nn.LSTM(IN, HID, num_layers=2, bidirectional=True, dtype=nx.float64)
    mine.load_state_dict(th.state_dict())
    assert mine.weight_ih_l0.dtype == nx.float64
    x = np.random.default_rng(3).uniform(-1, 1, (SEQ, BATCH, IN))
    out, (h, c) = mine(nx.tensor(x))
    t_out, (t_h, t_c) = th(torch.tensor(x))
    assert out.dtype == nx.float64
    for a, b in ((out, t_out), (h, t_h), (c, t_c)):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("bias,batched,with_state",
                         list(itertools.product((True, False), (True, False), (True, False))))
def test_cell_matches_torch(kind, bias, batched, with_state):
    mine, th = _pair(CELLS, kind, IN, HID, bias=bias)
    rng = np.random.default_rng(4)
    lead = (BATCH,) if batched else ()
    (nx_x,), (th_x,) = _leaves([rng.uniform(-1, 1, lead + (IN,)).astype(np.float32)])
    lstm = kind == "lstm"
    nx_hx = th_hx = None
    if with_state:
        arrays = [rng.uniform(-1, 1, lead + (HID,)).astype(np.float32)
                  for _ in range(2 if lstm else 1)]
        nx_s, th_s = _leaves(arrays)
        nx_hx, th_hx = (tuple(nx_s), tuple(th_s)) if lstm else (nx_s[0], th_s[0])
    nx_new = mine(nx_x, nx_hx)
    th_new = th(th_x, th_hx)
    nx_new = list(nx_new) if lstm else [nx_new]
    th_new = list(th_new) if lstm else [th_new]
    nx_loss, th_loss = 0.0, 0.0
    for i, (a, b) in enumerate(zip(nx_new, th_new)):
        _close(a, b, f"new state {i}")
        g = rng.uniform(-1, 1, tuple(b.shape)).astype(np.float32)
        nx_loss = nx_loss + (a * nx.tensor(g)).sum()
        th_loss = th_loss + (b * torch.tensor(g)).sum()
    nx_loss.backward()
    th_loss.backward()
    _close(nx_x.grad, th_x.grad, "input grad")
    if with_state:
        for i, (a, b) in enumerate(zip(nx_s, th_s)):
            _close(a.grad, b.grad, f"state {i} grad")
    th_params = dict(th.named_parameters())
    for name, p in mine.named_parameters():
        _close(p.grad, th_params[name].grad, f"grad of {name}")


# ---- dropout between layers ------------------------------------------------------------------


def test_dropout_in_eval_mode_equals_torch():
    mine, th = _pair(LAYERS, "gru", IN, HID, num_layers=3, dropout=0.5, bidirectional=True)
    mine.eval()
    th.eval()
    x = np.random.default_rng(5).uniform(-1, 1, (SEQ, BATCH, IN)).astype(np.float32)
    out, h = mine(nx.tensor(x))
    t_out, t_h = th(torch.tensor(x))
    _close(out, t_out, "output")
    _close(h, t_h, "h_n")


def test_dropout_in_train_mode_is_random_and_seeded():
    mine = nx.nn.LSTM(IN, HID, num_layers=2, dropout=0.5)
    x = nx.tensor(np.random.default_rng(6).uniform(-1, 1, (SEQ, BATCH, IN)).astype(np.float32))
    mine.eval()
    reference = mine(x)[0].detach().numpy()
    mine.train()
    nx.manual_seed(123)
    first = mine(x)[0].detach().numpy()
    nx.manual_seed(123)
    again = mine(x)[0].detach().numpy()
    nx.manual_seed(124)
    other = mine(x)[0].detach().numpy()
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, reference)
    assert not np.allclose(first, other)


def test_dropout_sits_between_layers_only():
    # With p = 1 every element between the layers is zeroed, deterministically in both
    # frameworks: the second layer sees zeros, and the last layer's output is not dropped.
    mine, th = _pair(LAYERS, "lstm", IN, HID, num_layers=2, dropout=1.0, bidirectional=True)
    mine.train()
    th.train()
    x = np.random.default_rng(7).uniform(-1, 1, (SEQ, BATCH, IN)).astype(np.float32)
    out, (h, c) = mine(nx.tensor(x))
    t_out, (t_h, t_c) = th(torch.tensor(x))
    assert np.abs(out.detach().numpy()).max() > 0
    _close(out, t_out, "output")
    _close(h, t_h, "h_n")
    _close(c, t_c, "c_n")


def test_dropout_with_one_layer_warns():
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        nx.nn.GRU(IN, HID, dropout=0.2)


# ---- construction, shapes, parameters --------------------------------------------------------


def test_spec_example_shapes():
    lstm = nx.nn.LSTM(10, 20, num_layers=2, batch_first=True, bidirectional=True)
    output, (h_n, c_n) = lstm(nx.Tensor.randn((32, 15, 10)))
    assert output.shape == (32, 15, 40)
    assert h_n.shape == (4, 32, 20)
    assert c_n.shape == (4, 32, 20)


def test_batch_first_output_ends_with_last_step():
    # the forward direction's last time step is h_n, wherever the time axis sits
    lstm = nx.nn.LSTM(IN, HID, batch_first=True)
    out, (h_n, _) = lstm(nx.randn(BATCH, SEQ, IN))
    np.testing.assert_array_equal(out.detach().numpy()[:, -1], h_n.detach().numpy()[0])


@pytest.mark.parametrize("kind", list(LAYERS))
def test_parameter_init_range_and_seed(kind):
    cls, _, extra = LAYERS[kind]
    nx.manual_seed(0)
    a = cls(IN, 16, num_layers=2, bidirectional=True, **extra)
    nx.manual_seed(0)
    b = cls(IN, 16, num_layers=2, bidirectional=True, **extra)
    bound = 1 / np.sqrt(16)
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        values = p.detach().numpy()
        assert values.min() >= -bound and values.max() <= bound, name
        assert values.std() > bound / 4, name  # spread over the range, not a constant
        np.testing.assert_array_equal(values, q.detach().numpy())
    assert len(list(a.parameters())) == 16


@pytest.mark.parametrize("kwargs", [{}, {"num_layers": 2, "batch_first": True},
                                    {"bias": False, "bidirectional": True, "dropout": 0.25,
                                     "num_layers": 2}])
def test_repr_matches_torch(kwargs):
    for kind in ("rnn_tanh", "lstm", "gru"):
        mine, th = _pair(LAYERS, kind, IN, HID, **kwargs)
        assert repr(mine) == repr(th)
    # torch leaves the nonlinearity out of the repr; Neurenix names it when it is not tanh
    assert repr(nx.nn.RNN(IN, HID, nonlinearity="relu")) == "RNN(5, 6, nonlinearity='relu')"


def test_all_weights_layout():
    lstm = nx.nn.LSTM(IN, HID, num_layers=2, bidirectional=True)
    groups = lstm.all_weights
    assert len(groups) == 4
    assert groups[1][0] is lstm.weight_ih_l0_reverse
    assert groups[2][0].shape == (4 * HID, 2 * HID)
    assert groups[3][3] is lstm.bias_hh_l1_reverse


def test_state_gradients_flow_through_time():
    # the loss reads only the last output; the first input must still get a gradient
    gru = nx.nn.GRU(IN, HID)
    x = nx.randn(SEQ, BATCH, IN, requires_grad=True)
    out, _ = gru(x)
    out[-1].sum().backward()
    assert np.abs(x.grad.numpy()[0]).sum() > 0


# ---- errors ----------------------------------------------------------------------------------


def test_wrong_feature_size():
    lstm = nx.nn.LSTM(10, 20, batch_first=True)
    msg = "LSTM: expected input with 10 features (input_size), got 7 in shape (32, 15, 7)"
    with pytest.raises(ValueError, match=re.escape(msg)):
        lstm(nx.zeros(32, 15, 7))


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4, 5)])
def test_wrong_input_rank(shape):
    gru = nx.nn.GRU(5, 4)
    with pytest.raises(ValueError, match=r"GRU: expected input of rank 2 .* or 3 .*got shape"):
        gru(nx.zeros(*shape))


def test_wrong_initial_state_shape():
    lstm = nx.nn.LSTM(10, 20, num_layers=2, bidirectional=True)
    x = nx.zeros(3, 32, 10)
    good = nx.zeros(4, 32, 20)
    msg = "LSTM: expected h_0 of shape (4, 32, 20), got (2, 32, 20)"
    with pytest.raises(ValueError, match=re.escape(msg)):
        lstm(x, (nx.zeros(2, 32, 20), good))
    msg = "LSTM: expected c_0 of shape (4, 32, 20), got (4, 31, 20)"
    with pytest.raises(ValueError, match=re.escape(msg)):
        lstm(x, (good, nx.zeros(4, 31, 20)))


def test_unbatched_input_needs_unbatched_state():
    rnn_layer = nx.nn.RNN(5, 4)
    with pytest.raises(ValueError, match=re.escape("RNN: expected h_0 of shape (1, 4), got "
                                                   "(1, 1, 4)")):
        rnn_layer(nx.zeros(3, 5), nx.zeros(1, 1, 4))


def test_lstm_state_must_be_a_pair():
    lstm = nx.nn.LSTM(5, 4)
    with pytest.raises(TypeError, match=r"LSTM: expected the initial state as a tuple"):
        lstm(nx.zeros(3, 2, 5), nx.zeros(1, 2, 4))


def test_dtype_mismatch():
    gru = nx.nn.GRU(5, 4)
    with pytest.raises(TypeError, match="GRU: expected input of dtype float32"):
        gru(nx.zeros(3, 2, 5, dtype=nx.float64))


def test_empty_sequence():
    with pytest.raises(ValueError, match="RNN: expected a sequence of at least one step"):
        nx.nn.RNN(5, 4)(nx.zeros(0, 2, 5))


def test_invalid_nonlinearity():
    with pytest.raises(ValueError, match="RNN: unknown nonlinearity 'sigmoid'"):
        nx.nn.RNN(5, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="RNNCell: unknown nonlinearity 'gelu'"):
        rnn.RNNCell(5, 4, nonlinearity="gelu")


@pytest.mark.parametrize("kwargs,name", [({"input_size": 0}, "input_size"),
                                         ({"hidden_size": -3}, "hidden_size"),
                                         ({"num_layers": 0}, "num_layers")])
def test_non_positive_sizes(kwargs, name):
    args = {"input_size": 5, "hidden_size": 4, **kwargs}
    with pytest.raises(ValueError, match=f"LSTM: {name} must be positive"):
        nx.nn.LSTM(**args)


def test_non_integer_size():
    with pytest.raises(TypeError, match="GRU: hidden_size must be an int, got float"):
        nx.nn.GRU(5, 4.0)


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_dropout_out_of_range(p):
    with pytest.raises(ValueError, match=r"GRU: dropout must be a number in \[0, 1\]"):
        nx.nn.GRU(5, 4, num_layers=2, dropout=p)


def test_cell_errors():
    cell = rnn.LSTMCell(5, 4)
    with pytest.raises(ValueError, match=re.escape("LSTMCell: expected input with 5 features "
                                                   "(input_size), got 3 in shape (2, 3)")):
        cell(nx.zeros(2, 3))
    with pytest.raises(ValueError, match=re.escape("LSTMCell: expected c_0 of shape (2, 4), "
                                                   "got (2, 5)")):
        cell(nx.zeros(2, 5), (nx.zeros(2, 4), nx.zeros(2, 5)))
