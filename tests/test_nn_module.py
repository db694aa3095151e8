"""The Module API against torch.nn.Module: registration, traversal, modes, state dicts,
containers, Parameter, serialization, and the default initialisation of Linear."""
from __future__ import annotations

import math

import numpy as np
import pytest
import safetensors.torch
import torch
from op_helpers import assert_close

import neurenix as nx
import neurenix.nn as nn
from neurenix.serialization import load, save


def build_net(lib):
    """The same nested model in either library: parameters, buffers and containers."""

    class Block(lib.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = lib.Linear(8, 8)
            self.norm = lib.BatchNorm1d(8)
            self.act = lib.ReLU()

        def forward(self, x):
            return self.act(self.norm(self.fc(x)))

    class Net(lib.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = lib.Parameter(torch.ones(1) if lib is torch.nn else nx.ones(1))
            self.stem = lib.Sequential(lib.Linear(4, 8), lib.Tanh())
            self.blocks = lib.ModuleList([Block(), Block()])
            self.heads = lib.ModuleDict({"cls": lib.Linear(8, 3), "reg": lib.Linear(8, 1)})
            self.embed = lib.Embedding(5, 4)

        def forward(self, x):
            h = self.stem(x)
            for block in self.blocks:
                h = block(h)
            return self.heads["cls"](h) * self.scale

    return Net()


@pytest.fixture
def nets():
    torch.manual_seed(0)
    return build_net(nn), build_net(torch.nn)


# ---- registration and traversal -----------------------------------------------------------


def test_registration_order_and_names_match_torch(nets):
    ours, theirs = nets
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]
    assert [type(m).__name__ for m in ours.modules()] == \
        [type(m).__name__ for m in theirs.modules()]
    assert [n for n, _ in ours.named_children()] == [n for n, _ in theirs.named_children()]
    assert len(list(ours.children())) == 4
    assert len(list(ours.parameters())) == len(list(theirs.parameters()))


def test_attribute_registration_follows_assignment_order():
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.b = nn.Linear(2, 2)
            self.p = nn.Parameter(nx.zeros(3))
            self.a = nn.Linear(2, 2)
            self.register_buffer("stat", nx.zeros(2))
            self.plain = 5

    m = M()
    assert [n for n, _ in m.named_parameters()] == ["p", "b.weight", "b.bias", "a.weight",
                                                    "a.bias"]
    assert list(m.state_dict()) == ["p", "stat", "b.weight", "b.bias", "a.weight", "a.bias"]
    assert m.plain == 5 and "plain" not in m.state_dict()
    m.b = None  # a registered sub-module can be cleared
    assert [n for n, _ in m.named_parameters()] == ["p", "a.weight", "a.bias"]
    with pytest.raises(TypeError, match="cannot assign Tensor as parameter 'p'"):
        m.p = nx.zeros(3)
    with pytest.raises(AttributeError, match="'M' object has no attribute 'missing'"):
        _ = m.missing


def test_assigning_before_super_init_is_a_clear_error():
    class Broken(nn.Module):
        def __init__(self) -> None:
            self.fc = nn.Linear(2, 2)

    with pytest.raises(RuntimeError, match=r"call super\(\).__init__\(\)"):
        Broken()


def test_shared_parameter_is_listed_once():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert len(list(model.parameters())) == 2


def test_train_eval_recurse(nets):
    ours, _ = nets
    assert ours.is_training() and all(m.training for m in ours.modules())
    assert ours.eval() is ours
    assert not any(m.training for m in ours.modules())
    assert not ours.blocks[1].norm.is_training()
    ours.train()
    assert all(m.is_training() for m in ours.modules())
    ours.blocks.train(False)
    assert ours.training and not ours.blocks[0].fc.training
    with pytest.raises(TypeError, match="mode must be a bool"):
        ours.train("no")


def test_zero_grad(nets):
    ours, _ = nets
    out = ours(nx.randn(6, 4))
    out.sum().backward()
    grads = [p for p in ours.parameters() if p.grad is not None]
    assert len(grads) > 0
    ours.zero_grad(set_to_none=False)
    assert all(not np.any(p.grad.numpy()) for p in grads)
    ours.zero_grad()
    assert all(p.grad is None for p in ours.parameters())


def test_apply_visits_children_before_parent_like_torch(nets):
    ours, theirs = nets
    seen_ours, seen_theirs = [], []
    ours.apply(lambda m: seen_ours.append(type(m).__name__))
    theirs.apply(lambda m: seen_theirs.append(type(m).__name__))
    assert seen_ours == seen_theirs

    def zero_linears(m):
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.weight)

    ours.apply(zero_linears)
    assert not np.any(ours.heads["reg"].weight.detach().numpy())


