"""The spec's signature lines (e.g. `neurenix.nn.ReLU(inplace=False)`) with their defaults.

The spec shows each layer's constructor with its keyword defaults; these calls use exactly those
keywords, with small positional values, so a renamed or missing argument fails here.
"""
import pytest

import neurenix
from neurenix.nn import Module

SIGNATURES = [
    lambda: neurenix.nn.Linear(4, 3, bias=True, dtype=None, device=None),
    lambda: neurenix.nn.Conv1d(2, 4, 3, stride=1, padding=0, dilation=1, groups=1, bias=True),
    lambda: neurenix.nn.Conv2d(2, 4, 3, stride=1, padding=0, dilation=1, groups=1, bias=True),
    lambda: neurenix.nn.Conv3d(2, 4, 3, stride=1, padding=0, dilation=1, groups=1, bias=True),
    lambda: neurenix.nn.RNN(4, 3, num_layers=1, nonlinearity="tanh", bias=True,
                            batch_first=False, dropout=0.0, bidirectional=False),
    lambda: neurenix.nn.LSTM(4, 3, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                             bidirectional=False),
    lambda: neurenix.nn.GRU(4, 3, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                            bidirectional=False),
    lambda: neurenix.nn.ReLU(inplace=False),
    lambda: neurenix.nn.Sigmoid(),
    lambda: neurenix.nn.Tanh(),
    lambda: neurenix.nn.LeakyReLU(negative_slope=0.01, inplace=False),
    lambda: neurenix.nn.ELU(alpha=1.0, inplace=False),
    lambda: neurenix.nn.SELU(inplace=False),
    lambda: neurenix.nn.Softmax(dim=-1),
    lambda: neurenix.nn.GELU(approximate=False),
    lambda: neurenix.nn.MSELoss(reduction="mean"),
    lambda: neurenix.nn.L1Loss(reduction="mean"),
    lambda: neurenix.nn.CrossEntropyLoss(weight=None, ignore_index=-100, reduction="mean"),
    lambda: neurenix.nn.BCELoss(weight=None, reduction="mean"),
    lambda: neurenix.nn.BCEWithLogitsLoss(weight=None, pos_weight=None, reduction="mean"),
    lambda: neurenix.nn.Sequential(neurenix.nn.ReLU(), tanh=neurenix.nn.Tanh()),
]


@pytest.mark.parametrize("make", SIGNATURES, ids=range(len(SIGNATURES)))
def test_spec_signature_constructs_a_module(make):
    assert isinstance(make(), Module)


def test_module_is_exposed_as_documented():
    assert neurenix.nn.Module is Module