def test_buffers_persistent_and_not():
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("kept", nx.ones(2))
            self.register_buffer("scratch", nx.zeros(2), persistent=False)

    m = M()
    assert [n for n, _ in m.named_buffers()] == ["kept", "scratch"]
    assert list(m.state_dict()) == ["kept"]
    assert list(m.parameters()) == []
    m.kept = nx.full((2,), 7.0)  # reassigning keeps it a buffer
    assert m.state_dict()["kept"].tolist() == [7.0, 7.0]
    with pytest.raises(TypeError, match="register_buffer: expected a Tensor"):
        m.register_buffer("bad", [1, 2])


# ---- state dicts --------------------------------------------------------------------------


def test_load_state_dict_from_torch_gives_torch_outputs(nets):
    ours, theirs = nets
    ours.eval()
    theirs.eval()
    result = ours.load_state_dict(theirs.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    assert_close(ours(nx.tensor(x)), theirs(torch.tensor(x)), 1e-5, 1e-6)
    for name, value in theirs.state_dict().items():
        assert_close(ours.state_dict()[name], value, 0, 0, name)
    assert ours.state_dict()["blocks.0.norm.num_batches_tracked"].shape == ()


def test_state_dict_values_are_detached_and_shared(nets):
    ours, _ = nets
    sd = ours.state_dict()
    assert not sd["stem.0.weight"].requires_grad
    assert ours.state_dict(keep_vars=True)["stem.0.weight"] is ours.stem[0].weight


def test_load_state_dict_strict_errors(nets):
    ours, theirs = nets
    sd = theirs.state_dict()
    missing = {k: v for k, v in sd.items() if k != "heads.reg.bias"}
    with pytest.raises(KeyError, match=r"missing keys \['heads.reg.bias'\]"):
        ours.load_state_dict(missing)
    extra = dict(sd, **{"heads.extra.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match=r"unexpected keys \['heads.extra.weight'\]"):
        ours.load_state_dict(extra)
    result = ours.load_state_dict(extra, strict=False)
    assert result.unexpected_keys == ["heads.extra.weight"] and result.missing_keys == []
    result = ours.load_state_dict(missing, strict=False)
    assert result.missing_keys == ["heads.reg.bias"]
    wrong = dict(sd, **{"stem.0.weight": torch.zeros(8, 5)})
    with pytest.raises(ValueError, match=r"size mismatch for stem.0.weight: the checkpoint has "
                                         r"shape \(8, 5\), the model expects \(8, 4\)"):
        ours.load_state_dict(wrong)


def test_load_state_dict_does_not_break_autograd(nets):
    ours, theirs = nets
    ours.load_state_dict(theirs.state_dict())
    ours(nx.randn(3, 4)).sum().backward()
    assert ours.stem[0].weight.grad is not None


def test_save_load_roundtrip(tmp_path, nets):
    ours, theirs = nets
    x = nx.randn(6, 4)
    ours(x)  # one training step moves the batch-norm statistics
    ours.eval()
    path = tmp_path / "model.safetensors"
    save(ours.state_dict(), path)
    loaded = load(path)
    assert sorted(loaded) == sorted(ours.state_dict())  # safetensors files sort their keys
    assert loaded["blocks.0.norm.num_batches_tracked"].dtype == nx.int64
    fresh = build_net(nn).eval()
    fresh.load_state_dict(loaded)
    np.testing.assert_array_equal(fresh(x).detach().numpy(), ours(x).detach().numpy())
    # the same file loads into PyTorch unchanged
    theirs.load_state_dict(safetensors.torch.load_file(str(path)))
    theirs.eval()
    assert_close(ours(x), theirs(torch.tensor(x.numpy())), 1e-5, 1e-6)


def test_save_refuses_what_a_checkpoint_cannot_hold(tmp_path):
    with pytest.raises(TypeError, match=r"checkpoint\['w'\] of type builtins\.set"):
        save({"w": {1, 2}}, tmp_path / "bad.safetensors")


# ---- printing -----------------------------------------------------------------------------


def test_repr_of_nested_sequential_matches_torch():
    def build(lib):
        inner = lib.Sequential(lib.Linear(4, 8, bias=False), lib.LeakyReLU(0.2),
                               lib.Dropout(0.1))
        return lib.Sequential(lib.Flatten(), inner, lib.BatchNorm1d(8), lib.LayerNorm(8),
                              lib.GELU(approximate="tanh"), lib.Linear(8, 2), lib.Softmax(dim=1))

    assert repr(build(nn)) == repr(build(torch.nn))
    text = repr(build(nn))
    assert "  (1): Sequential(\n    (0): Linear(in_features=4, out_features=8, bias=False)" in text


def test_repr_of_custom_module_lists_children(nets):
    ours, _ = nets
    text = repr(ours)
    assert text.startswith("Net(\n  (stem): Sequential(")
    assert "(blocks): ModuleList(" in text and "(cls): Linear(in_features=8" in text


# ---- containers ---------------------------------------------------------------------------


def test_sequential_positional_and_dict():
    a, b, c = nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)
    seq = nn.Sequential(a, b, c)
    named = nn.Sequential({"fc1": a, "act": b, "fc2": c})
    assert [n for n, _ in seq.named_children()] == ["0", "1", "2"]
    assert [n for n, _ in named.named_children()] == ["fc1", "act", "fc2"]
    assert list(named.state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    x = nx.randn(5, 3)
    with nx.no_grad():
        np.testing.assert_array_equal(seq(x).numpy(), c(b(a(x))).numpy())
        np.testing.assert_array_equal(named(x).numpy(), seq(x).numpy())


def test_sequential_indexing_len_slicing():
    layers = [nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2), nn.Tanh()]
    seq = nn.Sequential(*layers)
    assert len(seq) == 4
    assert seq[0] is layers[0] and seq[-1] is layers[3]
    assert list(seq) == layers
    head = seq[1:3]
    assert isinstance(head, nn.Sequential) and list(head) == layers[1:3]
    assert [n for n, _ in head.named_children()] == ["1", "2"]  # torch keeps the names
    with pytest.raises(IndexError, match="Sequential: index 4 is out of range for 4 modules"):
        seq[4]
    seq.append(nn.Sigmoid())
    assert len(seq) == 5 and isinstance(seq[4], nn.Sigmoid)
    with pytest.raises(TypeError, match="Sequential: expected a Module, got int"):
        nn.Sequential(nn.ReLU(), 3)


def test_module_list():
    layers = nn.ModuleList([nn.Linear(2, 2) for _ in range(2)])
    layers.append(nn.Linear(2, 3))
    layers.extend([nn.ReLU()])
    layers.insert(0, nn.Tanh())
    assert len(layers) == 5
    assert [type(m).__name__ for m in layers] == ["Tanh", "Linear", "Linear", "Linear", "ReLU"]
    assert isinstance(layers[-2], nn.Linear) and layers[-2].out_features == 3
    assert [n for n, _ in layers.named_parameters()][:2] == ["1.weight", "1.bias"]
    assert len(layers[1:3]) == 2
    with pytest.raises(IndexError, match="ModuleList: index 5 is out of range"):
        layers[5]


def test_module_dict():
    heads = nn.ModuleDict({"a": nn.Linear(2, 2)})
    heads["b"] = nn.Linear(2, 1)
    assert list(heads) == ["a", "b"] and list(heads.keys()) == ["a", "b"]
    assert "b" in heads and "c" not in heads and len(heads) == 2
    assert [n for n, _ in heads.named_parameters()] == ["a.weight", "a.bias", "b.weight",
                                                        "b.bias"]
    del heads["a"]
    assert list(heads) == ["b"]
    with pytest.raises(TypeError, match="ModuleDict: expected a Module"):
        heads["c"] = "not a module"


# ---- Parameter ----------------------------------------------------------------------------


def test_parameter_behaviour():
    t = nx.randn(2, 3)
    p = nn.Parameter(t)
    assert isinstance(p, nx.Tensor) and p.requires_grad and p.is_leaf
    assert np.shares_memory(p.detach().numpy(), t.numpy())  # built from a tensor: shared
    assert repr(p).startswith("Parameter containing:\ntensor(")
    frozen = nn.Parameter(nx.zeros(2), requires_grad=False)
    assert not frozen.requires_grad
    (p * 2).sum().backward()
    np.testing.assert_array_equal(p.grad.numpy(), np.full((2, 3), 2.0, np.float32))
    with pytest.raises(RuntimeError, match="leaf tensor that requires grad"):
        p.copy_(nx.zeros(2, 3))
    with nx.no_grad():
        p.copy_(nx.zeros(2, 3))
    assert not np.any(p.detach().numpy())
    with pytest.raises(TypeError, match="register_parameter: expected a Parameter"):
        nn.Linear(1, 1).register_parameter("w", nx.zeros(1))


# ---- default initialisation ---------------------------------------------------------------


def test_linear_default_init_statistics():
    nx.manual_seed(0)
    fan_in = 256
    layer = nn.Linear(fan_in, 512)
    w = layer.weight.detach().numpy()
    b = layer.bias.detach().numpy()
    bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) reduces to 1/sqrt(fan_in)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert abs(float(w.mean())) < 0.01 * bound  # six standard errors of the mean
    assert float(w.std()) == pytest.approx(bound / math.sqrt(3.0), rel=0.02)
    assert np.abs(b).max() <= bound and float(b.std()) == pytest.approx(bound / math.sqrt(3),
                                                                         rel=0.1)
    assert w.dtype == np.float32 and layer.bias.requires_grad


def test_init_is_reproducible_with_manual_seed():
    nx.manual_seed(7)
    a = nn.Linear(5, 5).weight.detach().numpy().copy()
    nx.manual_seed(7)
    b = nn.Linear(5, 5).weight.detach().numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, nn.Linear(5, 5).weight.detach().numpy())
